package unionfs

import (
	"context"
	"sync"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
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
	if h.entries == nil || off > uint64(len(h.entries)) {
		return syscall.EINVAL
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

// listed is a name of the merged listing under construction.
type listed struct {
	index   int    // position in the listing; -1 if the name is hidden (whited out)
	layer   int    // position in the stack of the layer directory that supplied it
	ino     uint64 // union inode number
	pending bool   // an upper directory whose number may still come from a lower directory of the same name
}

// list builds the merged listing of directory n: the names of every layer directory of its stack, topmost first,
// each once, without markers and whited-out names, with the inode numbers lookup gives them.
func (n *Node) list() ([]fuse.DirEntry, syscall.Errno) {
	stack := n.stack()
	if stack == nil {
		return nil, syscall.ESTALE
	}
	r := n.root
	entries := []fuse.DirEntry{
		{Name: ".", Mode: unix.S_IFDIR, Ino: n.StableAttr().Ino},
		{Name: "..", Mode: unix.S_IFDIR, Ino: n.parentIno()},
	}
	names := make(map[string]*listed)
	for li, ld := range stack {
		if ld.fd < 0 {
			continue
		}
		atRoot := ld.dev == ld.layer.dev && ld.ino == ld.layer.ino
		var aufsWhiteouts []string
		err := n.readLayerDir(ld, func(name string, dino uint64, typ uint8) syscall.Errno {
			if name == "." || name == ".." || atRoot && whiteout.IsRootMetaName(name) {
				return 0
			}
			if whiteout.IsMarkerName(name) {
				if ld.layer.aufs {
					if hidden, ok := aufsWhiteoutTarget(name); ok {
						aufsWhiteouts = append(aufsWhiteouts, hidden)
					}
				}
				return 0
			}
			if e, seen := names[name]; seen {
				if e.pending {
					return r.settleDirIno(stack, e, li, ld, name, typ, dino)
				}
				return 0
			}
			var st unix.Stat_t
			if typ == unix.DT_UNKNOWN || typ == unix.DT_CHR || typ == unix.DT_REG && ld.opacity == whiteout.Xwhiteouts {
				// The type is unknown (some NFS servers, older filesystems) or the entry may be a whiteout.
				if err := sysx.Fstatat(ld.fd, name, &st); err != nil {
					if err == syscall.ENOENT {
						return 0 // removed behind our back since getdents
					}
					return r.layerErrno(ld.layer, "stat", name, err)
				}
				typ = dtype(st.Mode)
				if whiteout.IsOverlayWhiteout(&st) ||
					typ == unix.DT_REG && ld.opacity == whiteout.Xwhiteouts && whiteout.IsXwhiteout(ld.fd, name, &st) {
					names[name] = &listed{index: -1, layer: li}
					return 0
				}
			}
			e := &listed{index: len(entries), layer: li, ino: r.inos.ino(devIno{ld.dev, dino})}
			if typ == unix.DT_DIR && ld.layer.IsUpper() && li < len(stack)-1 {
				e.pending = true
			}
			names[name] = e
			entries = append(entries, fuse.DirEntry{Name: name, Mode: uint32(typ) << 12, Ino: e.ino})
			return 0
		})
		if err != 0 {
			return nil, err
		}
		for _, hidden := range aufsWhiteouts {
			if e, seen := names[hidden]; !seen {
				names[hidden] = &listed{index: -1, layer: li}
			} else {
				e.pending = false
			}
		}
		// A pending upper directory whose name this layer does not have keeps waiting for a deeper layer; one
		// whose name this layer has as a non-directory or whiteout was settled by settleDirIno.
	}
	for _, e := range names {
		if e.index >= 0 {
			entries[e.index].Ino = e.ino
		}
	}
	return entries, 0
}

// settleDirIno handles a name that a higher layer supplied as an upper directory still waiting for its inode
// number, when layer directory ld (at position li of stack) has it too: a lower directory gives the number unless
// the upper directory is opaque; anything else ends the wait.
func (r *Root) settleDirIno(stack []layerDir, e *listed, li int, ld layerDir, name string, typ uint8, dino uint64) syscall.Errno {
	e.pending = false
	if typ == unix.DT_UNKNOWN {
		var st unix.Stat_t
		if err := sysx.Fstatat(ld.fd, name, &st); err != nil {
			return 0
		}
		typ = dtype(st.Mode)
	}
	if typ != unix.DT_DIR {
		return 0
	}
	upper := stack[e.layer]
	op, err := whiteout.DirOpacity(upper.fd, name)
	if err != nil && err != syscall.EXDEV {
		return r.layerErrno(upper.layer, "reading opacity of", name, err)
	}
	if op != whiteout.Opaque {
		e.ino = r.inos.ino(devIno{ld.dev, dino})
	}
	return 0
}

// readLayerDir lists one layer directory, calling fn for each entry until fn returns an error.
func (n *Node) readLayerDir(ld layerDir, fn func(name string, ino uint64, typ uint8) syscall.Errno) syscall.Errno {
	fd, err := sysx.Openat(ld.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME, 0)
	if err != nil {
		return n.root.layerErrno(ld.layer, "opening directory", ".", err)
	}
	defer unix.Close(fd)
	var errno syscall.Errno
	err = sysx.Getdents(fd, func(name string, ino uint64, typ uint8) {
		if errno == 0 {
			errno = fn(name, ino, typ)
		}
	})
	if err != nil {
		return n.root.layerErrno(ld.layer, "reading directory", ".", err)
	}
	return errno
}

// parentIno returns the inode number of n's parent, or n's own for the root.
func (n *Node) parentIno() uint64 {
	if _, p := n.Parent(); p != nil {
		return p.StableAttr().Ino
	}
	return n.StableAttr().Ino
}

// aufsWhiteoutTarget returns the name an aufs marker ".wh.NAME" whites out; the aufs meta names ".wh..wh.*"
// white out nothing.
func aufsWhiteoutTarget(marker string) (string, bool) {
	name := marker[len(whiteout.AufsPrefix):]
	if name == "" || len(name) >= len(whiteout.AufsPrefix) && name[:len(whiteout.AufsPrefix)] == whiteout.AufsPrefix {
		return "", false
	}
	return name, true
}

// dtype converts a file mode into a DT_* directory entry type.
func dtype(mode uint32) uint8 {
	return uint8((mode & unix.S_IFMT) >> 12)
}
