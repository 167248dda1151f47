package unionfs

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/stack"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// layerDir is a directory of the merged view as one layer has it.
type layerDir struct {
	layer    *Layer
	fd       int              // O_PATH descriptor; -1 when the directory is a mount point in its layer
	dev, ino uint64           // identity of the directory in its layer
	opacity  whiteout.Opacity // only computed where a lower layer lies below; Transparent otherwise
	st       *unix.Stat_t     // attributes, kept only for mount points (fd == -1)
}

// metaDir is the directory matching a union directory in one layer's unionfs-fuse meta tree (".unionfs/PATH"),
// which holds the markers of that layer for the directory's names. A layer can have it without having the
// directory itself: unionfs-fuse whites out lower names without copying their directories up.
type metaDir struct {
	layer *Layer
	fd    int // O_PATH descriptor
}

// dirView is what lookup and readdir need of a directory: its layer directories and its marker directories.
type dirView struct {
	dirs  []layerDir // topmost first
	metas []metaDir  // topmost first
}

// Dir returns layer li's part of the directory, for package stack.
func (v dirView) Dir(li int) stack.Dir {
	d := stack.NoDir
	for _, ld := range v.dirs {
		if ld.layer.Index == li {
			d.Fd, d.Opacity = ld.fd, ld.opacity
			d.AtRoot = ld.dev == ld.layer.dev && ld.ino == ld.layer.ino
			break
		}
	}
	for _, m := range v.metas {
		if m.layer.Index == li {
			d.Meta = m.fd
			break
		}
	}
	return d
}

// below returns the view without the upper layer: what the directory would show if the upper layer held nothing.
func (v dirView) below() dirView {
	out := dirView{}
	for _, d := range v.dirs {
		if !d.layer.IsUpper() {
			out.dirs = append(out.dirs, d)
		}
	}
	for _, m := range v.metas {
		if !m.layer.IsUpper() {
			out.metas = append(out.metas, m)
		}
	}
	return out
}

// fdSet owns descriptors and closes them once. It is separate from Node so that a node go-fuse discards (it
// registers only the first of two racing lookups of one object) closes its descriptors when collected.
type fdSet struct {
	mu     sync.Mutex
	fds    []int // protected by mu
	closed bool  // protected by mu
}

func (s *fdSet) add(fd int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		unix.Close(fd)
		return
	}
	s.fds = append(s.fds, fd)
}

func (s *fdSet) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	s.closed = true
	for _, fd := range s.fds {
		unix.Close(fd)
	}
	s.fds = nil
}

// Node is a file or directory of the merged view. Its state is split by kind: what every node has (here), a
// directory's layer stack (dirState), a non-directory's object (fileState) and the bookkeeping of its opens
// (openState); the embedded structs' fields are used as the node's own. Its locks are taken in the order doc.go's
// "Locking" gives: openMu, then copyMu, then mu, with the rules between nodes stated there. Its identity (number,
// generation, staleness) is described in identity.go.
type Node struct {
	fs.Inode

	root *Root // immutable

	// stale says that the node gave its name up to a new node (see identity.go): it refuses opens and lookups.
	// Set once (markStale), never cleared; atomic, since lookups must not wait for openMu, which an open holds
	// across its copy-up.
	stale atomic.Bool

	openState

	copyMu sync.Mutex // serialises copy-ups of this node

	mu sync.RWMutex // protects dirState and fileState
	dirState
	fileState

	owned *fdSet // descriptors of dirs (and anon); immutable pointer
}

// openState is the bookkeeping of a node's live opens, which keeps one I/O mode per inode for the kernel (see
// registerLocked). All of it is protected by openMu.
type openState struct {
	openMu      sync.Mutex // serialises opens and releases with the passthrough bookkeeping and the copy-ups opens make
	ptOpens     int        // live passthrough opens
	cachedOpens int        // live opens through the page cache
	ptObj       devIno     // the object live passthrough opens use (set by the first, cleared with the last)
	pagesStale  bool       // a passthrough writer may have left the kernel's cached pages stale
}

// dirState is a directory node's place in the layers. Protected by Node.mu.
type dirState struct {
	dirs     []layerDir // the layer stack, topmost first; nil once forgotten
	metas    []metaDir  // unionfs-fuse marker directories, topmost first
	redirect string     // the absolute lower path the directory was renamed from, or ""
}

// fileState is a non-directory node's object. Protected by Node.mu, but for dataAt, which is immutable.
type fileState struct {
	layer   *Layer   // the layer holding the object
	obj     devIno   // the object's identity in layer
	data    *Layer   // metadata-only copies: the lower layer holding the data
	dataObj devIno   // metadata-only copies: the data object's identity
	dataAt  *dataLoc // metadata-only copies whose data is not at their own name (redirect); immutable
	// anon is an O_PATH-like descriptor of the upper object when it may have no name or its name may lag behind
	// (see keepByDescriptor): made with O_TMPFILE, unlinked or renamed while the kernel knew the node; closed
	// after OnForget; -1 if none.
	anon    int
	handles map[*file]bool // open files, re-pointed when the object is copied up
}

var (
	_ fs.NodeLookuper       = (*Node)(nil)
	_ fs.NodeGetattrer      = (*Node)(nil)
	_ fs.NodeReadlinker     = (*Node)(nil)
	_ fs.NodeStatfser       = (*Node)(nil)
	_ fs.NodeOpener         = (*Node)(nil)
	_ fs.NodeOpendirHandler = (*Node)(nil)
	_ fs.NodeGetxattrer     = (*Node)(nil)
	_ fs.NodeListxattrer    = (*Node)(nil)
	_ fs.NodeOnForgetter    = (*Node)(nil)
	_ fs.NodeAccesser       = (*Node)(nil)
	_ fs.NodeCreater        = (*Node)(nil)
	_ fs.NodeTmpfiler       = (*Node)(nil)
	_ fs.NodeMkdirer        = (*Node)(nil)
	_ fs.NodeMknoder        = (*Node)(nil)
	_ fs.NodeSymlinker      = (*Node)(nil)
	_ fs.NodeLinker         = (*Node)(nil)
	_ fs.NodeUnlinker       = (*Node)(nil)
	_ fs.NodeRmdirer        = (*Node)(nil)
	_ fs.NodeRenamer        = (*Node)(nil)
	_ fs.NodeSetattrer      = (*Node)(nil)
	_ fs.NodeSetxattrer     = (*Node)(nil)
	_ fs.NodeRemovexattrer  = (*Node)(nil)
	_ fs.NodeCopyFileRanger = (*Node)(nil)
)

// newDirNode makes a node for a directory with the given layer stack and marker directories, whose descriptors
// it takes over.
func (r *Root) newDirNode(dirs []layerDir, metas []metaDir, redirect string) *Node {
	n := &Node{root: r, dirState: dirState{dirs: dirs, metas: metas, redirect: redirect}, fileState: fileState{anon: -1},
		owned: &fdSet{}}
	for _, d := range dirs {
		if d.fd >= 0 {
			n.owned.fds = append(n.owned.fds, d.fd)
		}
	}
	for _, m := range metas {
		n.owned.fds = append(n.owned.fds, m.fd)
	}
	// A node that go-fuse never registers is never forgotten: close its descriptors when it is collected.
	runtime.AddCleanup(n, func(s *fdSet) { s.close() }, n.owned)
	return n
}

// newFileNode makes a node for the non-directory st living in layer l.
func (r *Root) newFileNode(l *Layer, st *unix.Stat_t) *Node {
	return &Node{root: r, fileState: fileState{layer: l, obj: devIno{st.Dev, st.Ino}, anon: -1}}
}

// unionNode gives access to the Node embedded in a Root or used directly.
func (n *Node) unionNode() *Node { return n }

// asNode returns the union node behind a go-fuse inode, or nil.
func asNode(i *fs.Inode) *Node {
	if i == nil {
		return nil
	}
	if un, ok := i.Operations().(interface{ unionNode() *Node }); ok {
		return un.unionNode()
	}
	return nil
}

// isDir reports whether n is a directory.
func (n *Node) isDir() bool {
	return n.StableAttr().Mode == syscall.S_IFDIR
}

// isRegular reports whether n is a regular file.
func (n *Node) isRegular() bool {
	return n.StableAttr().Mode == syscall.S_IFREG
}

// stack returns a snapshot of a directory's layer stack; nil once the node is forgotten.
func (n *Node) stack() []layerDir {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.dirs
}

// view returns a snapshot of a directory's layer and marker directories; ok is false once the node is forgotten.
func (n *Node) view() (v dirView, ok bool) {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return dirView{dirs: n.dirs, metas: n.metas}, n.dirs != nil
}

// holder returns the layer holding a non-directory.
func (n *Node) holder() *Layer {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.layer
}

// parentNode returns n's parent directory node and n's name in it, or nil when n is no longer linked into the
// tree (deleted while the kernel still knew it).
func (n *Node) parentNode() (*Node, string) {
	name, p := n.Parent()
	return asNode(p), name
}

// isObject reports whether st is the layer object the non-directory n stands for. A name is looked up again for
// every operation, so a concurrent rename can make it name another object; operations check and fail with ESTALE
// rather than act on the wrong one (the kernel then looks the name up again and retries once).
func (n *Node) isObject(st *unix.Stat_t) bool {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.obj == devIno{st.Dev, st.Ino}
}

// dirIn returns the directory of stack that belongs to layer l.
func dirIn(stack []layerDir, l *Layer) (layerDir, bool) {
	for _, d := range stack {
		if d.layer == l {
			return d, d.fd >= 0
		}
	}
	return layerDir{}, false
}

// location returns the directory descriptor and name through which the non-directory n is reached in its layer.
// It fails with ESTALE when n is no longer linked into the tree (replaced or deleted while the kernel still knew
// it) or its parent no longer has a directory in n's layer. The name may have been taken over by another object
// meanwhile: callers check with isObject.
func (n *Node) location() (dirfd int, name string, errno syscall.Errno) {
	return n.locationIn(n.holder())
}

// dataLoc is where the data of a redirected metadata-only copy is: a directory (owned by the node) and a name
// in a lower layer.
type dataLoc struct {
	layer *Layer
	fd    int
	name  string
}

// locationIn is location for the object of n in layer l (for a metadata-only copy: its data in a lower layer).
// An object with no name, or that may have lost it (see anon), is reached by its descriptor and an empty name.
func (n *Node) locationIn(l *Layer) (dirfd int, name string, errno syscall.Errno) {
	if at := n.dataAt; at != nil && l == at.layer {
		return at.fd, at.name, 0
	}
	n.mu.RLock()
	anon := n.anon
	n.mu.RUnlock()
	if anon >= 0 && l.IsUpper() {
		return anon, "", 0
	}
	p, name := n.parentNode()
	if p == nil {
		return -1, "", syscall.ESTALE
	}
	d, ok := dirIn(p.stack(), l)
	if !ok {
		return -1, "", syscall.ESTALE
	}
	return d.fd, name, 0
}

// movedRetries bounds how often an operation is tried again because its node moved: a rename moves a node once
// per request that renames it, so two tries more only fail when renames of the same file keep racing the
// operation, and then it fails as the operation would have on a name that went away.
const movedRetries = 2

// tryAgainMoved reports whether an operation on the non-directory n that failed at dirfd and name, on its
// attempt'th try (0 the first), should be tried again where n is now: a rename or unlink in the union moved n, or
// gave it a descriptor first (see keepByDescriptor), since the caller looked, and the tries are not used up. The
// operation must be one whose repetition is harmless (a lookup of the object, a change to an absolute value).
func (n *Node) tryAgainMoved(attempt int, dirfd int, name string) bool {
	if attempt >= movedRetries {
		return false
	}
	d, nm, errno := n.location()
	return errno == 0 && (d != dirfd || nm != name)
}

// statSelf stats the object n stands for: the topmost directory of its stack, or the non-directory in its layer.
// For a metadata-only copy, the block count is the data's.
func (n *Node) statSelf(st *unix.Stat_t) (merged bool, errno syscall.Errno) {
	if n.isDir() {
		dirs := n.stack()
		if dirs == nil {
			return false, syscall.ESTALE
		}
		top := dirs[0]
		if top.fd < 0 {
			*st = *top.st
		} else if err := sysx.Fstat(top.fd, st); err != nil {
			return false, n.staleDir(toErrno(err))
		}
		return len(dirs) > 1, 0
	}
	n.mu.RLock()
	anon, data := n.anon, n.data
	n.mu.RUnlock()
	if anon >= 0 {
		return false, toErrno(sysx.Fstat(anon, st))
	}
	for attempt := 0; ; attempt++ {
		dirfd, name, errno := n.location()
		if errno != 0 {
			return false, errno
		}
		err := sysx.Fstatat(dirfd, name, st)
		if err == nil && n.isObject(st) {
			break
		}
		if (err == nil || err == syscall.ENOENT) && n.tryAgainMoved(attempt, dirfd, name) {
			continue // a rename or unlink took the name meanwhile: see keepByDescriptor
		}
		if err != nil {
			return false, n.parentStale(toErrno(err))
		}
		return false, syscall.ESTALE
	}
	if data != nil {
		var dst unix.Stat_t
		if dfd, dname, errno := n.locationIn(data); errno == 0 && sysx.Fstatat(dfd, dname, &dst) == nil {
			st.Blocks = dst.Blocks
		}
	}
	return false, 0
}

// fillAttr fills out from st for the union object with inode number ino. merged says whether it is a directory
// merged from several layers.
func fillAttr(out *fuse.Attr, st *unix.Stat_t, ino uint64, merged bool) {
	out.Ino = ino
	out.Size = uint64(st.Size)
	out.Blocks = uint64(st.Blocks)
	out.Atime, out.Atimensec = uint64(st.Atim.Sec), uint32(st.Atim.Nsec)
	out.Mtime, out.Mtimensec = uint64(st.Mtim.Sec), uint32(st.Mtim.Nsec)
	out.Ctime, out.Ctimensec = uint64(st.Ctim.Sec), uint32(st.Ctim.Nsec)
	out.Mode = st.Mode
	out.Nlink = uint32(st.Nlink)
	out.Uid, out.Gid = st.Uid, st.Gid
	out.Rdev = uint32(st.Rdev)
	out.Blksize = uint32(st.Blksize)
	if merged {
		// overlayfs reports 1 for merged directories: counting subdirectories of every layer is not worth it,
		// and 1 tells find(1) and friends not to rely on the link count.
		out.Nlink = 1
	}
}

// Getattr - FUSE call. Reports the attributes of the topmost object, with the union's inode number.
func (n *Node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.root.stats.count(opGetattr)
	// The object behind the name has the attributes. go-fuse passes some open file of the node even when the
	// caller used a path, and an open file may be on another object (the lower data of a metadata-only copy, the
	// lower file a passthrough reader keeps), so the file is only asked when the node has no name any more
	// (deleted while open, or replaced by a newer node).
	var st unix.Stat_t
	merged, errno := n.statSelf(&st)
	if errno == syscall.ESTALE {
		if fh := asFile(f); fh != nil {
			errno = toErrno(fh.fstat(&st))
		}
	}
	if errno != 0 {
		return errno
	}
	fillAttr(&out.Attr, &st, n.StableAttr().Ino, merged)
	return 0
}

// Access - FUSE call. The mount uses default_permissions, so the kernel checks permissions itself and never sends
// ACCESS; were it sent (a mount without default_permissions), the answer is the kernel's own check on the
// attributes, which go-fuse's default would only approximate.
func (n *Node) Access(ctx context.Context, mask uint32) syscall.Errno {
	return 0
}

// Readlink - FUSE call.
func (n *Node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	n.root.stats.count(opReadlink)
	var st unix.Stat_t
	if _, errno := n.statSelf(&st); errno != 0 {
		return nil, errno
	}
	dirfd, name, errno := n.location()
	if errno != 0 {
		return nil, errno
	}
	target, err := sysx.Readlinkat(dirfd, name)
	if err != nil {
		return nil, toErrno(err)
	}
	return target, 0
}

// Statfs - FUSE call. Reports the upper layer's filesystem: its free space is what new files and copies can use.
func (n *Node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	n.root.stats.count(opStatfs)
	var st unix.Statfs_t
	if err := unix.Fstatfs(n.root.layers.Upper().fd, &st); err != nil {
		return toErrno(err)
	}
	out.Blocks = st.Blocks
	out.Bfree = st.Bfree
	out.Bavail = st.Bavail
	out.Files = st.Files
	out.Ffree = st.Ffree
	out.Bsize = uint32(st.Bsize)
	out.NameLen = uint32(st.Namelen)
	out.Frsize = uint32(st.Frsize)
	return 0
}
