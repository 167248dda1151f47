package unionfs

import (
	"context"
	"hash/fnv"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// probe is one layer's contribution to a name of the merged view.
type probe struct {
	layer    *Layer
	dirfd    int              // the directory holding the object in that layer
	name     string           // the object's name there (another name than the union's under a redirect)
	st       unix.Stat_t      // the object's attributes
	opacity  whiteout.Opacity // directories with a layer below: their opacity
	redirect string           // directories with a layer below: their redirect xattr, as found
	origin   *devIno          // upper non-directories copied up: the identity of the lower original
	metacopy bool             // regular files that are metadata-only copies (in the upper layer, or in a lower layer that was the upper one of an earlier mount)
}

// resolution is what a name means in the merged view.
type resolution struct {
	found []probe // topmost first: one object for a non-directory, one per layer directory for a directory
	data  *probe  // for a metadata-only copy: the lower file holding the data
	// dataMoved says that data is not at the copy's own name: an overlay redirect on the copy (kernel overlayfs
	// writes one when it renames a metadata-only copy) names it.
	dataMoved bool
	whiteout  *Layer    // the layer whose marker ended the search, if one did
	metas     []metaDir // directories: their unionfs-fuse marker directories; released by close unless taken
	tmpfds    []int     // descriptors opened to follow absolute redirects; released by close
}

// close releases the descriptors res opened. The probes' dirfd fields are invalid afterwards.
func (res *resolution) close() {
	for _, fd := range res.tmpfds {
		unix.Close(fd)
	}
	res.tmpfds = nil
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

// exists reports whether the name resolved to anything.
func (res *resolution) exists() bool { return len(res.found) > 0 }

// isDir reports whether the name resolved to a directory.
func (res *resolution) isDir() bool {
	return len(res.found) > 0 && res.found[0].st.Mode&unix.S_IFMT == unix.S_IFDIR
}

// resolve looks name up in the directory whose view is v, with overlayfs's rules (see the package documentation)
// and every marker format. A directory's redirect makes the layers below it be searched at the redirect's path
// instead (absolute redirects from each layer's root, as overlayfs does even when the parent has no directory in
// those layers). The caller must close the result.
func (r *Root) resolve(v dirView, name string) (*resolution, syscall.Errno) {
	parent := v.dirs
	res := &resolution{}
	target := name       // the name to look for in the next layer
	var absPath []string // set while following an absolute redirect
	pi := 0
	layers := r.layers.all
	for li := 0; li < len(layers); li++ {
		l := layers[li]
		var dirfd int
		meta := -1
		var pdOpacity whiteout.Opacity
		below := false // whether layers below this one can contribute
		if absPath != nil {
			fd, ok := r.walkLower(l, absPath[:len(absPath)-1], res)
			if !ok {
				continue
			}
			dirfd, target = fd, absPath[len(absPath)-1]
			below = li < len(layers)-1
		} else {
			meta = metaIn(v.metas, l)
			for pi < len(parent) && parent[pi].layer.Index < l.Index {
				pi++
			}
			if pi >= len(parent) || parent[pi].layer != l || parent[pi].fd < 0 {
				// The layer has no such directory, but its marker tree may white the name out.
				if target == name && hasMarker(l, -1, meta, target) {
					res.whiteout = l
					break
				}
				continue
			}
			pd := parent[pi]
			dirfd, pdOpacity = pd.fd, pd.opacity
			below = pi < len(parent)-1
		}
		p := probe{layer: l, dirfd: dirfd, name: target}
		if l.IsUpper() {
			r.stats.upperLookups.Add(1)
		} else {
			r.stats.lowerLookups.Add(1)
		}
		err := sysx.Fstatat(dirfd, target, &p.st)
		if err == syscall.ENOENT || err == syscall.ENOTDIR {
			if hasMarker(l, dirfd, meta, target) {
				res.whiteout = l
				break
			}
			continue
		}
		if err != nil {
			res.close()
			return nil, r.layerErrno(l, "lookup", target, err)
		}
		if whiteout.IsOverlayWhiteout(&p.st) ||
			pdOpacity == whiteout.Xwhiteouts && whiteout.IsXwhiteout(dirfd, target, &p.st) {
			res.whiteout = l
			break
		}
		isDir := p.st.Mode&unix.S_IFMT == unix.S_IFDIR
		// A lower layer may be the upper layer of an earlier mount (layers rotated down): its regular files
		// may be metadata-only copies too, whose data lies further down. (Their origin marks name layers of
		// that mount, not of this one: only the upper layer's are read.)
		if !isDir && !l.IsUpper() && li < len(layers)-1 && p.st.Mode&unix.S_IFMT == unix.S_IFREG {
			r.readMetacopyMark(&p)
		}
		if len(res.found) > 0 && res.found[0].metacopy {
			// The data of a metadata-only copy: the next non-directory below it that is not one itself.
			if isDir {
				break
			}
			if !p.metacopy {
				res.data = &p
				break
			}
			target, absPath = r.followDataRedirect(dirfd, target, absPath, res)
			continue
		}
		if len(res.found) > 0 && !isDir {
			break // a non-directory below a directory is hidden
		}
		if !isDir {
			if l.IsUpper() {
				r.readCopyUpMarks(&p)
			}
			res.found = append(res.found, p)
			if p.metacopy {
				target, absPath = r.followDataRedirect(dirfd, target, absPath, res)
				continue
			}
			break
		}
		if li < len(layers)-1 {
			// A redirect leads to the lower layers even where the parent has no directory in them (an
			// absolute one is looked up from each layer's root); opacity matters where something lies below.
			p.redirect = r.readRedirect(dirfd, target)
			if below || p.redirect != "" {
				op, err := whiteout.DirOpacity(dirfd, target)
				if err != nil && err != syscall.EXDEV {
					res.close()
					return nil, r.layerErrno(l, "reading opacity of", target, err)
				}
				if op != whiteout.Opaque && hasMarker(l, dirfd, meta, target) {
					op = whiteout.Opaque // aufs and unionfs-fuse: a marker beside a directory makes it opaque
				}
				p.opacity = op
			}
			if p.opacity == whiteout.Opaque {
				p.redirect = ""
			}
		}
		res.found = append(res.found, p)
		if p.opacity == whiteout.Opaque {
			break
		}
		switch {
		case strings.HasPrefix(p.redirect, "/"):
			absPath, _ = whiteout.SplitRedirect(p.redirect)
			if len(absPath) == 0 {
				absPath = nil // a redirect to the root: ignore it
			}
		case p.redirect != "" && sysx.CheckName(p.redirect) == nil:
			target = p.redirect
		}
	}
	if len(res.found) > 0 && res.found[0].metacopy && res.data == nil {
		// The data of a metadata-only copy is gone from the lower layers: show the (empty) upper file rather
		// than fail every access; `check` reports it.
		res.found[0].metacopy = false
	}
	if res.isDir() {
		for _, m := range v.metas {
			if fd, err := sysx.OpenDir(m.fd, name); err == nil {
				res.metas = append(res.metas, metaDir{layer: m.layer, fd: fd})
			}
		}
	}
	return res, 0
}

// metaIn returns the marker directory of layer l in metas, or -1.
func metaIn(metas []metaDir, l *Layer) int {
	for _, m := range metas {
		if m.layer == l {
			return m.fd
		}
	}
	return -1
}

// hasMarker reports whether layer l whites out name in the directory dirfd (-1 if the layer has no such
// directory) or its marker directory meta (-1 if none) with an aufs or unionfs-fuse marker (overlay whiteouts are
// the name itself).
func hasMarker(l *Layer, dirfd, meta int, name string) bool {
	if dirfd >= 0 && l.aufs && whiteout.HasAufsWhiteout(dirfd, name) {
		return true
	}
	if meta >= 0 && len(name)+len(whiteout.UnionfsHiddenSuffix) <= 255 {
		var st unix.Stat_t
		return sysx.Fstatat(meta, name+whiteout.UnionfsHiddenSuffix, &st) == nil
	}
	return false
}

// walkLower opens the directory at the path comps from the root of lower layer l, remembering the descriptor in
// res; ok is false if l has no directory there.
func (r *Root) walkLower(l *Layer, comps []string, res *resolution) (int, bool) {
	fd, err := sysx.OpenDir(l.fd, "")
	if err != nil {
		return -1, false
	}
	for _, c := range comps {
		next, err := sysx.OpenDir(fd, c)
		unix.Close(fd)
		if err != nil {
			return -1, false
		}
		fd = next
	}
	res.tmpfds = append(res.tmpfds, fd)
	return fd, true
}

// readRedirect returns the redirect xattr of the directory name in dirfd, or "".
func (r *Root) readRedirect(dirfd int, name string) string {
	for _, attr := range []string{whiteout.OverlayRedirectXattr, r.priv + "redirect"} {
		if v, err := sysx.GetxattrAll(dirfd, name, attr); err == nil && len(v) > 0 {
			return string(v)
		}
	}
	return ""
}

// readCopyUpMarks reads the marks the union leaves on upper non-directories it copied up: the origin and whether
// the copy is metadata-only.
func (r *Root) readCopyUpMarks(p *probe) {
	// Most upper files have no xattrs at all: one listxattr says so, instead of a getxattr per mark.
	if n, err := sysx.Listxattrat(p.dirfd, p.name, nil); err == nil && n == 0 {
		return
	}
	if v, err := sysx.GetxattrAll(p.dirfd, p.name, r.originXattr()); err == nil {
		p.origin = r.parseOrigin(string(v))
	}
	if p.st.Mode&unix.S_IFMT == unix.S_IFREG {
		r.readMetacopyMark(p)
	}
}

// readMetacopyMark sets p.metacopy if the regular file p is a metadata-only copy.
func (r *Root) readMetacopyMark(p *probe) {
	if _, err := sysx.Getxattrat(p.dirfd, p.name, r.metacopyXattr(), nil); err == nil {
		p.metacopy = true
	}
}

// followDataRedirect returns where the layers below a metadata-only copy (name in dirfd) hold its data: as its
// redirect says (kernel overlayfs writes one when it renames such a copy), else under the same name. It returns
// the name to look for next and the absolute path to walk in each layer (nil if none), given the current ones.
func (r *Root) followDataRedirect(dirfd int, name string, absPath []string, res *resolution) (string, []string) {
	switch rd := r.readRedirect(dirfd, name); {
	case strings.HasPrefix(rd, "/"):
		if comps, _ := whiteout.SplitRedirect(rd); len(comps) > 0 {
			res.dataMoved = true
			return name, comps
		}
	case rd != "" && sysx.CheckName(rd) == nil:
		res.dataMoved = true
		if absPath != nil { // a name beside the copy, on the path being walked
			return rd, append(append([]string{}, absPath[:len(absPath)-1]...), rd)
		}
		return rd, nil
	}
	return name, absPath
}

// originXattr and metacopyXattr name the union's marks in its private namespace.
func (r *Root) originXattr() string   { return r.priv + "ltsp.origin" }
func (r *Root) metacopyXattr() string { return r.priv + "metacopy" }

// redirectXattr names the redirect mark of a metadata-only copy whose data is under another name (see
// followDataRedirect), in the union's private namespace.
func (r *Root) redirectXattr() string { return r.priv + "redirect" }

// formatOrigin encodes the identity of a lower object as the origin mark of its copy: the lower layer's index
// and the inode number, which stay the same across mounts of the same layers.
func (r *Root) formatOrigin(l *Layer, ino uint64) []byte {
	return []byte(strconv.Itoa(l.Index) + ":" + strconv.FormatUint(ino, 10))
}

// parseOrigin decodes an origin mark; nil if it is malformed or names no lower layer of this union.
func (r *Root) parseOrigin(v string) *devIno {
	idx, ino, ok := strings.Cut(v, ":")
	if !ok {
		return nil
	}
	i, err1 := strconv.Atoi(idx)
	n, err2 := strconv.ParseUint(ino, 10, 64)
	if err1 != nil || err2 != nil || i < 1 || i >= len(r.layers.all) {
		return nil
	}
	return &devIno{r.layers.all[i].dev, n}
}

// identity returns the object whose (device, inode) pair names the union object res found: for a directory that
// a lower layer has, the topmost lower directory, so that the number survives a copy of the directory into the
// upper layer; for a copied-up non-directory, its lower original; otherwise the topmost object.
func (res *resolution) identity() devIno {
	top := &res.found[0]
	if top.origin != nil {
		return *top.origin
	}
	if top.st.Mode&unix.S_IFMT == unix.S_IFDIR {
		for _, p := range res.found {
			if !p.layer.IsUpper() {
				return devIno{p.st.Dev, p.st.Ino}
			}
		}
	}
	return devIno{top.st.Dev, top.st.Ino}
}

// stackIdentity is identity for an open directory stack.
func stackIdentity(dirs []layerDir) devIno {
	for _, d := range dirs {
		if !d.layer.IsUpper() {
			return devIno{d.dev, d.ino}
		}
	}
	return devIno{dirs[0].dev, dirs[0].ino}
}

// generation returns the go-fuse generation for a name. Objects are identified by (inode number, generation),
// and hard links share a node; but a lower file's hard links split when one of them is copied up (as in
// overlayfs without index), so each name of a multiply linked lower file gets a node of its own, told apart by
// a generation derived from its name.
func generation(parent *Node, name string, top *probe) uint64 {
	if top.layer.IsUpper() || top.st.Nlink <= 1 || top.st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return 1
	}
	h := fnv.New64a()
	h.Write([]byte(strconv.FormatUint(parent.StableAttr().Ino, 16) + "/" + name))
	return 2 + h.Sum64()%(1<<62)
}

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
	if !res.exists() {
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
	top := &res.found[0]
	mode := top.st.Mode & unix.S_IFMT
	isDir := mode == unix.S_IFDIR
	ino := r.inos.ino(res.identity())
	merged := isDir && len(res.found) > 1
	st := top.st
	if res.data != nil {
		st.Blocks = res.data.st.Blocks
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
		dirs := make([]layerDir, 0, len(res.found))
		for _, p := range res.found {
			d := layerDir{layer: p.layer, dev: p.st.Dev, ino: p.st.Ino, opacity: p.opacity}
			fd, err := sysx.OpenDir(p.dirfd, p.name)
			switch {
			case err == syscall.EXDEV:
				st := p.st
				d.fd, d.st = -1, &st
			case err != nil:
				closeDirs(dirs)
				if err == syscall.ENOTDIR || err == syscall.ELOOP {
					err = syscall.ESTALE // replaced behind the daemon's back
				}
				return nil, r.layerErrno(p.layer, "opening directory", p.name, err)
			default:
				d.fd = fd
			}
			dirs = append(dirs, d)
		}
		child = r.newDirNode(dirs, res.takeMetas(), r.absRedirect(parent, res))
	} else {
		child = r.newFileNode(top.layer, &top.st)
		if res.data != nil {
			child.data, child.dataObj = res.data.layer, devIno{res.data.st.Dev, res.data.st.Ino}
			if res.dataMoved {
				fd, err := sysx.OpenDir(res.data.dirfd, "")
				if err != nil {
					return nil, r.layerErrno(res.data.layer, "opening directory of", res.data.name, err)
				}
				child.dataAt = &dataLoc{layer: res.data.layer, fd: fd, name: res.data.name}
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
	if len(res.found) == 0 || !res.found[0].layer.IsUpper() {
		return ""
	}
	switch p := res.found[0]; {
	case p.redirect == "":
	case strings.HasPrefix(p.redirect, "/"):
		comps, _ := whiteout.SplitRedirect(p.redirect)
		return "/" + strings.Join(comps, "/")
	default:
		return joinPath(parent.lowerPath(), p.redirect)
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

// afterStale returns gen, or a generation after those of the stale nodes of inode number ino still registered.
func (r *Root) afterStale(ino, gen uint64) uint64 {
	r.staleMu.Lock()
	defer r.staleMu.Unlock()
	if g, ok := r.staleGens[ino]; ok && g >= gen {
		return g + 1
	}
	return gen
}

// markStale records that n gives its name up to a new node: lookups of its object make nodes of a later
// generation while n lives. It reports whether n was not stale before.
func (n *Node) markStale() bool {
	if !n.stale.CompareAndSwap(false, true) {
		return false
	}
	id := n.StableAttr()
	r := n.root
	r.staleMu.Lock()
	defer r.staleMu.Unlock()
	if r.staleGens == nil {
		r.staleGens = make(map[uint64]uint64)
	}
	if g := r.staleGens[id.Ino]; g < id.Gen {
		r.staleGens[id.Ino] = id.Gen
	}
	return true
}

// forgetStale drops the record of a stale node the kernel has forgotten.
func (n *Node) forgetStale() {
	id := n.StableAttr()
	r := n.root
	r.staleMu.Lock()
	defer r.staleMu.Unlock()
	if r.staleGens[id.Ino] == id.Gen {
		delete(r.staleGens, id.Ino)
	}
}

// staleDir handles an errno from an operation on directory n's layer descriptors: ESTALE means one of them no
// longer reaches its directory (an NFS server replaced it), for good. n is marked stale and the kernel told to
// forget its name, so that the next lookup of the name (the kernel retries a lookup that failed with ESTALE
// once, by name) makes a new node with fresh descriptors. It returns errno.
func (n *Node) staleDir(errno syscall.Errno) syscall.Errno {
	if errno != syscall.ESTALE || n.IsRoot() {
		return errno
	}
	if p, name := n.parentNode(); n.markStale() && p != nil {
		// Not from within the request: the kernel may hold locks the notification needs.
		go p.NotifyEntry(name)
	}
	return errno
}

// parentStale is staleDir for the parent of the non-directory n, through whose layer descriptor n is reached.
func (n *Node) parentStale(errno syscall.Errno) syscall.Errno {
	if errno == syscall.ESTALE {
		if p, _ := n.parentNode(); p != nil {
			p.staleDir(errno)
		}
	}
	return errno
}

// isStale reports whether n gave its name up to a new node (see Open).
func (n *Node) isStale() bool {
	return n.stale.Load()
}

// live reports whether n can still serve requests: a forgotten directory has closed its descriptors.
func (n *Node) live() bool {
	if n.owned == nil {
		return true
	}
	n.owned.mu.Lock()
	defer n.owned.mu.Unlock()
	return !n.owned.closed
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
