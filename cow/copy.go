package cow

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
)

// Source is a lower object to copy: a name in a lower directory, with its attributes as looked up.
type Source struct {
	Dirfd int
	Name  string
	Stat  unix.Stat_t
}

// Options tunes a copy.
type Options struct {
	// MetadataOnly makes the copy of a regular file hold the size but no data (see CopyData).
	MetadataOnly bool
	// Skip names xattrs not to copy (the union's private ones); system.nfs4_acl is never copied.
	Skip func(name string) bool
	// Extra xattrs are set on the copy, after the copied ones.
	Extra map[string][]byte
}

// aclXattrs are the POSIX ACL xattrs; a copy must have exactly the ones its source has.
var aclXattrs = []string{"system.posix_acl_access", "system.posix_acl_default"}

// Build stages a copy of src in the upper directory dirfd (see the package documentation for what is copied and
// in which order). The caller publishes it or discards it; on error nothing is left behind.
func Build(src Source, dirfd int, opt Options) (*Staged, error) {
	st := &src.Stat
	typ := st.Mode & unix.S_IFMT
	if typ == unix.S_IFREG && !opt.MetadataOnly {
		if err := CheckSpace(dirfd, st.Blocks*512); err != nil {
			return nil, err
		}
	}
	var s *Staged
	var err error
	switch typ {
	case unix.S_IFREG:
		s, err = NewFile(dirfd, 0)
	case unix.S_IFDIR:
		s, err = NewDir(dirfd, 0)
	case unix.S_IFLNK:
		var target []byte
		target, err = sysx.Readlinkat(src.Dirfd, src.Name)
		if err == nil {
			s, err = NewSymlink(dirfd, string(target))
		}
	case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO, unix.S_IFSOCK:
		s, err = NewNode(dirfd, typ, st.Rdev)
	default:
		err = fmt.Errorf("copy-up of %s: unknown file type %o: %w", src.Name, typ, syscall.EINVAL)
	}
	if err != nil {
		return nil, err
	}
	if err := fill(src, s, opt); err != nil {
		s.Discard()
		return nil, err
	}
	return s, nil
}

// fill gives the staged copy s the data, owner, xattrs, mode and times of src.
func fill(src Source, s *Staged, opt Options) error {
	st := &src.Stat
	if st.Mode&unix.S_IFMT == unix.S_IFREG {
		var err error
		if opt.MetadataOnly {
			err = unix.Ftruncate(s.Fd, st.Size)
		} else {
			err = copyFrom(src, s.Fd)
		}
		if err != nil {
			return err
		}
	}
	if err := s.Chown(int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	if err := copyXattrs(src, s, opt.Skip); err != nil {
		return err
	}
	for name, value := range opt.Extra {
		if err := s.Setxattr(name, value); err != nil {
			return fmt.Errorf("setting %s: %w", name, err)
		}
	}
	if err := s.Chmod(st.Mode & 07777); err != nil {
		return fmt.Errorf("chmod: %w", err)
	}
	if err := s.Utimes(st.Atim, st.Mtim); err != nil {
		return fmt.Errorf("utimes: %w", err)
	}
	return nil
}

// CheckSpace fails with ENOSPC if the filesystem of dirfd has less than need bytes free for an unprivileged
// writer, or no free inode.
func CheckSpace(dirfd int, need int64) error {
	var sf unix.Statfs_t
	if err := unix.Fstatfs(dirfd, &sf); err != nil {
		return err
	}
	if sf.Files > 0 && sf.Ffree == 0 {
		return syscall.ENOSPC
	}
	if need > 0 && int64(sf.Bavail)*sf.Bsize < need {
		return syscall.ENOSPC
	}
	return nil
}

// CopyData copies the data of the lower regular file src into the open upper file dst, which has the right size
// already (a metadata-only copy), keeping holes. It checks free space first.
func CopyData(src Source, dst int) error {
	if err := CheckSpace(dst, src.Stat.Blocks*512); err != nil {
		return err
	}
	return copyFrom(src, dst)
}

// copyFrom opens the lower file src and copies its data into dst, holes kept, then sets dst's size.
func copyFrom(src Source, dst int) error {
	in, err := sysx.Openat(src.Dirfd, src.Name, unix.O_RDONLY|unix.O_NOATIME, 0)
	if err != nil {
		return err
	}
	defer unix.Close(in)
	var st unix.Stat_t
	if err := sysx.Fstat(in, &st); err != nil {
		return err
	}
	if st.Dev != src.Stat.Dev || st.Ino != src.Stat.Ino {
		return syscall.ESTALE // not the object that was looked up
	}
	if err := copyData(in, dst, st.Size); err != nil {
		return err
	}
	return unix.Ftruncate(dst, st.Size)
}

// copyData copies the data segments of in (up to size) to the same offsets of out, skipping holes.
func copyData(in, out int, size int64) error {
	for off := int64(0); off < size; {
		start, err := unix.Seek(in, off, unix.SEEK_DATA)
		end := size
		switch {
		case errors.Is(err, syscall.ENXIO):
			return nil // only a hole remains
		case errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP):
			start = off // no SEEK_DATA here: all data
		case err != nil:
			return err
		default:
			if h, err := unix.Seek(in, start, unix.SEEK_HOLE); err == nil && h < size {
				end = h
			}
		}
		if err := copyRange(in, out, start, end-start); err != nil {
			return err
		}
		off = end
	}
	return nil
}

// copyRange copies n bytes at off from in to out: copy_file_range(2) where the kernel can (no data through the
// daemon, reflinks on filesystems that have them), else sendfile(2) (an in-kernel copy between any two
// filesystems, such as squashfs to tmpfs), and pread/pwrite through a pooled buffer as the last resort.
func copyRange(in, out int, off, n int64) error {
	useCFR, useSendfile := true, true
	for n > 0 {
		chunk := min(n, 1<<30)
		if useCFR {
			o1, o2 := off, off
			c, err := unix.CopyFileRange(in, &o1, out, &o2, int(chunk), 0)
			if err == nil && c > 0 {
				off, n = off+int64(c), n-int64(c)
				continue
			}
			if err == nil {
				return nil // the source is shorter than it said: the final truncate sets the size
			}
			if !unsupported(err) {
				return err
			}
			useCFR = false
		}
		if useSendfile {
			c, err := sendfileAt(in, out, off, int(chunk))
			if err == nil && c > 0 {
				off, n = off+int64(c), n-int64(c)
				continue
			}
			if err == nil {
				return nil
			}
			if !unsupported(err) {
				return err
			}
			useSendfile = false
		}
		c, err := preadPwrite(in, out, off, chunk)
		if err != nil {
			return err
		}
		if c == 0 {
			return nil
		}
		off, n = off+c, n-c
	}
	return nil
}

// unsupported reports whether a copy syscall failed because it cannot copy between these two files, rather
// than because of an I/O error.
func unsupported(err error) bool {
	return errors.Is(err, syscall.EXDEV) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSYS) ||
		errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EBADF)
}

// sendfileAt copies up to n bytes at off from in to the same offset of out.
func sendfileAt(in, out int, off int64, n int) (int, error) {
	if _, err := unix.Seek(out, off, io.SeekStart); err != nil {
		return 0, err
	}
	for {
		o := off
		c, err := unix.Sendfile(out, in, &o, n)
		if err == syscall.EINTR {
			continue
		}
		return c, err
	}
}

// copyBuffers are the buffers of preadPwrite, kept between copy-ups.
var copyBuffers = sync.Pool{New: func() any { b := make([]byte, 1<<20); return &b }}

// preadPwrite copies up to n bytes at off from in to out through a buffer and returns how many it copied.
func preadPwrite(in, out int, off, n int64) (int64, error) {
	bp := copyBuffers.Get().(*[]byte)
	defer copyBuffers.Put(bp)
	buf := *bp
	for {
		r, err := unix.Pread(in, buf[:min(n, int64(len(buf)))], off)
		if err == syscall.EINTR {
			continue
		}
		if err != nil || r == 0 {
			return 0, err
		}
		for w := 0; w < r; {
			k, err := unix.Pwrite(out, buf[w:r], off+int64(w))
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				return 0, err
			}
			w += k
		}
		return int64(r), nil
	}
}

// copyXattrs copies src's xattrs to dst (see the package documentation), and removes POSIX ACLs that dst got
// from the default ACL of its upper directory but src does not have.
func copyXattrs(src Source, dst *Staged, skip func(string) bool) error {
	names, err := sysx.ListxattrAll(src.Dirfd, src.Name)
	if isUnsupported(err) {
		names, err = nil, nil
	}
	if err != nil {
		return fmt.Errorf("listing xattrs: %w", err)
	}
	has := map[string]bool{}
	for _, name := range names {
		if name == "system.nfs4_acl" || skip != nil && skip(name) {
			continue
		}
		value, err := sysx.GetxattrAll(src.Dirfd, src.Name, name)
		if errors.Is(err, syscall.ENODATA) || isUnsupported(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("reading xattr %s: %w", name, err)
		}
		if err := dst.Setxattr(name, value); err != nil {
			if (isUnsupported(err) || errors.Is(err, syscall.EPERM)) && !carriesPermissions(name) {
				continue // e.g. user.* on a symlink, or on an upper filesystem without user xattrs
			}
			return fmt.Errorf("copying xattr %s: %w", name, err)
		}
		has[name] = true
	}
	if dst.Mode&unix.S_IFMT == unix.S_IFLNK {
		return nil
	}
	for _, acl := range aclXattrs {
		if !has[acl] {
			if err := dst.Removexattr(acl); err != nil && !isUnsupported(err) {
				return fmt.Errorf("removing inherited %s: %w", acl, err)
			}
		}
	}
	return nil
}

// carriesPermissions reports whether losing the xattr would change who may do what with the file.
func carriesPermissions(name string) bool {
	return name == "security.capability" || strings.HasPrefix(name, "system.posix_acl_")
}

func isUnsupported(err error) bool {
	return errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.ENOSYS)
}
