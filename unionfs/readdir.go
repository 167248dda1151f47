package unionfs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/stack"
)

// OpendirHandle - FUSE call. Returns a handle whose listing is built on the first read. The kernel may cache the
// listing (FOPEN_CACHE_DIR): every change to the directory goes through the daemon, and the kernel drops its cache
// when it sends one.
func (n *Node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.stack() == nil {
		return nil, 0, syscall.ESTALE
	}
	return &dirHandle{node: n}, fuse.FOPEN_CACHE_DIR | fuse.FOPEN_KEEP_CACHE, 0
}

// dirHandle is an open directory of the merged view. Its listing is a snapshot taken at the first read (and again
// after a rewind), so offsets are indexes into a fixed list: telldir/seekdir work for the life of the handle.
type dirHandle struct {
	node *Node

	mu      sync.Mutex
	entries []fuse.DirEntry // protected by mu; nil until the first read
	pos     int             // index of the next entry; protected by mu
}

var (
	_ fs.FileReaddirenter = (*dirHandle)(nil)
	_ fs.FileSeekdirer    = (*dirHandle)(nil)
	_ fs.FileReleasedirer = (*dirHandle)(nil)
	_ fs.FileFsyncdirer   = (*dirHandle)(nil)
)

// Readdirent - FUSE call. Returns the next entry, or nil at the end.
func (h *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.entries == nil {
		h.node.root.stats.count(opReaddir) // one merged listing
		entries, errno := h.node.list()
		if errno != 0 {
			return nil, errno
		}
		h.entries = entries
	}
	if h.pos >= len(h.entries) {
		return nil, 0
	}
	e := h.entries[h.pos]
	h.pos++
	e.Off = uint64(h.pos)
	return &e, 0
}

// Seekdir - FUSE call. off is an offset a Readdirent returned, or 0 to rewind, which also refreshes the listing
// as rewinddir(3) promises.
func (h *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if off == 0 {
		h.entries, h.pos = nil, 0
		return 0
	}
	if h.entries == nil {
		// A handle opened to continue a listing at an offset (see handleFreeDirs).
		h.node.root.stats.count(opReaddir)
		entries, errno := h.node.list()
		if errno != 0 {
			return errno
		}
		h.entries = entries
	}
	if off > uint64(len(h.entries)) {
		// The directory shrank since the offset was handed out (a listing continued on a fresh handle, while
		// entries were removed): the listing is over, as on a local filesystem, not an error.
		off = uint64(len(h.entries))
	}
	h.pos = int(off)
	return 0
}

// Releasedir - FUSE call.
func (h *dirHandle) Releasedir(ctx context.Context, releaseFlags uint32) {}

// Fsyncdir - FUSE call. Syncs the directory's upper layer copy, the only one that can have changed.
func (h *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	dirs := h.node.stack()
	if dirs == nil {
		return syscall.ESTALE
	}
	if !dirs[0].layer.IsUpper() || dirs[0].fd < 0 {
		return 0
	}
	fd, err := sysx.Openat(dirs[0].fd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return toErrno(err)
	}
	defer unix.Close(fd)
	return toErrno(unix.Fsync(fd))
}

// list builds the merged listing of directory n: the names of every layer directory of its stack, topmost first,
// each once, without markers and whited-out names, with the inode numbers lookup gives them.
func (n *Node) list() ([]fuse.DirEntry, syscall.Errno) {
	v, ok := n.view()
	if !ok {
		return nil, syscall.ESTALE
	}
	entries, errno := n.root.listView(v, n.StableAttr().Ino, n.parentIno())
	return entries, n.staleDir(errno)
}

// listView builds the merged listing of a directory with the view given (see list and package stack).
func (r *Root) listView(v dirView, selfIno, parentIno uint64) ([]fuse.DirEntry, syscall.Errno) {
	entries := []fuse.DirEntry{
		{Name: ".", Mode: unix.S_IFDIR, Ino: selfIno},
		{Name: "..", Mode: unix.S_IFDIR, Ino: parentIno},
	}
	var fromUpper []int // entries whose numbers come from lookup rules (origins, lower directories, redirects)
	devs := make([]uint64, len(r.layers.all))
	for _, ld := range v.dirs {
		devs[ld.layer.Index] = ld.dev
	}
	err := r.reader.List(v, func(li int, e *stack.Entry) error {
		if li == 0 {
			fromUpper = append(fromUpper, len(entries))
		}
		entries = append(entries, fuse.DirEntry{Name: e.Name, Mode: uint32(e.Type) << 12, Ino: r.inos.ino(devIno{devs[li], e.Ino})})
		return nil
	})
	if err != nil {
		return nil, r.readErrno(err)
	}
	// An upper entry's number may come from below it: a copy's origin, a merged or redirected directory's lower
	// directory. Ask lookup, which knows all the rules.
	for _, i := range fromUpper {
		res, errno := r.resolve(v, entries[i].Name)
		if errno != 0 {
			return nil, errno
		}
		if res.Exists() {
			entries[i].Ino = r.inos.ino(res.identity())
		}
		res.close()
	}
	return entries, 0
}

// parentIno returns the inode number of n's parent, or n's own for the root.
func (n *Node) parentIno() uint64 {
	if _, p := n.Parent(); p != nil {
		return p.StableAttr().Ino
	}
	return n.StableAttr().Ino
}

// dtype converts a file mode into a DT_* directory entry type.
func dtype(mode uint32) uint8 {
	return uint8((mode & unix.S_IFMT) >> 12)
}
