package unionfs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// writableObject copies n up if it is not in the upper layer yet (a regular file without its data unless data is
// true: chmod, chown, utimes and xattr changes do not need it) and returns how to reach the upper object (see
// objectAt).
func (n *Node) writableObject(data bool) (dirfd int, name string, l *Layer, errno syscall.Errno) {
	if n.root.cfg.ReadOnly {
		return -1, "", nil, syscall.EROFS
	}
	if errno := n.copyUp(data); errno != 0 {
		return -1, "", nil, errno
	}
	dirfd, name, l, errno = n.objectAt()
	if errno != 0 {
		return -1, "", nil, errno
	}
	if !l.IsUpper() {
		return -1, "", nil, syscall.ESTALE
	}
	return dirfd, name, l, 0
}

// Setattr - FUSE call: chown, chmod, truncate, utimes. The kernel has checked permissions and folded the
// clearing of setuid/setgid bits into the mode it sends. Owner changes come first because changing the owner of a
// file clears its setuid bit on the layer too; the mode is set after it.
func (n *Node) Setattr(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	n.root.stats.count(opSetattr)
	for attempt := 0; ; attempt++ {
		dirfd, name, errno := n.setattrAt(ctx, f, in)
		if errno == syscall.ENOENT && !n.isDir() && n.tryAgainMoved(attempt, dirfd, name) {
			// A rename or unlink took the name meanwhile (see keepByDescriptor); every change is to an absolute
			// value, so doing them again where the file is now is safe.
			continue
		}
		if errno != 0 {
			return errno
		}
		break
	}
	if errno := n.Getattr(ctx, f, out); errno != 0 {
		return errno
	}
	// go-fuse leaves SETATTR replies without a validity, which would make the next stat a GETATTR.
	out.SetTimeout(n.root.cfg.AttrTimeout)
	return 0
}

// setattrAt makes the changes of in to n's object, copied up first, and returns where it found the object.
func (n *Node) setattrAt(ctx context.Context, f fs.FileHandle, in *fuse.SetAttrIn) (dirfd int, name string, errno syscall.Errno) {
	_, truncate := in.GetSize()
	dirfd, name, l, errno := n.writableObject(truncate)
	if errno != 0 {
		return dirfd, name, errno
	}
	fail := func(op string, err error) (int, string, syscall.Errno) {
		return dirfd, name, n.root.layerErrno(l, op, name, err)
	}

	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		u, g := -1, -1
		if uok {
			u = int(uid)
		}
		if gok {
			g = int(gid)
		}
		if err := sysx.Chownat(dirfd, name, u, g); err != nil {
			return fail("chown", err)
		}
	}
	if mode, ok := in.GetMode(); ok {
		if err := sysx.Chmodat(dirfd, name, mode); err != nil {
			return fail("chmod", err)
		}
	}
	if size, ok := in.GetSize(); ok {
		var err error
		if fh := asFile(f); fh != nil && fh.writable {
			err = unix.Ftruncate(fh.current(), int64(size))
		} else {
			err = sysx.Truncateat(dirfd, name, int64(size))
		}
		if err != nil {
			return fail("truncate", err)
		}
	}
	// A truncate by a caller without CAP_FSETID asks for setuid/setgid to go; a SETATTR without attributes is
	// what the kernel sends when a passthrough write needs them gone (killpriv.go).
	if in.Valid&fuse.FATTR_KILL_SUIDGID != 0 || in.Valid&^(fuse.FATTR_FH|fuse.FATTR_LOCKOWNER) == 0 {
		if err := n.killPrivsAt(dirfd, name, requestCaller(ctx)); err != nil {
			return fail("chmod", err)
		}
	}
	if in.Valid&(fuse.FATTR_ATIME|fuse.FATTR_MTIME) != 0 {
		ts := [2]unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if in.Valid&fuse.FATTR_ATIME != 0 {
			ts[0] = unix.Timespec{Sec: int64(in.Atime), Nsec: int64(in.Atimensec)}
			if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
				ts[0] = unix.Timespec{Nsec: unix.UTIME_NOW}
			}
		}
		if in.Valid&fuse.FATTR_MTIME != 0 {
			ts[1] = unix.Timespec{Sec: int64(in.Mtime), Nsec: int64(in.Mtimensec)}
			if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
				ts[1] = unix.Timespec{Nsec: unix.UTIME_NOW}
			}
		}
		if err := sysx.Utimensat(dirfd, name, &ts); err != nil {
			return fail("utimes", err)
		}
	}
	return dirfd, name, 0
}

// Setxattr - FUSE call. The union's private attributes cannot be set: EPERM.
func (n *Node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	n.root.stats.count(opSetxattr)
	if whiteout.IsPrivateXattr(attr) || attr == StatsXattr && n.IsRoot() {
		return syscall.EPERM
	}
	dirfd, name, l, errno := n.writableObject(false)
	if errno != 0 {
		return errno
	}
	if err := sysx.Setxattrat(dirfd, name, attr, data, int(flags)); err != nil {
		return n.root.layerErrno(l, "setxattr", name, err)
	}
	return 0
}

// Removexattr - FUSE call. The union's private attributes cannot be removed: EPERM.
func (n *Node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	n.root.stats.count(opRemovexattr)
	if whiteout.IsPrivateXattr(attr) || attr == StatsXattr && n.IsRoot() {
		return syscall.EPERM
	}
	if _, errno := n.Getxattr(ctx, attr, nil); errno != 0 {
		return errno // nothing to remove: no copy-up for that
	}
	dirfd, name, l, errno := n.writableObject(false)
	if errno != 0 {
		return errno
	}
	if err := sysx.Removexattrat(dirfd, name, attr); err != nil {
		return n.root.layerErrno(l, "removexattr", name, err)
	}
	return 0
}

// CopyFileRange - FUSE call for copy_file_range(2) between two open files of the union.
func (n *Node) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle,
	offOut uint64, length uint64, flags uint64) (uint32, syscall.Errno) {
	n.root.stats.count(opCopyFileRange)
	in, dst := asFile(fhIn), asFile(fhOut)
	if in == nil || dst == nil {
		return 0, syscall.EXDEV
	}
	if !dst.writable {
		return 0, syscall.EBADF
	}
	oi, oo := int64(offIn), int64(offOut)
	count, err := unix.CopyFileRange(in.current(), &oi, dst.current(), &oo, int(length), int(flags))
	if err != nil {
		return 0, toErrno(err)
	}
	return uint32(count), 0
}
