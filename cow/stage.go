package cow

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Staged is an object under construction in an upper directory: an unnamed file (O_TMPFILE) or an object under
// a temporary marker name. It is invisible in the merged view until published.
type Staged struct {
	Dirfd int    // the upper directory it is built in
	Tmp   string // its temporary name; "" while it is an unnamed file
	Fd    int    // a descriptor of a regular file, -1 for other types
	Mode  uint32 // its type and mode
}

// NewFile stages a regular file in dirfd with permission bits perm, open for reading and writing. It is unnamed
// where the upper filesystem supports O_TMPFILE.
func NewFile(dirfd int, perm uint32) (*Staged, error) {
	s := &Staged{Dirfd: dirfd, Fd: -1, Mode: unix.S_IFREG | perm}
	fd, err := sysx.Openat(dirfd, ".", unix.O_TMPFILE|unix.O_RDWR, perm)
	if err == nil {
		s.Fd = fd
		return s, nil
	}
	if !errors.Is(err, syscall.EOPNOTSUPP) && !errors.Is(err, syscall.EISDIR) && !errors.Is(err, syscall.EINVAL) {
		return nil, err
	}
	s.Tmp = whiteout.TempName()
	fd, err = sysx.Openat(dirfd, s.Tmp, unix.O_CREAT|unix.O_EXCL|unix.O_RDWR, perm)
	if err != nil {
		return nil, err
	}
	s.Fd = fd
	return s, nil
}

// NewDir stages a directory in dirfd with permission bits perm.
func NewDir(dirfd int, perm uint32) (*Staged, error) {
	s := &Staged{Dirfd: dirfd, Fd: -1, Tmp: whiteout.TempName(), Mode: unix.S_IFDIR | perm}
	if err := unix.Mkdirat(dirfd, s.Tmp, perm); err != nil {
		return nil, err
	}
	return s, nil
}

// NewSymlink stages a symlink to target in dirfd.
func NewSymlink(dirfd int, target string) (*Staged, error) {
	s := &Staged{Dirfd: dirfd, Fd: -1, Tmp: whiteout.TempName(), Mode: unix.S_IFLNK | 0777}
	if err := unix.Symlinkat(target, dirfd, s.Tmp); err != nil {
		return nil, err
	}
	return s, nil
}

// NewNode stages a device, FIFO or socket of the type in mode with device number rdev in dirfd, with the
// permission bits of mode.
func NewNode(dirfd int, mode uint32, rdev uint64) (*Staged, error) {
	s := &Staged{Dirfd: dirfd, Fd: -1, Tmp: whiteout.TempName(), Mode: mode}
	if err := unix.Mknodat(dirfd, s.Tmp, mode, int(rdev)); err != nil {
		return nil, err
	}
	return s, nil
}

// isFile reports whether the staged object is a regular file reached through its descriptor.
func (s *Staged) isFile() bool { return s.Fd >= 0 }

// Chown sets the owner; -1 leaves an id unchanged.
func (s *Staged) Chown(uid, gid int) error {
	if s.isFile() {
		return unix.Fchown(s.Fd, uid, gid)
	}
	return sysx.Chownat(s.Dirfd, s.Tmp, uid, gid)
}

// Chmod sets the permission bits (setuid, setgid and sticky included). Symlinks have none: it does nothing.
func (s *Staged) Chmod(perm uint32) error {
	switch {
	case s.isFile():
		return unix.Fchmod(s.Fd, perm)
	case s.Mode&unix.S_IFMT == unix.S_IFLNK:
		return nil
	}
	return sysx.Chmodat(s.Dirfd, s.Tmp, perm)
}

// Utimes sets atime and mtime.
func (s *Staged) Utimes(atime, mtime unix.Timespec) error {
	ts := [2]unix.Timespec{atime, mtime}
	if s.isFile() {
		return sysx.Futimens(s.Fd, &ts)
	}
	return sysx.Utimensat(s.Dirfd, s.Tmp, &ts)
}

// Setxattr sets an xattr.
func (s *Staged) Setxattr(name string, value []byte) error {
	if s.isFile() {
		return unix.Fsetxattr(s.Fd, name, value, 0)
	}
	return sysx.Setxattrat(s.Dirfd, s.Tmp, name, value, 0)
}

// Removexattr removes an xattr; a missing one is not an error.
func (s *Staged) Removexattr(name string) error {
	var err error
	if s.isFile() {
		err = unix.Fremovexattr(s.Fd, name)
	} else {
		err = sysx.Removexattrat(s.Dirfd, s.Tmp, name)
	}
	if errors.Is(err, syscall.ENODATA) {
		return nil
	}
	return err
}

// Listxattr lists the staged object's xattr names.
func (s *Staged) Listxattr() ([]string, error) {
	if s.isFile() {
		buf := make([]byte, 64<<10)
		n, err := unix.Flistxattr(s.Fd, buf)
		if err != nil {
			return nil, err
		}
		return sysx.SplitXattrNames(buf[:n]), nil
	}
	return sysx.ListxattrAll(s.Dirfd, s.Tmp)
}

// Stat returns the staged object's attributes.
func (s *Staged) Stat() (unix.Stat_t, error) {
	var st unix.Stat_t
	if s.isFile() {
		return st, sysx.Fstat(s.Fd, &st)
	}
	return st, sysx.Fstatat(s.Dirfd, s.Tmp, &st)
}

// Named gives an unnamed file a temporary name, for publishing with a rename that replaces something (a
// whiteout); linkat(2) cannot replace.
func (s *Staged) Named() error {
	if s.Tmp != "" {
		return nil
	}
	tmp := whiteout.TempName()
	if err := linkFd(s.Fd, s.Dirfd, tmp); err != nil {
		return err
	}
	s.Tmp = tmp
	return nil
}

// Publish makes the staged object visible as name in its directory, failing with EEXIST if name exists. The
// descriptor of a regular file stays open (see Close).
func (s *Staged) Publish(name string) error {
	if s.Tmp == "" {
		if err := linkFd(s.Fd, s.Dirfd, name); err != nil {
			return err
		}
		s.Tmp = "" // nothing to clean up any more
		return nil
	}
	if err := unix.Renameat2(s.Dirfd, s.Tmp, s.Dirfd, name, unix.RENAME_NOREPLACE); err != nil {
		return err
	}
	s.Tmp = ""
	return nil
}

// Published records that the object was moved into place by someone else (a whiteout format's Publish).
func (s *Staged) Published() { s.Tmp = "" }

// Discard removes an object that was not published and closes its descriptor.
func (s *Staged) Discard() {
	if s.Tmp != "" {
		whiteout.RemoveTree(s.Dirfd, s.Tmp)
		s.Tmp = ""
	}
	s.Close()
}

// Close closes the descriptor of a staged regular file, if it is still open.
func (s *Staged) Close() {
	if s.Fd >= 0 {
		unix.Close(s.Fd)
		s.Fd = -1
	}
}

// TakeFd hands the descriptor of a staged regular file to the caller, who closes it.
func (s *Staged) TakeFd() int {
	fd := s.Fd
	s.Fd = -1
	return fd
}

// linkFd links the open unnamed file fd as name in dirfd.
func linkFd(fd, dirfd int, name string) error {
	return sysx.LinkObject(fd, dirfd, name)
}
