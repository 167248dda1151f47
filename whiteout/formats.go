package whiteout

import (
	"errors"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
)

// Overlay writes kernel overlayfs's markers: whiteouts are character devices 0/0, opaque directories carry
// trusted.overlay.opaque="y", renamed directories trusted.overlay.redirect. It needs CAP_MKNOD and trusted xattrs
// (root), and an upper filesystem with RENAME_EXCHANGE (tmpfs, ext4, xfs, btrfs).
type Overlay struct{}

// Name implements Format.
func (Overlay) Name() string { return "overlay" }

// mkWhiteout makes an overlay whiteout called name in dirfd.
func mkWhiteout(dirfd int, name string) error {
	return unix.Mknodat(dirfd, name, unix.S_IFCHR, 0)
}

// isWhiteoutAt reports whether name in dirfd is an overlay whiteout; exists whether it is anything at all.
func isWhiteoutAt(dirfd int, name string) (whiteout, exists bool, err error) {
	var st unix.Stat_t
	err = sysx.Fstatat(dirfd, name, &st)
	if errors.Is(err, syscall.ENOENT) {
		return false, false, nil
	}
	if err != nil {
		return false, false, err
	}
	return IsOverlayWhiteout(&st), true, nil
}

// Hide implements Format. An upper object is swapped with a fresh whiteout in one step (RENAME_EXCHANGE), so the
// lower object never shows in between.
func (Overlay) Hide(d Dir, name, tmp string) (bool, error) {
	wo, exists, err := isWhiteoutAt(d.Fd, name)
	if err != nil || wo {
		return false, err
	}
	if !exists {
		return false, mkWhiteout(d.Fd, name)
	}
	if err := mkWhiteout(d.Fd, tmp); err != nil {
		return false, err
	}
	if err := unix.Renameat2(d.Fd, tmp, d.Fd, name, unix.RENAME_EXCHANGE); err != nil {
		unix.Unlinkat(d.Fd, tmp, 0)
		if !errors.Is(err, syscall.EINVAL) {
			return false, err
		}
		// No RENAME_EXCHANGE on this filesystem: move the object away, then white the name out.
		if err := renameNoReplace(d, name, tmp); err != nil {
			return false, err
		}
		if err := mkWhiteout(d.Fd, name); err != nil {
			renameNoReplace(d, tmp, name)
			return false, err
		}
	}
	return true, nil
}

// Publish implements Format. A directory replaces a whiteout by exchange, since rename(2) cannot put a
// directory over a non-directory.
func (Overlay) Publish(d Dir, tmp, name string, isDir bool) error {
	wo, exists, err := isWhiteoutAt(d.Fd, name)
	if err != nil {
		return err
	}
	switch {
	case !exists:
		return renameNoReplace(d, tmp, name)
	case !wo:
		return syscall.EEXIST
	case !isDir:
		return unix.Renameat2(d.Fd, tmp, d.Fd, name, 0)
	}
	if err := unix.Renameat2(d.Fd, tmp, d.Fd, name, unix.RENAME_EXCHANGE); err != nil {
		return err
	}
	return unix.Unlinkat(d.Fd, tmp, 0)
}

// MarkOpaque implements Format.
func (Overlay) MarkOpaque(src Dir, cur string, dst Dir, name string) error {
	return sysx.Setxattrat(src.Fd, cur, OverlayOpaqueXattr, []byte("y"), 0)
}

// ClearDir implements Format: it removes the whiteouts in sub.
func (Overlay) ClearDir(d Dir, name string, sub int) error {
	return removeEntries(sub, func(n string, typ uint8) bool {
		if typ != unix.DT_CHR && typ != unix.DT_UNKNOWN {
			return false
		}
		wo, _, _ := isWhiteoutAt(sub, n)
		return wo
	})
}

// Redirects implements Format.
func (Overlay) Redirects() bool { return true }

// Redirect implements Format.
func (Overlay) Redirect(dirfd int, path string) error {
	return sysx.Setxattrat(dirfd, "", OverlayRedirectXattr, []byte(path), 0)
}

// Metacopies implements Format.
func (Overlay) Metacopies() bool { return true }

// MarkerTree implements Format.
func (Overlay) MarkerTree() string { return "" }

// Declare implements Format: overlay's markers need nothing first.
func (Overlay) Declare(int) error { return nil }

// Aufs writes aufs's markers: ".wh.NAME" files beside the names they hide and ".wh..wh..opq" in opaque
// directories. They need no privilege, so this is the format of unprivileged daemons. A name longer than 251 bytes
// cannot be whited out (ENAMETOOLONG), as in aufs.
type Aufs struct{}

// Name implements Format.
func (Aufs) Name() string { return "aufs" }

// aufsBase is the marker aufs keeps at the root of a writable branch; it declares the format.
const aufsBase = AufsPrefix + AufsPrefix + "aufs"

func createMarker(dirfd int, name string) error {
	fd, err := sysx.Openat(dirfd, name, unix.O_CREAT|unix.O_WRONLY|unix.O_EXCL, 0444)
	if errors.Is(err, syscall.EEXIST) {
		return nil
	}
	if err != nil {
		return err
	}
	return unix.Close(fd)
}

// Hide implements Format.
func (Aufs) Hide(d Dir, name, tmp string) (bool, error) {
	if len(name) > 255-len(AufsPrefix) {
		return false, syscall.ENAMETOOLONG
	}
	if err := createMarker(d.Root, aufsBase); err != nil {
		return false, err
	}
	return false, createMarker(d.Fd, AufsPrefix+name)
}

// Publish implements Format.
func (Aufs) Publish(d Dir, tmp, name string, isDir bool) error {
	if tmp != name {
		if err := renameNoReplace(d, tmp, name); err != nil {
			return err
		}
	}
	if len(name) > 255-len(AufsPrefix) {
		return nil
	}
	if err := unix.Unlinkat(d.Fd, AufsPrefix+name, 0); err != nil && !errors.Is(err, syscall.ENOENT) {
		return err
	}
	return nil
}

// MarkOpaque implements Format.
func (Aufs) MarkOpaque(src Dir, cur string, dst Dir, name string) error {
	sub, err := sysx.OpenDir(src.Fd, cur)
	if err != nil {
		return err
	}
	defer unix.Close(sub)
	return createMarker(sub, AufsOpaque)
}

// ClearDir implements Format: it removes every ".wh." entry of sub.
func (Aufs) ClearDir(d Dir, name string, sub int) error {
	return removeEntries(sub, func(n string, _ uint8) bool { return IsMarkerName(n) })
}

// Redirects implements Format.
func (Aufs) Redirects() bool { return false }

// Redirect implements Format.
func (Aufs) Redirect(int, string) error { return syscall.EXDEV }

// Metacopies implements Format.
func (Aufs) Metacopies() bool { return false }

// MarkerTree implements Format.
func (Aufs) MarkerTree() string { return "" }

// Declare implements Format: aufs's base marker.
func (Aufs) Declare(root int) error { return createMarker(root, aufsBase) }

// Unionfs writes unionfs-fuse's markers: a whiteout of PATH is the file META/PATH_HIDDEN~, where META is the meta
// directory at the root of the upper layer. A directory that exists in the upper layer and has such a marker
// hides the lower directories of its name: that is unionfs-fuse's opaque directory.
type Unionfs struct {
	MetaDir string // UnionfsMetaDir (unionfs-fuse 2.0 and later) or UnionfsLegacyMetaDir (1.0)
}

// Name implements Format.
func (Unionfs) Name() string { return "unionfs-fuse" }

// markerDir opens (creating it and its parents) the meta directory for the upper directory d.
func (u Unionfs) markerDir(d Dir) (int, error) {
	fd, err := mkdirOpen(d.Root, u.MetaDir, 0700)
	if err != nil {
		return -1, err
	}
	if d.Path == "" {
		return fd, nil
	}
	for _, comp := range strings.Split(d.Path, "/") {
		next, err := mkdirOpen(fd, comp, 0700)
		unix.Close(fd)
		if err != nil {
			return -1, err
		}
		fd = next
	}
	return fd, nil
}

// mkdirOpen opens the directory name in dirfd, creating it first if needed.
func mkdirOpen(dirfd int, name string, mode uint32) (int, error) {
	if err := unix.Mkdirat(dirfd, name, mode); err != nil && !errors.Is(err, syscall.EEXIST) {
		return -1, err
	}
	return sysx.OpenDir(dirfd, name)
}

// hiddenName returns the marker name for name, or ENAMETOOLONG.
func hiddenName(name string) (string, error) {
	if len(name)+len(UnionfsHiddenSuffix) > 255 {
		return "", syscall.ENAMETOOLONG
	}
	return name + UnionfsHiddenSuffix, nil
}

// Hide implements Format.
func (u Unionfs) Hide(d Dir, name, tmp string) (bool, error) {
	marker, err := hiddenName(name)
	if err != nil {
		return false, err
	}
	md, err := u.markerDir(d)
	if err != nil {
		return false, err
	}
	defer unix.Close(md)
	fd, err := sysx.Openat(md, marker, unix.O_CREAT|unix.O_WRONLY, 0600)
	if err != nil {
		return false, err
	}
	return false, unix.Close(fd)
}

// Publish implements Format. A directory keeps its marker: it is what makes the directory opaque.
func (u Unionfs) Publish(d Dir, tmp, name string, isDir bool) error {
	if tmp != name {
		if err := renameNoReplace(d, tmp, name); err != nil {
			return err
		}
	}
	if isDir {
		return nil
	}
	marker, err := hiddenName(name)
	if err != nil {
		return nil
	}
	md, err := u.markerDir(d)
	if err != nil {
		return err
	}
	defer unix.Close(md)
	if err := unix.Unlinkat(md, marker, 0); err != nil && !errors.Is(err, syscall.ENOENT) {
		return err
	}
	return nil
}

// MarkOpaque implements Format.
func (u Unionfs) MarkOpaque(src Dir, cur string, dst Dir, name string) error {
	_, err := u.Hide(dst, name, "")
	return err
}

// ClearDir implements Format: it removes the markers of the directory's children (its subtree of the meta
// directory).
func (u Unionfs) ClearDir(d Dir, name string, sub int) error {
	md, err := u.markerDir(d)
	if err != nil {
		return err
	}
	defer unix.Close(md)
	// Only a directory holds the markers of a directory's children. Anything else there is the whiteout of another
	// name: the markers of a directory "x_HIDDEN~" and the whiteout of "x" share the path META/x_HIDDEN~, and
	// removing that whiteout would bring a deleted lower file back.
	var st unix.Stat_t
	if err := sysx.Fstatat(md, name, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err != nil && !errors.Is(err, syscall.ENOENT) {
			return err
		}
		return nil
	}
	return removeTree(md, name)
}

// Redirects implements Format.
func (Unionfs) Redirects() bool { return false }

// Redirect implements Format.
func (Unionfs) Redirect(int, string) error { return syscall.EXDEV }

// Metacopies implements Format.
func (Unionfs) Metacopies() bool { return false }

// MarkerTree implements Format.
func (u Unionfs) MarkerTree() string { return u.MetaDir }

// Declare implements Format: the meta directory.
func (u Unionfs) Declare(root int) error {
	if err := unix.Mkdirat(root, u.MetaDir, 0700); err != nil && !errors.Is(err, syscall.EEXIST) {
		return err
	}
	return nil
}

// removeEntries removes the entries of the directory dirfd for which match is true.
func removeEntries(dirfd int, match func(name string, typ uint8) bool) error {
	rfd, err := sysx.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	var names []string
	err = sysx.Getdents(rfd, func(n string, _ uint64, typ uint8) {
		if n != "." && n != ".." && match(n, typ) {
			names = append(names, n)
		}
	})
	unix.Close(rfd)
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := removeTree(dirfd, n); err != nil {
			return err
		}
	}
	return nil
}
