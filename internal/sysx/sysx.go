package sysx

import (
	"errors"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// CheckName returns EINVAL unless name is a single, real path component.
func CheckName(name string) error {
	if name == "" || name == "." || name == ".." || strings.IndexByte(name, '/') >= 0 || strings.IndexByte(name, 0) >= 0 {
		return syscall.EINVAL
	}
	return nil
}

// SplitNames splits a slash-separated path into its names, dropping empty components ("/a//b/" gives a, b); ok is
// false if a component is not a plain name (".", "..").
func SplitNames(p string) (names []string, ok bool) {
	for _, c := range strings.Split(p, "/") {
		if c == "" {
			continue
		}
		if CheckName(c) != nil {
			return nil, false
		}
		names = append(names, c)
	}
	return names, true
}

// retry runs fn until it returns something other than EINTR.
func retry(fn func() error) error {
	for {
		err := fn()
		if err != syscall.EINTR {
			return err
		}
	}
}

// Fstatat stats name in dirfd without following a final symlink or triggering an automount. An empty name stats
// dirfd itself.
func Fstatat(dirfd int, name string, st *unix.Stat_t) error {
	flags := unix.AT_SYMLINK_NOFOLLOW | unix.AT_NO_AUTOMOUNT
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	} else if err := CheckName(name); err != nil {
		return err
	}
	return retry(func() error { return unix.Fstatat(dirfd, name, st, flags) })
}

// Fstat stats an open file descriptor, O_PATH descriptors included.
func Fstat(fd int, st *unix.Stat_t) error {
	return retry(func() error { return unix.Fstat(fd, st) })
}

// openat2State records whether the kernel has openat2(2) (Linux 5.6): 0 unknown, 1 yes, 2 no.
var openat2State atomic.Int32

// resolveFlags confine a resolution to the directory it starts in: no symlinks, no /proc magic links, no mount
// crossings.
const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV

// openat2 opens name in dirfd with resolve restrictions when the kernel has openat2 and reports ok=false when it
// does not, so the caller falls back to openat(2).
func openat2(dirfd int, name string, flags int, mode uint32, resolve uint64) (fd int, ok bool, err error) {
	if openat2State.Load() == 2 {
		return -1, false, nil
	}
	how := unix.OpenHow{Flags: uint64(flags), Mode: uint64(mode), Resolve: resolve}
	err = retry(func() error {
		var e error
		fd, e = unix.Openat2(dirfd, name, &how)
		return e
	})
	if err == syscall.ENOSYS || err == syscall.EPERM && openat2State.Load() == 0 {
		// EPERM: seccomp filters of old container runtimes refuse unknown syscalls with EPERM.
		if probeOpenat2() {
			return fd, true, err
		}
		openat2State.Store(2)
		return -1, false, nil
	}
	openat2State.Store(1)
	return fd, true, err
}

// probeOpenat2 tells whether openat2 works at all, by opening "/" with it.
func probeOpenat2() bool {
	how := unix.OpenHow{Flags: unix.O_PATH | unix.O_CLOEXEC}
	fd, err := unix.Openat2(unix.AT_FDCWD, "/", &how)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// OpenDir opens the directory name in dirfd as an O_PATH descriptor. It fails with ENOTDIR if name is not a
// directory (a symlink to one included) and with EXDEV if name is a mount point: the mounted filesystem is not part
// of the layer. An empty name reopens dirfd itself.
func OpenDir(dirfd int, name string) (int, error) {
	if name == "" {
		name = "."
	} else if err := CheckName(name); err != nil {
		return -1, err
	}
	flags := unix.O_PATH | unix.O_DIRECTORY | unix.O_NOFOLLOW | unix.O_CLOEXEC
	if fd, ok, err := openat2(dirfd, name, flags, 0, resolveFlags); ok {
		return fd, err
	}
	var fd int
	err := retry(func() error {
		var e error
		fd, e = unix.Openat(dirfd, name, flags, 0)
		return e
	})
	if err != nil {
		return -1, err
	}
	// Without openat2 a mount crossing shows only as a change of device.
	if name != "." {
		var parent, child unix.Stat_t
		if err := Fstat(dirfd, &parent); err == nil && Fstat(fd, &child) == nil && parent.Dev != child.Dev {
			unix.Close(fd)
			return -1, syscall.EXDEV
		}
	}
	return fd, nil
}

// Openat opens name in dirfd with flags (O_CLOEXEC and O_NOFOLLOW are always added). A symlink as name fails with
// ELOOP. An empty name or "." reopens dirfd itself (for a directory, typically with O_RDONLY|O_DIRECTORY).
func Openat(dirfd int, name string, flags int, mode uint32) (int, error) {
	if name == "" {
		name = "."
	} else if err := CheckName(name); err != nil && name != "." {
		return -1, err
	}
	flags |= unix.O_CLOEXEC | unix.O_NOFOLLOW
	var fd int
	err := retry(func() error {
		var e error
		fd, e = unix.Openat(dirfd, name, flags, mode)
		return e
	})
	if err == syscall.EPERM && flags&unix.O_NOATIME != 0 {
		// O_NOATIME is refused unless the caller owns the file or has CAP_FOWNER.
		return Openat(dirfd, name, flags&^unix.O_NOATIME, mode)
	}
	return fd, err
}

// Readlinkat reads the target of the symlink name in dirfd. An empty name reads the symlink dirfd itself, an
// O_PATH|O_NOFOLLOW descriptor of it: how the union reaches a symlink whose name went away while another hard
// link of it stayed (see unionfs's keepByDescriptor).
func Readlinkat(dirfd int, name string) ([]byte, error) {
	if name != "" {
		if err := CheckName(name); err != nil {
			return nil, err
		}
	}
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		var n int
		err := retry(func() error {
			var e error
			n, e = unix.Readlinkat(dirfd, name, buf)
			return e
		})
		if err != nil {
			return nil, err
		}
		if n < size {
			return buf[:n], nil
		}
	}
}

// Getdents reads all entries of the directory open for reading at fd, in the order the filesystem returns them,
// and calls fn for each with its name, inode number and DT_* type.
func Getdents(fd int, fn func(name string, ino uint64, typ uint8)) error {
	buf := make([]byte, 64<<10)
	for {
		var n int
		err := retry(func() error {
			var e error
			n, e = unix.Getdents(fd, buf)
			return e
		})
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		for off := 0; off < n; {
			// struct linux_dirent64 { u64 d_ino; s64 d_off; u16 d_reclen; u8 d_type; char d_name[]; }
			rec := buf[off:n]
			if len(rec) < 19 {
				return syscall.EIO
			}
			ino := leUint64(rec[0:8])
			reclen := int(rec[16]) | int(rec[17])<<8
			typ := rec[18]
			if reclen < 19 || reclen > len(rec) {
				return syscall.EIO
			}
			nameBytes := rec[19:reclen]
			if i := indexByte(nameBytes, 0); i >= 0 {
				nameBytes = nameBytes[:i]
			}
			fn(string(nameBytes), ino, typ)
			off += reclen
		}
	}
}

func leUint64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// IsNotExist reports whether err means a name is absent (ENOENT) or a path component is not a directory.
func IsNotExist(err error) bool {
	return errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOTDIR)
}

// procFdPrefix is how the daemon names /proc/self/fd in paths: absolute until AnchorProc makes /proc the working
// directory, then relative to it. It is set once, before the union serves requests.
var procFdPrefix = "/proc/self/fd/"

// AnchorProc makes /proc the working directory of the process, and FdPath name descriptors relative to it. A root
// filesystem daemon calls it once mounted: after switch_root its root directory is the deleted initramfs, where
// "/proc" names nothing, but its working directory still is the /proc it opened (now mounted in the new root).
func AnchorProc() error {
	if err := unix.Chdir("/proc"); err != nil {
		return err
	}
	procFdPrefix = "self/fd/"
	return nil
}

// FdPath returns a path that opens the file behind descriptor fd (its /proc/self/fd magic link).
func FdPath(fd int) string {
	return procFdPrefix + strconv.Itoa(fd)
}

// Reopen opens the object behind descriptor fd (an O_PATH descriptor, say) anew with flags, through its /proc
// magic link, which is followed whatever O_NOFOLLOW says. O_NOATIME is dropped where the kernel refuses it (the
// caller neither owns the file nor has CAP_FOWNER). Without /proc the error is ENOENT.
func Reopen(fd int, flags int) (int, error) {
	flags = (flags | unix.O_CLOEXEC) &^ unix.O_NOFOLLOW
	var nfd int
	err := retry(func() error {
		var e error
		nfd, e = unix.Open(FdPath(fd), flags, 0)
		return e
	})
	if err == syscall.EPERM && flags&unix.O_NOATIME != 0 {
		err = retry(func() error {
			var e error
			nfd, e = unix.Open(FdPath(fd), flags&^unix.O_NOATIME, 0)
			return e
		})
	}
	if err != nil {
		return -1, err
	}
	return nfd, nil
}

// LinkObject gives the object behind descriptor fd (an O_PATH descriptor, an O_TMPFILE file) the name name in
// dirfd. linkat with AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it (a daemon that is not root) the
// descriptor's /proc magic link is linked with AT_SYMLINK_FOLLOW, which needs no privilege.
func LinkObject(fd int, dirfd int, name string) error {
	err := retry(func() error { return unix.Linkat(fd, "", dirfd, name, unix.AT_EMPTY_PATH) })
	if err == syscall.ENOENT || err == syscall.EPERM {
		err2 := retry(func() error { return unix.Linkat(unix.AT_FDCWD, FdPath(fd), dirfd, name, unix.AT_SYMLINK_FOLLOW) })
		if err2 != syscall.ENOENT { // ENOENT: no /proc either; the first answer says more
			return err2
		}
	}
	return err
}

// OpenObject opens name in dirfd with flags like Openat, but only if it is a regular file or a directory: the name
// is first reached with O_PATH and checked, then reopened through that descriptor, so a FIFO or device that
// appears under the name (a racing rename leaves an overlay whiteout, a 0/0 device, under the old name; a user
// may put a FIFO there) is never opened. Opening one as root could block the daemon for good (a FIFO without a
// peer) or act on a device. Anything else fails with ESTALE: the name no longer holds the object the caller
// meant. A symlink fails with ELOOP, as with Openat.
func OpenObject(dirfd int, name string, flags int) (int, error) {
	pfd, err := Openat(dirfd, name, unix.O_PATH, 0)
	if err != nil {
		return -1, err
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := Fstat(pfd, &st); err != nil {
		return -1, err
	}
	if t := st.Mode & unix.S_IFMT; t != unix.S_IFREG && t != unix.S_IFDIR {
		return -1, syscall.ESTALE
	}
	flags &^= unix.O_CREAT | unix.O_EXCL | unix.O_TMPFILE
	fd, err := Reopen(pfd, flags)
	if err == syscall.ENOENT {
		// No /proc: open the name again, without blocking, and accept only the object checked above.
		fd, err = Openat(dirfd, name, flags|unix.O_NONBLOCK, 0)
		if err != nil {
			return -1, err
		}
		var st2 unix.Stat_t
		if err := Fstat(fd, &st2); err != nil || st2.Dev != st.Dev || st2.Ino != st.Ino {
			unix.Close(fd)
			return -1, syscall.ESTALE
		}
		if flags&unix.O_NONBLOCK == 0 {
			fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
			if err == nil {
				_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, fl&^unix.O_NONBLOCK)
			}
			if err != nil {
				unix.Close(fd)
				return -1, err
			}
		}
		return fd, nil
	}
	return fd, err
}
