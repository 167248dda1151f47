package sysx

import (
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The *xattrat system calls (Linux 6.13) address a file by directory fd and name, with AT_SYMLINK_NOFOLLOW. On
// older kernels the same is done through a descriptor of the file itself: a regular file or directory is opened
// for reading, anything else (symlinks, devices, FIFOs, sockets) is reached through /proc/self/fd, which needs
// /proc; without it those get EOPNOTSUPP, as on a filesystem without xattrs.

// xattratState records whether the kernel has the *xattrat calls: 0 unknown, 1 yes, 2 no.
var xattratState atomic.Int32

// xattrArgs is struct xattr_args of <linux/xattr.h>.
type xattrArgs struct {
	value uint64
	size  uint32
	flags uint32
}

func atFlags(name string) (string, int, error) {
	if name == "" {
		return "", unix.AT_SYMLINK_NOFOLLOW | unix.AT_EMPTY_PATH, nil
	}
	if err := CheckName(name); err != nil {
		return "", 0, err
	}
	return name, unix.AT_SYMLINK_NOFOLLOW, nil
}

func bytePtr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

// useXattrat runs call (a raw *xattrat syscall) unless the kernel is known not to have it. It reports ok=false when
// the caller must fall back.
//
// The calls refuse O_PATH descriptors with AT_EMPTY_PATH (EBADF), so an empty name always falls back.
func useXattrat(name string, call func() (uintptr, syscall.Errno)) (n int, ok bool, err error) {
	if name == "" || xattratState.Load() == 2 {
		return 0, false, nil
	}
	for {
		r, errno := call()
		switch errno {
		case 0:
			xattratState.Store(1)
			return int(r), true, nil
		case syscall.EINTR:
			continue
		case syscall.ENOSYS:
			xattratState.Store(2)
			return 0, false, nil
		default:
			return 0, true, errno
		}
	}
}

// WithFd calls fn with a descriptor of name in dirfd itself (a symlink is not followed; an empty name means the
// object dirfd itself, a directory or, reached by an O_PATH descriptor, any other object), on which fchmod,
// fsetxattr and the like act. Only regular files and directories are opened for this; for other types (whose
// open could have side effects, or is impossible for symlinks) pathFn gets a /proc/self/fd path of an O_PATH
// descriptor instead, and without /proc the call fails with EOPNOTSUPP.
func WithFd(dirfd int, name string, fn func(fd int) error, pathFn func(path string) error) error {
	if name == "" {
		return withSelf(dirfd, fn, pathFn)
	}
	pfd, err := Openat(dirfd, name, unix.O_PATH, 0)
	if err != nil {
		return err
	}
	defer unix.Close(pfd)
	var st unix.Stat_t
	if err := Fstat(pfd, &st); err != nil {
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG, unix.S_IFDIR:
		fd, err := Openat(dirfd, name, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_NOATIME, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		var st2 unix.Stat_t
		if err := Fstat(fd, &st2); err != nil {
			return err
		}
		if st2.Dev != st.Dev || st2.Ino != st.Ino {
			// Replaced between the two opens: act on neither.
			return syscall.ESTALE
		}
		return fn(fd)
	}
	path := FdPath(pfd)
	var probe unix.Stat_t
	if unix.Stat(path, &probe) != nil || probe.Ino != st.Ino || probe.Dev != st.Dev {
		return syscall.EOPNOTSUPP
	}
	return pathFn(path)
}

// withSelf is WithFd for the object fd itself.
func withSelf(fd int, fn func(fd int) error, pathFn func(path string) error) error {
	var st unix.Stat_t
	if err := Fstat(fd, &st); err != nil {
		return err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		dfd, err := Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME, 0)
		if err != nil {
			return err
		}
		defer unix.Close(dfd)
		return fn(dfd)
	case unix.S_IFREG:
		rfd, err := Reopen(fd, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_NOATIME)
		if err != nil {
			return err
		}
		defer unix.Close(rfd)
		return fn(rfd)
	}
	return pathFn(FdPath(fd))
}

// Getxattrat reads attribute attr of name in dirfd (an empty name means dirfd itself) into dest and returns its
// size. With an empty dest it returns the size only. A symlink is not followed.
func Getxattrat(dirfd int, name, attr string, dest []byte) (int, error) {
	name, flags, err := atFlags(name)
	if err != nil {
		return 0, err
	}
	pname, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	pattr, err := unix.BytePtrFromString(attr)
	if err != nil {
		return 0, err
	}
	args := xattrArgs{value: uint64(uintptr(bytePtr(dest))), size: uint32(len(dest))}
	n, ok, err := useXattrat(name, func() (uintptr, syscall.Errno) {
		r, _, e := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(pname)), uintptr(flags),
			uintptr(unsafe.Pointer(pattr)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
		return r, e
	})
	if ok {
		return n, err
	}
	err = WithFd(dirfd, name, func(fd int) error {
		return retry(func() error {
			var e error
			n, e = unix.Fgetxattr(fd, attr, dest)
			return e
		})
	}, func(path string) error {
		return retry(func() error {
			var e error
			n, e = unix.Getxattr(path, attr, dest)
			return e
		})
	})
	return n, err
}

// Listxattrat lists the attribute names of name in dirfd (an empty name means dirfd itself) into dest as
// NUL-terminated strings and returns the size used. With an empty dest it returns the size only.
func Listxattrat(dirfd int, name string, dest []byte) (int, error) {
	name, flags, err := atFlags(name)
	if err != nil {
		return 0, err
	}
	pname, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	n, ok, err := useXattrat(name, func() (uintptr, syscall.Errno) {
		r, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(pname)), uintptr(flags),
			uintptr(bytePtr(dest)), uintptr(len(dest)), 0)
		return r, e
	})
	if ok {
		return n, err
	}
	err = WithFd(dirfd, name, func(fd int) error {
		return retry(func() error {
			var e error
			n, e = unix.Flistxattr(fd, dest)
			return e
		})
	}, func(path string) error {
		return retry(func() error {
			var e error
			n, e = unix.Listxattr(path, dest)
			return e
		})
	})
	return n, err
}

// Setxattrat sets attribute attr of name in dirfd (an empty name means dirfd itself). flags are setxattr(2)'s
// XATTR_CREATE and XATTR_REPLACE.
func Setxattrat(dirfd int, name, attr string, data []byte, flags int) error {
	name, at, err := atFlags(name)
	if err != nil {
		return err
	}
	pname, err := unix.BytePtrFromString(name)
	if err != nil {
		return err
	}
	pattr, err := unix.BytePtrFromString(attr)
	if err != nil {
		return err
	}
	args := xattrArgs{value: uint64(uintptr(bytePtr(data))), size: uint32(len(data)), flags: uint32(flags)}
	_, ok, err := useXattrat(name, func() (uintptr, syscall.Errno) {
		r, _, e := unix.Syscall6(unix.SYS_SETXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(pname)), uintptr(at),
			uintptr(unsafe.Pointer(pattr)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
		return r, e
	})
	if ok {
		return err
	}
	return WithFd(dirfd, name, func(fd int) error {
		return retry(func() error { return unix.Fsetxattr(fd, attr, data, flags) })
	}, func(path string) error {
		return retry(func() error { return unix.Setxattr(path, attr, data, flags) })
	})
}

// Removexattrat removes attribute attr of name in dirfd (an empty name means dirfd itself).
func Removexattrat(dirfd int, name, attr string) error {
	name, at, err := atFlags(name)
	if err != nil {
		return err
	}
	pname, err := unix.BytePtrFromString(name)
	if err != nil {
		return err
	}
	pattr, err := unix.BytePtrFromString(attr)
	if err != nil {
		return err
	}
	_, ok, err := useXattrat(name, func() (uintptr, syscall.Errno) {
		r, _, e := unix.Syscall6(unix.SYS_REMOVEXATTRAT, uintptr(dirfd), uintptr(unsafe.Pointer(pname)), uintptr(at),
			uintptr(unsafe.Pointer(pattr)), 0, 0)
		return r, e
	})
	if ok {
		return err
	}
	return WithFd(dirfd, name, func(fd int) error {
		return retry(func() error { return unix.Fremovexattr(fd, attr) })
	}, func(path string) error {
		return retry(func() error { return unix.Removexattr(path, attr) })
	})
}

// GetxattrAll reads attribute attr of name in dirfd whatever its size. A missing attribute gives ENODATA.
func GetxattrAll(dirfd int, name, attr string) ([]byte, error) {
	buf := make([]byte, 256)
	for {
		n, err := Getxattrat(dirfd, name, attr, buf)
		if err == syscall.ERANGE {
			size, err := Getxattrat(dirfd, name, attr, nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, size+64)
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

// ListxattrAll lists the attribute names of name in dirfd whatever their total size.
func ListxattrAll(dirfd int, name string) ([]string, error) {
	buf := make([]byte, 1024)
	for {
		n, err := Listxattrat(dirfd, name, buf)
		if err == syscall.ERANGE {
			size, err := Listxattrat(dirfd, name, nil)
			if err != nil {
				return nil, err
			}
			buf = make([]byte, size+256)
			continue
		}
		if err != nil {
			return nil, err
		}
		return SplitXattrNames(buf[:n]), nil
	}
}

// SplitXattrNames splits a listxattr(2) buffer into names.
func SplitXattrNames(buf []byte) []string {
	var names []string
	start := 0
	for i, c := range buf {
		if c == 0 {
			if i > start {
				names = append(names, string(buf[start:i]))
			}
			start = i + 1
		}
	}
	return names
}
