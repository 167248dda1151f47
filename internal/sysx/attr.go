package sysx

import (
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// fchmodat2State records whether the kernel has fchmodat2(2) (Linux 6.6): 0 unknown, 1 yes, 2 no.
var fchmodat2State atomic.Int32

// Chmodat sets the mode of name in dirfd (an empty name means dirfd itself) without following a symlink. A
// symlink's mode cannot be changed: EOPNOTSUPP.
func Chmodat(dirfd int, name string, mode uint32) error {
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	} else if err := CheckName(name); err != nil {
		return err
	}
	if fchmodat2State.Load() != 2 {
		p, err := unix.BytePtrFromString(name)
		if err != nil {
			return err
		}
		err = retry(func() error {
			_, _, e := unix.Syscall6(unix.SYS_FCHMODAT2, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(mode),
				uintptr(flags), 0, 0)
			if e != 0 {
				return e
			}
			return nil
		})
		if err != syscall.ENOSYS {
			fchmodat2State.Store(1)
			return err
		}
		fchmodat2State.Store(2)
	}
	return WithFd(dirfd, name, func(fd int) error {
		return retry(func() error { return unix.Fchmod(fd, mode) })
	}, func(path string) error {
		return retry(func() error { return unix.Chmod(path, mode) })
	})
}

// Chownat sets the owner of name in dirfd (an empty name means dirfd itself) without following a symlink. -1
// leaves an id unchanged.
func Chownat(dirfd int, name string, uid, gid int) error {
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	} else if err := CheckName(name); err != nil {
		return err
	}
	return retry(func() error { return unix.Fchownat(dirfd, name, uid, gid, flags) })
}

// Utimensat sets the access and modification times of name in dirfd (an empty name means dirfd itself) without
// following a symlink. ts holds atime then mtime; UTIME_OMIT and UTIME_NOW work as in utimensat(2).
func Utimensat(dirfd int, name string, ts *[2]unix.Timespec) error {
	if name == "" {
		// utimensat(fd, NULL, ...) acts on fd itself, but not on an O_PATH descriptor: reopen the directory.
		return WithFd(dirfd, "", func(fd int) error { return Futimens(fd, ts) },
			func(string) error { return syscall.EOPNOTSUPP })
	}
	if err := CheckName(name); err != nil {
		return err
	}
	return retry(func() error { return unix.UtimesNanoAt(dirfd, name, ts[:], unix.AT_SYMLINK_NOFOLLOW) })
}

// Truncateat sets the size of the regular file name in dirfd (an empty name means the file dirfd itself, an
// O_PATH descriptor of it).
func Truncateat(dirfd int, name string, size int64) error {
	open := func() (int, error) {
		return OpenObject(dirfd, name, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_NOCTTY) // never a FIFO or device
	}
	if name == "" {
		open = func() (int, error) { return Reopen(dirfd, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_NOCTTY) }
	}
	fd, err := open()
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := Fstat(fd, &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return syscall.EINVAL
	}
	return retry(func() error { return unix.Ftruncate(fd, size) })
}

// Futimens sets the access and modification times of the open file fd (not an O_PATH descriptor).
func Futimens(fd int, ts *[2]unix.Timespec) error {
	return retry(func() error {
		_, _, e := unix.Syscall6(unix.SYS_UTIMENSAT, uintptr(fd), 0, uintptr(unsafe.Pointer(&ts[0])), 0, 0, 0)
		if e != 0 {
			return e
		}
		return nil
	})
}
