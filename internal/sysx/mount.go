package sysx

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// PrivateClone returns an O_PATH descriptor of a private, detached copy of the mount at the directory dirfd (a
// non-recursive bind: mounts below it are not part of the copy, so the directories they cover are visible, as a
// filesystem's own dentries are to overlayfs). With readOnly the copy is read-only, noatime, nosuid, nodev and
// noexec: the kernel itself then keeps the daemon from changing anything, not even an access time (readlink(2),
// unlike read(2), has no O_NOATIME). It needs CAP_SYS_ADMIN and Linux 5.12; callers fall back to dirfd itself.
func PrivateClone(dirfd int, readOnly bool) (int, error) {
	fd, err := unix.OpenTree(dirfd, "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return -1, err
	}
	if readOnly {
		attr := unix.MountAttr{
			Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOATIME | unix.MOUNT_ATTR_NOSUID |
				unix.MOUNT_ATTR_NODEV | unix.MOUNT_ATTR_NOEXEC,
			Attr_clr: unix.MOUNT_ATTR__ATIME,
		}
		if err := unix.MountSetattr(fd, "", unix.AT_EMPTY_PATH, &attr); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	return fd, nil
}

// NewTmpfs creates a tmpfs that is attached nowhere (fsopen/fsmount, Linux 5.2; needs CAP_SYS_ADMIN) and returns
// an O_PATH descriptor of its root. No path reaches it: it exists while a descriptor refers to it, and its
// contents go when the last one is closed. size is tmpfs's size= ("" for the default, half of RAM).
func NewTmpfs(size string) (int, error) {
	fsfd, err := unix.Fsopen("tmpfs", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return -1, fmt.Errorf("fsopen tmpfs: %w", err)
	}
	defer unix.Close(fsfd)
	if size != "" {
		if err := unix.FsconfigSetString(fsfd, "size", size); err != nil {
			return -1, fmt.Errorf("tmpfs size=%s: %w", size, err)
		}
	}
	if err := unix.FsconfigSetString(fsfd, "mode", "0755"); err != nil {
		return -1, fmt.Errorf("tmpfs mode=0755: %w", err)
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return -1, fmt.Errorf("creating a tmpfs: %w", err)
	}
	mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("fsmount tmpfs: %w", err)
	}
	return mfd, nil
}
