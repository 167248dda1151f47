package changes

import (
	"bytes"
	"errors"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/stack"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// skipXattr reports whether an xattr is not part of an object's visible metadata: the union's private xattrs
// (markers, origins, redirects) and system.nfs4_acl, which a copy never carries (see package cow).
func skipXattr(name string) bool {
	return whiteout.IsPrivateXattr(name) || name == "system.nfs4_acl"
}

// xattrs returns the visible xattrs of name in dirfd. A filesystem without xattr support has none.
func xattrs(dirfd int, name string) (map[string]string, error) {
	names, err := sysx.ListxattrAll(dirfd, name)
	if isUnsupported(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	m := make(map[string]string)
	for _, n := range names {
		if skipXattr(n) {
			continue
		}
		v, err := sysx.GetxattrAll(dirfd, name, n)
		if errors.Is(err, syscall.ENODATA) || isUnsupported(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		m[n] = string(v)
	}
	return m, nil
}

func isUnsupported(err error) bool {
	return errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS)
}

// metaDiff lists the attributes in which the upper object (udir, uname, ust) differs from the lower object lo.
func metaDiff(udir int, uname string, ust *unix.Stat_t, lo *stack.Object) ([]string, error) {
	var diff []string
	lst := &lo.Stat
	if ust.Mode&unix.S_IFMT != unix.S_IFLNK && ust.Mode&07777 != lst.Mode&07777 {
		diff = append(diff, AttrMode)
	}
	if ust.Uid != lst.Uid || ust.Gid != lst.Gid {
		diff = append(diff, AttrOwner)
	}
	if ust.Mtim != lst.Mtim {
		diff = append(diff, AttrTimes)
	}
	ux, err := xattrs(udir, uname)
	if err != nil {
		return nil, err
	}
	lx, err := xattrs(lo.Dirfd, lo.Name)
	if err != nil {
		return nil, err
	}
	if !sameXattrs(ux, lx) {
		diff = append(diff, AttrXattrs)
	}
	return diff, nil
}

func sameXattrs(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// without returns list without the attribute attr.
func without(list []string, attr string) []string {
	var out []string
	for _, a := range list {
		if a != attr {
			out = append(out, a)
		}
	}
	return out
}

// sameData reports whether the upper non-directory (udir, uname, ust) has the data of the lower object lo, both of
// the same type: content for regular files, target for symlinks, device number for devices.
func sameData(udir int, uname string, ust *unix.Stat_t, lo *stack.Object) (bool, error) {
	switch ust.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		if ust.Size != lo.Stat.Size {
			return false, nil
		}
		return sameContent(udir, uname, lo.Dirfd, lo.Name)
	case unix.S_IFLNK:
		a, err := sysx.Readlinkat(udir, uname)
		if err != nil {
			return false, err
		}
		b, err := sysx.Readlinkat(lo.Dirfd, lo.Name)
		if err != nil {
			return false, err
		}
		return bytes.Equal(a, b), nil
	case unix.S_IFCHR, unix.S_IFBLK:
		return ust.Rdev == lo.Stat.Rdev, nil
	}
	return true, nil
}

// openRead opens a regular file for reading without changing its access time where the caller may.
func openRead(dirfd int, name string) (int, error) {
	fd, err := sysx.Openat(dirfd, name, unix.O_RDONLY|unix.O_NOATIME|unix.O_NONBLOCK, 0)
	if errors.Is(err, syscall.EPERM) {
		fd, err = sysx.Openat(dirfd, name, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	}
	return fd, err
}

// sameContent compares two regular files byte by byte.
func sameContent(adir int, aname string, bdir int, bname string) (bool, error) {
	a, err := openRead(adir, aname)
	if err != nil {
		return false, err
	}
	defer unix.Close(a)
	b, err := openRead(bdir, bname)
	if err != nil {
		return false, err
	}
	defer unix.Close(b)
	bufA, bufB := make([]byte, 256<<10), make([]byte, 256<<10)
	for {
		na, errA := readFull(a, bufA)
		nb, errB := readFull(b, bufB)
		if errA != nil {
			return false, errA
		}
		if errB != nil {
			return false, errB
		}
		if na != nb || !bytes.Equal(bufA[:na], bufB[:nb]) {
			return false, nil
		}
		if na < len(bufA) {
			return true, nil
		}
	}
}

// readFull reads until buf is full or the file ends.
func readFull(fd int, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		k, err := unix.Read(fd, buf[n:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if k == 0 {
			return n, nil
		}
		n += k
	}
	return n, nil
}
