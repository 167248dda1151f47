package unionfs

import (
	"context"
	"runtime"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/stack"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// resolution is what a name means in the merged view (see package stack), with the marker directories of a
// directory and the origin of a copied-up file.
type resolution struct {
	stack.Result
	origin *devIno   // a copied-up non-directory: the identity of its lower original, if its origin mark names one
	metas  []metaDir // directories: their unionfs-fuse marker directories; released by close unless taken
}

// close releases the descriptors res holds. The objects' Dirfd fields are invalid afterwards.
func (res *resolution) close() {
	res.Close()
	for _, m := range res.metas {
		unix.Close(m.fd)
	}
	res.metas = nil
}

// takeMetas hands the marker directories to the caller, who closes them.
func (res *resolution) takeMetas() []metaDir {
	m := res.metas
	res.metas = nil
	return m
}

// newReader returns the reader of r's layers (see package stack): the union's own namespace for its marks, its
// counters for the layer directories it reads.
func (r *Root) newReader() *stack.Reader {
	rd := &stack.Reader{
		Redirects:  []string{r.redirectXattr()},
		Metacopies: []string{r.metacopyXattr()},
		Origin:     r.originXattr(),
		Probed: func(li int) {
			if li == 0 {
				r.stats.upperLookups.Add(1)
			} else {
				r.stats.lowerLookups.Add(1)
			}
		},
		Listed: func(int) { r.stats.layerReaddirs.Add(1) },
	}
	for _, l := range r.layers.all {
		rd.Layers = append(rd.Layers, stack.Layer{Root: l.fd, Aufs: l.aufs})
	}
	return rd
}

// resolve looks name up in the directory whose view is v (see package stack for the rules) and opens, for a
// directory, its marker directories. The caller must close the result.
func (r *Root) resolve(v dirView, name string) (*resolution, syscall.Errno) {
	res := &resolution{}
	if err := r.reader.Lookup(v, name, &res.Result); err != nil {
		res.close()
		return nil, r.readErrno(err)
	}
	if res.Kind() == stack.KindFile && res.Found[0].Origin != "" {
		res.origin = r.parseOrigin(res.Found[0].Origin)
	}
	if res.IsDir() {
		for _, m := range v.metas {
			if fd, err := sysx.OpenDir(m.fd, name); err == nil {
				res.metas = append(res.metas, metaDir{layer: m.layer, fd: fd})
			}
		}
	}
	return res, 0
}

// readErrno converts an error of package stack into the reply, logged with its layer.
func (r *Root) readErrno(err error) syscall.Errno {
	if e, ok := err.(*stack.Error); ok {
		return r.layerErrno(r.layers.all[e.Layer], e.Op, e.Name, e.Err)
	}
	return toErrno(err)
}

// layerOf returns the layer of an object lookup found.
func (r *Root) layerOf(o *stack.Object) *Layer { return r.layers.all[o.Layer] }

// metaIn returns the marker directory of layer l in metas, or -1.
func metaIn(metas []metaDir, l *Layer) int {
	for _, m := range metas {
		if m.layer == l {
			return m.fd
		}
	}
	return -1
}

// originXattr and metacopyXattr name the union's marks in its private namespace.
func (r *Root) originXattr() string   { return r.priv + "ltsp.origin" }
func (r *Root) metacopyXattr() string { return r.priv + "metacopy" }

// redirectXattr names the redirect mark of a metadata-only copy whose data is under another name (see
// followDataRedirect), in the union's private namespace.
func (r *Root) redirectXattr() string { return r.priv + "redirect" }

// isHidden reports whether name in directory n is a marker or meta name that the merged view never shows.
func (n *Node) isHidden(name string) bool {
	if whiteout.IsMarkerName(name) {
		return true
	}
	return n.IsRoot() && whiteout.IsRootMetaName(name)
}

// Lookup - FUSE call. Finds name in the layers of directory n (see resolve) and returns its node: the existing
// one when the kernel revalidates a name it knows, so that node ids of directories that carry mounts (/proc, /dev
// on a root filesystem) never change.
func (n *Node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.root.stats.count(opLookup)
	if n.isHidden(name) {
		return nil, syscall.ENOENT
	}
	res, errno := n.resolve(name)
	if errno != 0 {
		return nil, errno
	}
	defer res.close()
	if !res.Exists() {
		return nil, syscall.ENOENT
	}
	return n.root.childFromResolution(ctx, n, name, res, out)
}

// resolve looks name up in directory n (see Root.resolve).
func (n *Node) resolve(name string) (*resolution, syscall.Errno) {
	v, ok := n.view()
	if !ok {
		return nil, syscall.ESTALE
	}
	res, errno := n.root.resolve(v, name)
	return res, n.staleDir(errno)
}

// resolveBelow looks name up in directory n as if the upper layer held nothing: what would show once the upper
// object of that name is gone.
func (n *Node) resolveBelow(name string) (*resolution, syscall.Errno) {
	v, ok := n.view()
	if !ok {
		return nil, syscall.ESTALE
	}
	return n.root.resolve(v.below(), name)
}

// childFromResolution returns the node for what name in parent resolved to, reusing parent's existing child when
// it is the same object, and fills out.
func (r *Root) childFromResolution(ctx context.Context, parent *Node, name string, res *resolution, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	top := &res.Found[0]
	mode := top.Stat.Mode & unix.S_IFMT
	isDir := mode == unix.S_IFDIR
	ino := r.inos.ino(res.identity())
	merged := isDir && len(res.Found) > 1
	st := top.Stat
	if res.Data != nil {
		st.Blocks = res.Data.Stat.Blocks
	}

	if ch := parent.GetChild(name); ch != nil {
		id := ch.StableAttr()
		if cn := asNode(ch); cn != nil && id.Ino == ino && id.Mode == uint32(mode) && cn.live() && !cn.isStale() {
			fillAttr(&out.Attr, &st, ino, merged)
			return ch, 0
		}
	}
	// A stale node (see Open) may still be registered with this number: the new node needs a later generation,
	// or go-fuse would hand the stale one back.
	gen := r.afterStale(ino, generation(parent, name, top))

	var child *Node
	if isDir {
		dirs := make([]layerDir, 0, len(res.Found))
		for _, p := range res.Found {
			d := layerDir{layer: r.layerOf(&p), dev: p.Stat.Dev, ino: p.Stat.Ino, opacity: p.Opacity}
			fd, err := sysx.OpenDir(p.Dirfd, p.Name)
			switch {
			case err == syscall.EXDEV:
				st := p.Stat
				d.fd, d.st = -1, &st
			case err != nil:
				closeDirs(dirs)
				if err == syscall.ENOTDIR || err == syscall.ELOOP {
					err = syscall.ESTALE // replaced behind the daemon's back
				}
				return nil, r.layerErrno(d.layer, "opening directory", p.Name, err)
			default:
				d.fd = fd
			}
			dirs = append(dirs, d)
		}
		child = r.newDirNode(dirs, res.takeMetas(), r.absRedirect(parent, res))
	} else {
		child = r.newFileNode(r.layerOf(top), &top.Stat)
		if d := res.Data; d != nil {
			child.data, child.dataObj = r.layerOf(d), devIno{d.Stat.Dev, d.Stat.Ino}
			if res.DataMoved {
				fd, err := sysx.OpenDir(d.Dirfd, "")
				if err != nil {
					return nil, r.layerErrno(r.layerOf(d), "opening directory of", d.Name, err)
				}
				child.dataAt = &dataLoc{layer: r.layerOf(d), fd: fd, name: d.Name}
				child.owned = &fdSet{fds: []int{fd}}
				runtime.AddCleanup(child, func(s *fdSet) { s.close() }, child.owned)
			}
		}
	}
	fillAttr(&out.Attr, &st, ino, merged)
	return parent.NewInode(ctx, child, fs.StableAttr{Mode: uint32(mode), Ino: ino, Gen: gen}), 0
}

// absRedirect returns the absolute lower path a directory resolution was redirected to, or "" if its lower
// directories are found by its own name.
func (r *Root) absRedirect(parent *Node, res *resolution) string {
	// Only the upper layer's redirect counts: a redirect in a lower layer (the upper layer of an earlier mount)
	// says where that layer's directory continues further down, and the lookup follows it there, but the
	// directory's content still starts at its own path in the topmost lower layer. A rename must record that
	// path, or the content of the layers in between is lost (overlayfs does the same).
	if len(res.Found) == 0 || res.Found[0].Layer != 0 {
		return ""
	}
	if rd := res.Found[0].Redirect; rd != "" {
		p, _ := stack.RedirectPath(parent.lowerPath(), rd)
		return p
	}
	return ""
}

// closeDirs closes the descriptors of a stack that was never handed to a node.
func closeDirs(dirs []layerDir) {
	for _, d := range dirs {
		if d.fd >= 0 {
			unix.Close(d.fd)
		}
	}
}

// lowerPath returns the absolute path at which directory n's content is found in the lower layers: its own
// path, unless it or an ancestor was renamed (redirected).
func (n *Node) lowerPath() string {
	if n.IsRoot() {
		return "/"
	}
	n.mu.RLock()
	redirect := n.redirect
	n.mu.RUnlock()
	if redirect != "" {
		return redirect
	}
	p, name := n.parentNode()
	if p == nil {
		return ""
	}
	return joinPath(p.lowerPath(), name)
}

// joinPath joins an absolute directory path and a name.
func joinPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}
