package unionfs

import (
	"context"
	"strconv"
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
// When the object is copied up while the file is open (another process opened it for writing), the descriptor is
// re-pointed at the upper copy: every open file of a node always sees the same data, as on any filesystem, and
// the kernel's page cache (shared by all opens of the node) stays true. This is where the union differs from
// overlayfs, whose read-only descriptors keep reading the lower file.
//
// ioctls are deliberately not implemented: a forwarded ioctl would run with the daemon's privileges.
type file struct {
	node     *Node // immutable
	flags    int   // the flags the layer file is open with; immutable
	writable bool  // open for writing (so open on the upper object); immutable

	mu      sync.RWMutex
	fd      int   // protected by mu; -1 after Release
	retired []int // descriptors replaced by re-pointing, closed at Release: a splice may still use them; protected by mu
}

var (
	_ fs.FileReader    = (*file)(nil)
	_ fs.FileWriter    = (*file)(nil)
	_ fs.FileFlusher   = (*file)(nil)
	_ fs.FileFsyncer   = (*file)(nil)
	_ fs.FileReleaser  = (*file)(nil)
	_ fs.FileLseeker   = (*file)(nil)
	_ fs.FileAllocater = (*file)(nil)
)

// current returns the file's descriptor. The descriptor stays open until Release, even if it is re-pointed.
func (f *file) current() int {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.fd
}

func (f *file) isWritable() bool { return f.writable }

func (f *file) fstat(st *unix.Stat_t) error { return sysx.Fstat(f.current(), st) }

// repoint makes the file read fd from now on.
func (f *file) repoint(fd int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd < 0 {
		unix.Close(fd)
		return
	}
	f.retired = append(f.retired, f.fd)
	f.fd = fd
}

// Read - FUSE call.
func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	return fuse.ReadResultFd(uintptr(f.current()), off, len(dest)), 0
}

// Write - FUSE call. The kernel sends the offset even for O_APPEND opens (the flag is not passed to the layer).
func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	n, err := unix.Pwrite(f.current(), data, off)
	if err != nil {
		return 0, toErrno(err)
	}
	return uint32(n), 0
}

// Flush - FUSE call, on every close(2) of a descriptor. Closing a duplicate of the layer descriptor reports the
// errors that close(2) on the layer file would (NFS write-back errors, for one).
func (f *file) Flush(ctx context.Context) syscall.Errno {
	fd, err := unix.Dup(f.current())
	if err != nil {
		return toErrno(err)
	}
	return toErrno(unix.Close(fd))
}

// Fsync - FUSE call.
func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	const fsyncFdatasync = 1 // FUSE_FSYNC_FDATASYNC of <linux/fuse.h>
	if flags&fsyncFdatasync != 0 {
		return toErrno(unix.Fdatasync(f.current()))
	}
	return toErrno(unix.Fsync(f.current()))
}

// Release - FUSE call, when the last descriptor of the open file is closed.
func (f *file) Release(ctx context.Context) syscall.Errno {
	f.node.mu.Lock()
	delete(f.node.handles, f)
	f.node.mu.Unlock()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fd >= 0 {
		unix.Close(f.fd)
		f.fd = -1
	}
	for _, fd := range f.retired {
		unix.Close(fd)
	}
	f.retired = nil
	return 0
}

// Lseek - FUSE call for SEEK_DATA and SEEK_HOLE.
func (f *file) Lseek(ctx context.Context, off uint64, whence uint32) (uint64, syscall.Errno) {
	n, err := unix.Seek(f.current(), int64(off), int(whence))
	if err != nil {
		return 0, toErrno(err)
	}
	return uint64(n), 0
}

// Allocate - FUSE call for fallocate(2).
func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	return toErrno(unix.Fallocate(f.current(), mode, int64(off), int64(size)))
}

// openFlags are the open(2) flags passed on to a layer file: creation and truncation are done by the union
// itself, O_APPEND is emulated by the kernel (it sends offsets), caching is the kernel's business (O_DIRECT), and
// descriptors never leak into children.
func openFlags(flags uint32) int {
	f := int(flags) &^ (unix.O_CREAT | unix.O_EXCL | unix.O_APPEND | unix.O_TRUNC | unix.O_NOCTTY | unix.O_DIRECT)
	f &^= syscall.O_ASYNC
	return f | unix.O_NOCTTY
}

// wantsWrite reports whether open flags ask for writing or truncation.
func wantsWrite(flags uint32) bool {
	return flags&(unix.O_WRONLY|unix.O_RDWR|unix.O_TRUNC) != 0
}

// Open - FUSE call. Opening a lower file for writing copies it up first (just its metadata if it is truncated
// on open); a read-only open of a metadata-only copy reads the lower data.
func (n *Node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	writable := wantsWrite(flags)
	if writable {
		if n.root.cfg.ReadOnly {
			return nil, 0, syscall.EROFS
		}
		var errno syscall.Errno
		if flags&unix.O_TRUNC != 0 {
			errno = n.copyUpTruncated()
		} else {
			errno = n.copyUp(true)
		}
		if errno != 0 {
			return nil, 0, errno
		}
	}
	n.mu.RLock()
	l, obj, anon := n.layer, n.obj, n.anon
	if n.data != nil && !writable {
		l, obj = n.data, n.dataObj
	}
	n.mu.RUnlock()
	oflags := openFlags(flags)
	if !l.IsUpper() {
		oflags |= unix.O_NOATIME
	}
	var fd int
	var err error
	if anon >= 0 {
		fd, err = reopen(anon, oflags)
	} else {
		dirfd, name, errno := n.locationIn(l)
		if errno != 0 {
			return nil, 0, errno
		}
		fd, err = sysx.Openat(dirfd, name, oflags, 0)
		if err == syscall.ELOOP || err == syscall.ENOENT {
			return nil, 0, syscall.ESTALE // the name became a symlink or vanished: n is no longer there
		}
		if err != nil {
			return nil, 0, n.root.layerErrno(l, "open", name, err)
		}
	}
	if err != nil {
		return nil, 0, toErrno(err)
	}
	var st unix.Stat_t
	if err := sysx.Fstat(fd, &st); err != nil || obj != (devIno{st.Dev, st.Ino}) {
		unix.Close(fd)
		return nil, 0, syscall.ESTALE
	}
	if flags&unix.O_TRUNC != 0 {
		if err := unix.Ftruncate(fd, 0); err != nil {
			unix.Close(fd)
			return nil, 0, toErrno(err)
		}
	}
	f := &file{node: n, fd: fd, flags: oflags, writable: writable}
	n.mu.Lock()
	if n.handles == nil {
		n.handles = make(map[*file]bool)
	}
	n.handles[f] = true
	n.mu.Unlock()
	// Every change to a file goes through the daemon and the kernel's page cache, so cached pages stay true
	// across opens.
	return f, fuse.FOPEN_KEEP_CACHE, 0
}

// reopen opens the file behind the descriptor fd anew with flags. It is used for files that have no name (made
// with O_TMPFILE and not yet linked), which only /proc/self/fd reaches.
func reopen(fd int, flags int) (int, error) {
	return unix.Open("/proc/self/fd/"+strconv.Itoa(fd), flags|unix.O_CLOEXEC, 0)
}
