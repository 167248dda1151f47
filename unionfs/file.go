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
// When the object is copied up while the file is open (another process opened it for writing), the descriptor is
// re-pointed at the upper copy: every open file of a node always sees the same data, as on any filesystem, and
// the kernel's page cache (shared by all opens of the node) stays true. This is where the union differs from
// overlayfs, whose read-only descriptors keep reading the lower file. With passthrough (ptFile) the kernel reads
// the file it registered at open, so such descriptors keep reading the lower file, as in overlayfs (see Open).
//
// ioctls are deliberately not implemented: a forwarded ioctl would run with the daemon's privileges. Every ioctl
// the kernel sends (chattr/lsattr's FS_IOC_SETFLAGS/GETFLAGS, FS_IOC_FSSETXATTR, FS_IOC_SETVERSION, driver
// ioctls) fails with go-fuse's ENOTTY, for root too; overlayfs would copy the file up and set the flags on the
// copy, which the union does not (TestSecurityIoctls).
type file struct {
	node        *Node // immutable
	flags       int   // the flags the layer file is open with; immutable
	writable    bool  // open for writing (so open on the upper object); immutable
	passthrough bool  // the kernel does the I/O on the backing file (see ptFile); set by registerLocked before n.handles has f

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
	f.node.root.stats.count(opRead)
	return fuse.ReadResultFd(uintptr(f.current()), off, len(dest)), 0
}

// Write - FUSE call. The kernel sends the offset even for O_APPEND opens (the flag is not passed to the layer).
func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	f.node.root.stats.count(opWrite)
	fd := f.current()
	// A write clears setuid/setgid as the kernel would (see killpriv.go). A write without a process is the
	// write-back of a shared writable mapping (FUSE_WRITE_CACHE, sent without credentials): the kernel never
	// clears the bits for those, on any filesystem (page_mkwrite only updates the times).
	if caller := requestCaller(ctx); caller.Pid != 0 {
		if err := f.node.killPrivsFd(fd, caller); err != nil {
			return 0, toErrno(err)
		}
	}
	n, err := unix.Pwrite(fd, data, off)
	if err != nil {
		return 0, toErrno(err)
	}
	return uint32(n), 0
}

// Flush - FUSE call, on every close(2) of a descriptor. It answers ENOSYS, which makes the kernel stop sending
// FLUSH for the whole mount: one request less for every close, which matters for workloads of many small files.
// The upper layer is a local filesystem (tmpfs) with no write-back errors for close to report; fsync reports
// errors as always. Locks are the kernel's own, so FLUSH has nothing to release either.
func (f *file) Flush(ctx context.Context) syscall.Errno {
	return syscall.ENOSYS
}

// Fsync - FUSE call.
func (f *file) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	f.node.root.stats.count(opFsync)
	const fsyncFdatasync = 1 // FUSE_FSYNC_FDATASYNC of <linux/fuse.h>
	if flags&fsyncFdatasync != 0 {
		return toErrno(unix.Fdatasync(f.current()))
	}
	return toErrno(unix.Fsync(f.current()))
}

// Release - FUSE call, when the last descriptor of the open file is closed.
func (f *file) Release(ctx context.Context) syscall.Errno {
	f.node.root.stats.count(opRelease)
	f.node.unregister(f)
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
	f.node.root.stats.count(opLseek)
	n, err := unix.Seek(f.current(), int64(off), int(whence))
	if err != nil {
		return 0, toErrno(err)
	}
	return uint64(n), 0
}

// Allocate - FUSE call for fallocate(2).
func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	f.node.root.stats.count(opFallocate)
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
//
// With FUSE passthrough the kernel reads and writes the layer file itself. It keeps one I/O mode per inode, and
// one backing file: while passthrough opens of an inode are live, every open must be passthrough to the same
// file, and while cached opens are live, none may be passthrough (the mixes fail with EIO). So each node counts
// its live opens by mode, and an open that needs another file than the live passthrough opens use (the upper
// copy, after a copy-up) marks the node stale and answers ESTALE: the kernel looks the name up again, gets a new
// node (same inode number, next generation) and opens that one, while the old opens keep reading the lower file
// they have.
func (n *Node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	n.root.stats.count(opOpen)
	writable := wantsWrite(flags)
	n.openMu.Lock()
	defer n.openMu.Unlock()
	if n.stale.Load() {
		n.root.stats.staleRetries.Add(1)
		return nil, 0, syscall.ESTALE
	}
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
	l, obj := n.openTarget(writable)
	if n.ptOpens > 0 && obj != n.ptObj {
		// Live passthrough opens read another file (the lower one this node was copied up from), and the kernel
		// allows one backing file per inode: this open must land on another node. Once they are all released,
		// the node may open the copy itself (serialOpens keeps go-fuse's backing file in step).
		n.markStale()
		n.root.stats.staleRetries.Add(1)
		return nil, 0, syscall.ESTALE
	}
	oflags := openFlags(flags)
	if !l.IsUpper() {
		oflags |= unix.O_NOATIME
	}
	var st unix.Stat_t
	fd, errno := n.openIn(l, obj, oflags, &st)
	if errno != 0 {
		return nil, 0, errno
	}
	if flags&unix.O_TRUNC != 0 {
		if err := truncateOpened(fd, oflags); err != nil {
			unix.Close(fd)
			return nil, 0, toErrno(err)
		}
		st.Size = 0
		if err := n.killPrivsFd(fd, requestCaller(ctx)); err != nil {
			unix.Close(fd)
			return nil, 0, toErrno(err)
		}
		sysx.Fstat(fd, &st)
	}
	f := &file{node: n, fd: fd, flags: oflags, writable: writable}
	fh, fuseFlags := n.registerLocked(f, obj, st.Size, st.Mode)
	if _, now := n.openTarget(writable); now != obj && !f.passthrough {
		// A copy-up made by a request that does not take openMu (Setattr, Link, Rename, xattrs) ended while this
		// file was opened, after it re-pointed the node's open files: give this one the copy too, as every cached
		// reader gets it. (A passthrough reader keeps the file it registered, as overlayfs's readers do.)
		n.repointHandles(n.holder())
	}
	return fh, fuseFlags, 0
}

// openTarget returns the layer and object an open of n reads and writes now: its own object, or for a read-only
// open of a metadata-only copy, the lower data.
func (n *Node) openTarget(writable bool) (*Layer, devIno) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.data != nil && !writable {
		return n.data, n.dataObj
	}
	return n.layer, n.obj
}

// openIn opens obj, the object of n in layer l, with oflags, and stats it into st. A rename or unlink in the union
// can take the name away between finding where the object is and opening it; it gives n a descriptor of the
// object first (see keepByDescriptor), so where n is has changed then, and the open is tried again there. ESTALE is
// left for a name that no longer holds the object for good, or a layer directory that went stale.
func (n *Node) openIn(l *Layer, obj devIno, oflags int, st *unix.Stat_t) (int, syscall.Errno) {
	for attempt := 0; ; attempt++ {
		dirfd, name, errno := n.locationIn(l)
		if errno != 0 {
			return -1, errno
		}
		var fd int
		var err error
		if name == "" {
			fd, err = sysx.Reopen(dirfd, oflags)
		} else {
			fd, err = sysx.OpenObject(dirfd, name, oflags)
		}
		if err == nil {
			if sysx.Fstat(fd, st) == nil && obj == (devIno{st.Dev, st.Ino}) {
				return fd, 0
			}
			unix.Close(fd)
			err = syscall.ESTALE
		}
		if err != syscall.ENOENT && err != syscall.ELOOP && err != syscall.ESTALE {
			return -1, n.parentStale(n.root.layerErrno(l, "open", name, err))
		}
		if l == n.holder() && n.tryAgainMoved(attempt, dirfd, name) {
			continue // moved meanwhile: try where it is now
		}
		if err == syscall.ESTALE && name != "" {
			// The layer's handle of the directory may have gone stale (an NFS server replaced it): then the
			// directory's node must be renewed, or the kernel's retry would meet the same handle.
			var st unix.Stat_t
			if sysx.Fstat(dirfd, &st) == syscall.ESTALE {
				n.parentStale(syscall.ESTALE)
			}
		}
		return -1, syscall.ESTALE
	}
}

// registerLocked records a new open file of n, of size bytes, and returns the handle go-fuse gets and the open
// flags for the kernel.
//
// The handle is a passthrough one when the mount uses passthrough, n has no live cached opens, and the file is
// opened for writing or holds at least Config.PassthroughMinSize bytes. A writer of a setuid or setgid file (mode)
// gets a cached handle, so that its writes reach the daemon, which clears the bits (killpriv.go). Smaller files
// opened for reading go through the page cache: after its first read such a file costs one OPEN and one RELEASE
// per open, while a passthrough open also registers a backing file and makes every read drop the inode's cached
// atime, which costs the next stat a GETATTR. Large files and writers gain more from passthrough: no request per
// read or write.
//
// Cached opens keep the kernel's page cache (FOPEN_KEEP_CACHE): every change goes through the daemon or, with
// passthrough, through the backing file, so the only pages that can be stale are those cached before a
// passthrough writer; the first cached open after one drops them.
//
// Preconditions: n.openMu is held (or n is new and unknown to the kernel).
func (n *Node) registerLocked(f *file, obj devIno, size int64, mode uint32) (fs.FileHandle, uint32) {
	f.passthrough = n.root.passthrough.Load() && n.cachedOpens == 0 &&
		(n.ptOpens > 0 || f.writable && !isSxid(mode) || !f.writable && size >= n.root.cfg.PassthroughMinSize)
	// Published after its mode is set: repointHandles reads it under n.mu only.
	n.mu.Lock()
	if n.handles == nil {
		n.handles = make(map[*file]bool)
	}
	n.handles[f] = true
	n.mu.Unlock()
	if f.passthrough {
		n.ptOpens++
		n.ptObj = obj
		if f.writable {
			n.pagesStale = true
		}
		n.root.stats.passthroughOpens.Add(1)
		return &ptFile{f}, 0
	}
	n.cachedOpens++
	n.root.stats.cachedOpens.Add(1)
	if n.pagesStale {
		n.pagesStale = false
		return f, 0
	}
	return f, fuse.FOPEN_KEEP_CACHE
}

// unregister records that an open file of n is released.
func (n *Node) unregister(f *file) {
	n.openMu.Lock()
	defer n.openMu.Unlock()
	n.mu.Lock()
	delete(n.handles, f)
	n.mu.Unlock()
	if f.passthrough {
		if n.ptOpens--; n.ptOpens == 0 {
			n.ptObj = devIno{}
		}
	} else {
		n.cachedOpens--
	}
}

// asFile returns the union's file behind a go-fuse file handle, or nil.
func asFile(h fs.FileHandle) *file {
	switch f := h.(type) {
	case *file:
		return f
	case *ptFile:
		return f.file
	}
	return nil
}

// ptFile is an open file whose reads and writes the kernel does itself on the layer file (FUSE passthrough).
type ptFile struct{ *file }

var _ fs.FilePassthroughFder = (*ptFile)(nil)

// PassthroughFd - called by go-fuse once, on open: the layer file the kernel registers as backing file.
func (f *ptFile) PassthroughFd() (int, bool) { return f.current(), true }

// truncateOpened empties the object open as fd with oflags. open(O_RDONLY|O_TRUNC) is valid and truncates (the
// kernel has checked the caller's write permission), but ftruncate needs a descriptor open for writing: the
// daemon takes one for the call, and the open file stays read-only.
func truncateOpened(fd, oflags int) error {
	if oflags&unix.O_ACCMODE != unix.O_RDONLY {
		return unix.Ftruncate(fd, 0)
	}
	w, err := sysx.Reopen(fd, unix.O_WRONLY)
	if err != nil {
		return err
	}
	defer unix.Close(w)
	return unix.Ftruncate(w, 0)
}
