package unionfs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
)

// file is an open regular file of the merged view: a descriptor of the object in its layer. Reads are answered
// with the descriptor itself, so go-fuse splices the data into the reply without copying it through the daemon.
//
// ioctls are deliberately not implemented: a forwarded ioctl would run with the daemon's privileges.
type file struct {
	mu sync.Mutex // serialises operations that use the file offset (none today) and Release
	fd int        // immutable until Release
}

var (
	_ fs.FileReader    = (*file)(nil)
	_ fs.FileWriter    = (*file)(nil)
	_ fs.FileFlusher   = (*file)(nil)
	_ fs.FileFsyncer   = (*file)(nil)
	_ fs.FileReleaser  = (*file)(nil)
	_ fs.FileGetattrer = (*file)(nil)
	_ fs.FileLseeker   = (*file)(nil)
	_ fs.FileAllocater = (*file)(nil)
)

// Read - FUSE call.
func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultFd(uintptr(f.fd), off, len(dest)), 0
}

// Write - FUSE call. The kernel sends the offset even for O_APPEND opens (the flag is not passed to the layer).
func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n, err := unix.Pwrite(f.fd, data, off)
	if err != nil {
		return 0, toErrno(err)
	}
	return uint32(n), 0
}

// Flush - FUSE call, on every close(2) of a descriptor. Closing a duplicate of the layer descriptor reports the
// errors that close(2) on the layer file would (NFS write-back errors, for one).
func (f *file) Flush(ctx context.Context) syscall.Errno {
	fd, err := unix.Dup(f.fd)
	if err != nil {
		return toErrno(err)
	}
	return toErrno(unix.Close(fd))
}

// Fsync - FUSE call.
func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	const fsyncFdatasync = 1 // FUSE_FSYNC_FDATASYNC of <linux/fuse.h>
	if flags&fsyncFdatasync != 0 {
		return toErrno(unix.Fdatasync(f.fd))
	}
	return toErrno(unix.Fsync(f.fd))
}

// Release - FUSE call, when the last descriptor of the open file is closed.
func (f *file) Release(ctx context.Context) syscall.Errno {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd >= 0 {
		unix.Close(f.fd)
		f.fd = -1
	}
	return 0
}

// Getattr - FUSE call for fstat(2). Node.Getattr handles it (it gets the handle and keeps the union inode number);
// this method exists for go-fuse paths that ask the handle directly.
func (f *file) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	var st unix.Stat_t
	if err := sysx.Fstat(f.fd, &st); err != nil {
		return toErrno(err)
	}
	fillAttr(&out.Attr, &st, st.Ino, false)
	return 0
}

// Lseek - FUSE call for SEEK_DATA and SEEK_HOLE.
func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	n, err := unix.Seek(f.fd, int64(off), int(whence))
	if err != nil {
		return 0, toErrno(err)
	}
	return uint64(n), 0
}

// Allocate - FUSE call for fallocate(2).
func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	return toErrno(unix.Fallocate(f.fd, mode, int64(off), int64(size)))
}

// openFlags are the open(2) flags passed on to a layer file: creation and truncation are done by the union
// itself, O_APPEND is emulated by the kernel (it sends offsets), and descriptors never leak into children.
func openFlags(flags uint32) int {
	f := int(flags) &^ (unix.O_CREAT | unix.O_EXCL | unix.O_APPEND | unix.O_TRUNC | unix.O_NOCTTY)
	f &^= syscall.O_ASYNC
	return f | unix.O_NOCTTY
}

// wantsWrite reports whether open flags ask for writing or truncation.
func wantsWrite(flags uint32) bool {
	return flags&(unix.O_WRONLY|unix.O_RDWR|unix.O_TRUNC) != 0
}

// Open - FUSE call. Opens the object in its layer. Opening a lower file for writing needs a copy-up.
func (n *Node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	dirfd, name, errno := n.location()
	if errno != 0 {
		return nil, 0, errno
	}
	l := n.holder()
	if wantsWrite(flags) {
		if n.root.cfg.ReadOnly {
			return nil, 0, syscall.EROFS
		}
		if !l.IsUpper() {
			return nil, 0, n.root.needsCopyUp()
		}
	}
	oflags := openFlags(flags)
	if !l.IsUpper() {
		oflags |= unix.O_NOATIME
	}
	fd, err := sysx.Openat(dirfd, name, oflags, 0)
	if err == syscall.ELOOP || err == syscall.ENOENT {
		return nil, 0, syscall.ESTALE // the name became a symlink or vanished: n is no longer there
	}
	if err != nil {
		return nil, 0, n.root.layerErrno(l, "open", name, err)
	}
	var st unix.Stat_t
	if err := sysx.Fstat(fd, &st); err != nil || !n.isObject(&st) {
		unix.Close(fd)
		return nil, 0, syscall.ESTALE
	}
	if flags&unix.O_TRUNC != 0 {
		if err := unix.Ftruncate(fd, 0); err != nil {
			unix.Close(fd)
			return nil, 0, toErrno(err)
		}
	}
	var fuseFlags uint32
	if !l.IsUpper() {
		// A lower file never changes: the kernel may keep its cached pages across opens.
		fuseFlags |= fuse.FOPEN_KEEP_CACHE
	}
	return &file{fd: fd}, fuseFlags, 0
}
