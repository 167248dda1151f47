package unionfs

import (
	"context"
	"strings"
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

// listView builds the merged listing of a directory with the view given (see list).
func (r *Root) listView(v dirView, selfIno, parentIno uint64) ([]fuse.DirEntry, syscall.Errno) {
	stack := v.dirs
	entries := []fuse.DirEntry{
		{Name: ".", Mode: unix.S_IFDIR, Ino: selfIno},
		{Name: "..", Mode: unix.S_IFDIR, Ino: parentIno},
	}
	seen := make(map[string]bool)
	var fromUpper []int // entries whose numbers come from lookup rules (origins, lower directories, redirects)
	for _, l := range r.layers.all {
		// The layer's marker directory hides names of the layers below, whether or not the layer has the
		// directory itself.
		hides := r.markersIn(l, v)
		ld, ok := dirIn(stack, l)
		if !ok {
			for _, h := range hides {
				seen[h] = true
			}
			continue
		}
		atRoot := ld.dev == ld.layer.dev && ld.ino == ld.layer.ino
		r.stats.layerReaddirs.Add(1)
		err := r.readLayerDir(ld, func(name string, dino uint64, typ uint8) syscall.Errno {
			if name == "." || name == ".." || seen[name] || whiteout.IsMarkerName(name) ||
				atRoot && whiteout.IsRootMetaName(name) {
				return 0
			}
			seen[name] = true
			if typ == unix.DT_UNKNOWN || typ == unix.DT_CHR || typ == unix.DT_REG && ld.opacity == whiteout.Xwhiteouts {
				// The type is unknown (some NFS servers, older filesystems) or the entry may be a whiteout.
				var st unix.Stat_t
				if err := sysx.Fstatat(ld.fd, name, &st); err != nil {
					if err == syscall.ENOENT {
						return 0 // removed behind our back since getdents
					}
					return r.layerErrno(ld.layer, "stat", name, err)
				}
				typ = dtype(st.Mode)
				if whiteout.IsOverlayWhiteout(&st) ||
					typ == unix.DT_REG && ld.opacity == whiteout.Xwhiteouts && whiteout.IsXwhiteout(ld.fd, name, &st) {
					return 0
				}
			}
			if ld.layer.IsUpper() {
				fromUpper = append(fromUpper, len(entries))
			}
			entries = append(entries, fuse.DirEntry{Name: name, Mode: uint32(typ) << 12, Ino: r.inos.ino(devIno{ld.dev, dino})})
			return 0
		})
		if err != 0 {
			return nil, err
		}
		for _, h := range hides {
			seen[h] = true
		}
	}
	// An upper entry's number may come from below it: a copy's origin, a merged or redirected directory's lower
	// directory. Ask lookup, which knows all the rules.
	for _, i := range fromUpper {
		res, errno := r.resolve(v, entries[i].Name)
		if errno != 0 {
			return nil, errno
		}
		if res.exists() {
			entries[i].Ino = r.inos.ino(res.identity())
		}
		res.close()
	}
	return entries, 0
}

// markersIn returns the names layer l whites out in the directory whose view is v, for the layers below, with
// aufs or unionfs-fuse markers.
func (r *Root) markersIn(l *Layer, v dirView) []string {
	var names []string
	if ld, ok := dirIn(v.dirs, l); ok && l.aufs {
		r.readLayerNames(l, ld.fd, func(name string) {
			if hidden, ok := aufsWhiteoutTarget(name); ok && whiteout.IsMarkerName(name) {
				names = append(names, hidden)
			}
		})
	}
	if meta := metaIn(v.metas, l); meta >= 0 {
		r.readLayerNames(l, meta, func(name string) {
			if h, ok := strings.CutSuffix(name, whiteout.UnionfsHiddenSuffix); ok && h != "" {
				names = append(names, h)
			}
		})
	}
	return names
}

// readLayerNames calls fn with every name in the directory dirfd of layer l.
func (r *Root) readLayerNames(l *Layer, dirfd int, fn func(string)) {
	fd, err := sysx.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	sysx.Getdents(fd, func(name string, _ uint64, _ uint8) { fn(name) })
}

// readLayerDir lists one layer directory, calling fn for each entry until fn returns an error.
func (r *Root) readLayerDir(ld layerDir, fn func(name string, ino uint64, typ uint8) syscall.Errno) syscall.Errno {
	fd, err := sysx.Openat(ld.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME, 0)
	if err != nil {
		return r.layerErrno(ld.layer, "opening directory", ".", err)
	}
	defer unix.Close(fd)
	var errno syscall.Errno
	err = sysx.Getdents(fd, func(name string, ino uint64, typ uint8) {
		if errno == 0 {
			errno = fn(name, ino, typ)
		}
	})
	if err != nil {
		return r.layerErrno(ld.layer, "reading directory", ".", err)
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
// (the union's temporary objects among them) white out nothing.
func aufsWhiteoutTarget(marker string) (string, bool) {
	name, ok := strings.CutPrefix(marker, whiteout.AufsPrefix)
	if !ok || name == "" || strings.HasPrefix(name, whiteout.AufsPrefix) {
		return "", false
	}
	return name, true
}

// dtype converts a file mode into a DT_* directory entry type.
func dtype(mode uint32) uint8 {
	return uint8((mode & unix.S_IFMT) >> 12)
}
