package unionfs

import (
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/cow"
	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Copy-up: bringing a lower object into the upper layer before it changes (package cow builds the copies).
//
// Copies are made from the root down: a directory's parent first, each under the node's copyMu, so two
// processes racing to change the same lower object cause one copy, which both then use. A node changes in place:
// its inode number, its kernel node and its open files stay.

// upperDirOf returns the whiteout.Dir of the upper directory ud of directory n.
func (n *Node) upperDirOf(ud layerDir) whiteout.Dir {
	return whiteout.Dir{Fd: ud.fd, Path: n.Path(nil), Root: n.root.layers.Upper().fd}
}

// ensureUpperDir makes sure directory n has a directory in the upper layer, copying it up (after its ancestors)
// if needed, and returns it.
func (n *Node) ensureUpperDir() (layerDir, syscall.Errno) {
	if up, ok := n.upperDir(); ok {
		return up, 0
	}
	if n.root.cfg.ReadOnly {
		return layerDir{}, syscall.EROFS
	}
	parent, name := n.parentNode()
	if parent == nil {
		return layerDir{}, syscall.ESTALE
	}
	pup, errno := parent.ensureUpperDir()
	if errno != 0 {
		return layerDir{}, errno
	}
	n.copyMu.Lock()
	defer n.copyMu.Unlock()
	if up, ok := n.upperDir(); ok {
		return up, 0 // another request copied it meanwhile
	}
	dirs := n.stack()
	if dirs == nil {
		return layerDir{}, syscall.ESTALE
	}
	top := dirs[0]
	src := cow.Source{Dirfd: top.fd, Name: ""}
	if top.fd < 0 {
		// A mount point inside a lower layer: copy what the mount shows of it.
		d, ok := dirIn(parent.stack(), top.layer)
		if !ok {
			return layerDir{}, syscall.ESTALE
		}
		src.Dirfd, src.Name = d.fd, name
	}
	if err := sysx.Fstatat(src.Dirfd, src.Name, &src.Stat); err != nil {
		return layerDir{}, n.root.layerErrno(top.layer, "stat", name, err)
	}
	defer keepTimes(pup.fd)() // before Build, which makes its temporary directory in pup
	s, err := cow.Build(src, pup.fd, cow.Options{Skip: whiteout.IsPrivateXattr})
	if err != nil {
		return layerDir{}, n.root.layerErrno(pup.layer, "copying up directory", name, err)
	}
	if err := s.Publish(name); err != nil {
		s.Discard()
		return layerDir{}, n.root.layerErrno(pup.layer, "copying up directory", name, err)
	}
	fd, err := sysx.OpenDir(pup.fd, name)
	if err != nil {
		return layerDir{}, n.root.layerErrno(pup.layer, "opening directory", name, err)
	}
	var st unix.Stat_t
	sysx.Fstat(fd, &st)
	up := layerDir{layer: pup.layer, fd: fd, dev: st.Dev, ino: st.Ino}
	n.owned.add(fd)
	n.root.stats.dirCopyUps.Add(1)
	n.mu.Lock()
	n.dirs = append([]layerDir{up}, n.dirs...)
	n.mu.Unlock()
	n.attrsChanged()
	return up, 0
}

// keepTimes returns a function that gives the directory dirfd back the access and modification times it has
// now. A copy-up links a copy into its parent's upper directory; like overlayfs, the union does not let that show
// as a change of the parent.
//
// The kernel's cached attributes of the parent are left alone too. What the copy-up did change there (the upper
// directory's ctime and, on tmpfs, its size) is not a change of the merged directory, and invalidating them cost
// every copy-up a GETATTR round trip more: the next path walk through the parent had to ask for them again
// (chmod of 1,000 lower files: 2,000 requests instead of 1,000). A stat of the parent shows the new ctime once its
// attributes expire or are refreshed by a change of its own. The parent's link count does not move: a merged
// directory always reports one link.
func keepTimes(dirfd int) func() {
	var st unix.Stat_t
	if err := sysx.Fstat(dirfd, &st); err != nil {
		return func() {}
	}
	return func() {
		ts := [2]unix.Timespec{st.Atim, st.Mtim}
		sysx.Utimensat(dirfd, "", &ts)
	}
}

// attrsChanged tells the kernel to drop the attributes it caches for n: a copy-up changes some of them (a
// directory becomes merged and reports one link, a copy of a hard-linked file has one link, a copy has its own
// ctime). Only attributes are invalidated, which takes no lock in the kernel, so it is safe inside a request.
func (n *Node) attrsChanged() {
	n.NotifyContent(-1, 0)
}

// metacopy reports whether the union makes metadata-only copies. Only overlay-format uppers get them: kernel
// overlayfs (mounted with metacopy=on) reads them, while aufs and unionfs-fuse would show their empty data.
func (r *Root) metacopy() bool {
	return r.format.Metacopies()
}

// upperDir returns directory n's upper directory, if it has one.
func (n *Node) upperDir() (layerDir, bool) {
	dirs := n.stack()
	if len(dirs) > 0 && dirs[0].layer.IsUpper() && dirs[0].fd >= 0 {
		return dirs[0], true
	}
	return layerDir{}, false
}

// refreshMeta gives directory n and its ancestors the upper layer's unionfs-fuse marker directories after a
// marker was written under n (which creates them along n's path), so that lookups see the marker.
func (n *Node) refreshMeta() {
	if n.root.format.MarkerTree() == "" {
		return
	}
	up := n.root.layers.Upper()
	if up.meta < 0 {
		return
	}
	if p, name := n.parentNode(); p != nil {
		p.refreshMeta()
		p.mu.RLock()
		pmeta := metaIn(p.metas, up)
		p.mu.RUnlock()
		if pmeta < 0 {
			return
		}
		n.addMeta(up, func() (int, error) { return sysx.OpenDir(pmeta, name) })
		return
	}
	n.addMeta(up, func() (int, error) { return sysx.OpenDir(up.meta, "") })
}

// addMeta adds the marker directory of layer l that open returns to directory n, unless n has one.
func (n *Node) addMeta(l *Layer, open func() (int, error)) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.dirs == nil || metaIn(n.metas, l) >= 0 {
		return
	}
	fd, err := open()
	if err != nil {
		return
	}
	n.metas = append([]metaDir{{layer: l, fd: fd}}, n.metas...)
	n.owned.add(fd)
}

// copyUp makes sure the non-directory n lives in the upper layer, copying it up (after its parent directories).
// With data false a regular file gets a metadata-only copy, enough for chmod, chown, utimes and xattr changes;
// with data true it gets its data too (a metadata-only copy is completed).
func (n *Node) copyUp(data bool) syscall.Errno {
	if n.isDir() {
		_, errno := n.ensureUpperDir()
		return errno
	}
	n.mu.RLock()
	l, pendingData, anon := n.layer, n.data, n.anon
	n.mu.RUnlock()
	if anon >= 0 || l.IsUpper() && (!data || pendingData == nil) {
		return 0
	}
	if n.root.cfg.ReadOnly {
		return syscall.EROFS
	}
	if l.IsUpper() {
		return n.completeData()
	}
	parent, name := n.parentNode()
	if parent == nil {
		return syscall.ESTALE
	}
	pup, errno := parent.ensureUpperDir()
	if errno != 0 {
		return errno
	}
	n.copyMu.Lock()
	copied, errno := n.copyUpLocked(parent, pup, name, data)
	n.copyMu.Unlock()
	if errno != 0 {
		return errno
	}
	if copied && pendingData != nil && (data || !n.root.metacopy()) {
		// A metadata-only copy in a lower layer went up as one (see copyUpLocked); now its data follows.
		return n.completeData()
	}
	if copied || !data {
		return 0
	}
	return n.completeData() // another request made a metadata-only copy meanwhile
}

// copyUpLocked copies the lower non-directory n, called name in parent, into parent's upper directory pup. It
// reports copied false when n turned out to be in the upper layer already.
//
// Preconditions: n.copyMu is held.
func (n *Node) copyUpLocked(parent *Node, pup layerDir, name string, data bool) (copied bool, errno syscall.Errno) {
	n.mu.RLock()
	l, obj := n.layer, n.obj
	n.mu.RUnlock()
	if l.IsUpper() {
		return false, 0
	}
	lower, ok := dirIn(parent.stack(), l)
	if !ok {
		return false, syscall.ESTALE
	}
	src := cow.Source{Dirfd: lower.fd, Name: name}
	if err := sysx.Fstatat(lower.fd, name, &src.Stat); err != nil {
		return false, n.root.layerErrno(l, "stat", name, err)
	}
	if obj != (devIno{src.Stat.Dev, src.Stat.Ino}) {
		return false, syscall.ESTALE
	}
	// A metadata-only copy in a lower layer (the upper layer of an earlier mount) holds no data: it goes up as a
	// metadata-only copy again, its data still where it was (and where its redirect, copied along, says), and
	// copyUp completes it.
	lowerMeta := n.dataLayer() != nil
	metaOnly := lowerMeta || !data && n.root.metacopy() && src.Stat.Mode&unix.S_IFMT == unix.S_IFREG && src.Stat.Size > 0
	opts := cow.Options{
		MetadataOnly: metaOnly,
		Skip:         whiteout.IsPrivateXattr,
		Extra:        map[string][]byte{n.root.originXattr(): n.root.formatOrigin(l, obj.ino)},
	}
	if metaOnly {
		opts.Extra[n.root.metacopyXattr()] = nil
	}
	if lowerMeta {
		if rd := n.root.reader.Redirect(lower.fd, name); rd != "" {
			opts.Extra[n.root.redirectXattr()] = []byte(rd)
		}
	}
	restore := keepTimes(pup.fd) // before Build: without O_TMPFILE it names its temporary file in pup
	s, err := cow.Build(src, pup.fd, opts)
	if err != nil {
		restore()
		return false, n.root.layerErrno(pup.layer, "copying up", name, err)
	}
	if s.Tmp == "" {
		// Unnamed: pup is untouched until Publish. Looking again keeps the window in which a concurrent change
		// of pup's times would be undone as short as the link itself, not as long as the copy of the data.
		restore = keepTimes(pup.fd)
	}
	defer restore()
	defer s.Close()
	st, err := s.Stat()
	if err != nil {
		s.Discard()
		return false, toErrno(err)
	}
	if err := s.Publish(name); err != nil {
		s.Discard()
		if err == syscall.EEXIST {
			return false, syscall.ESTALE // the upper layer got the name behind the daemon's back
		}
		return false, n.root.layerErrno(pup.layer, "copying up", name, err)
	}
	if metaOnly {
		n.root.stats.metaCopyUps.Add(1)
	} else {
		n.root.stats.copyUps.Add(1)
		n.root.stats.copyUpBytes.Add(uint64(src.Stat.Blocks * 512))
	}
	n.mu.Lock()
	n.layer, n.obj = pup.layer, devIno{st.Dev, st.Ino}
	if metaOnly && !lowerMeta {
		n.data, n.dataObj = l, obj
	}
	n.mu.Unlock()
	if !metaOnly {
		n.repointHandles(pup.layer)
	}
	n.attrsChanged()
	return true, 0
}

// dataLayer returns the layer holding the data of n if n is a metadata-only copy, else nil.
func (n *Node) dataLayer() *Layer {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.data
}

// copyUpTruncated makes sure the non-directory n lives in the upper layer for an open that truncates it: only
// its metadata is copied, since its data is about to go.
func (n *Node) copyUpTruncated() syscall.Errno {
	if errno := n.copyUp(false); errno != 0 {
		return errno
	}
	n.copyMu.Lock()
	defer n.copyMu.Unlock()
	n.mu.RLock()
	pending := n.data != nil
	n.mu.RUnlock()
	if !pending {
		return 0
	}
	dirfd, name, errno := n.location()
	if errno != 0 {
		return errno
	}
	fd, err := sysx.OpenObject(dirfd, name, unix.O_RDWR)
	if err != nil {
		return toErrno(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := sysx.Fstat(fd, &st); err != nil || !n.isObject(&st) {
		return syscall.ESTALE
	}
	if err := unix.Ftruncate(fd, 0); err != nil {
		return toErrno(err)
	}
	if err := unix.Fremovexattr(fd, n.root.metacopyXattr()); err != nil && err != syscall.ENODATA {
		return toErrno(err)
	}
	n.mu.Lock()
	n.data = nil
	n.mu.Unlock()
	n.repointHandles(n.holder())
	return 0
}

// completeData fills in the data of a metadata-only copy from its lower file. The copy is marked metadata-only
// until the data is complete, so a failure (ENOSPC) leaves the lower data in use; the copy's space is given back
// and its times restored.
func (n *Node) completeData() syscall.Errno {
	n.copyMu.Lock()
	defer n.copyMu.Unlock()
	n.mu.RLock()
	dataLayer, dataObj := n.data, n.dataObj
	n.mu.RUnlock()
	if dataLayer == nil {
		return 0
	}
	dirfd, name, errno := n.location()
	if errno != 0 {
		return errno
	}
	ddir, dname, errno := n.locationIn(dataLayer)
	if errno != 0 {
		return errno
	}
	fd, err := sysx.OpenObject(dirfd, name, unix.O_RDWR)
	if err != nil {
		return toErrno(err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := sysx.Fstat(fd, &st); err != nil || !n.isObject(&st) {
		return syscall.ESTALE
	}
	src := cow.Source{Dirfd: ddir, Name: dname}
	if err := sysx.Fstatat(ddir, dname, &src.Stat); err != nil {
		return toErrno(err)
	}
	if dataObj != (devIno{src.Stat.Dev, src.Stat.Ino}) {
		return syscall.ESTALE
	}
	times := [2]unix.Timespec{st.Atim, st.Mtim}
	n.root.stats.copyUps.Add(1)
	n.root.stats.copyUpBytes.Add(uint64(src.Stat.Blocks * 512))
	if err := cow.CopyData(src, fd); err != nil {
		unix.Ftruncate(fd, 0)
		unix.Ftruncate(fd, st.Size)
		sysx.Futimens(fd, &times)
		return n.root.layerErrno(n.holder(), "copying up data of", name, err)
	}
	if err := unix.Ftruncate(fd, st.Size); err != nil {
		return toErrno(err)
	}
	if err := unix.Fremovexattr(fd, n.root.metacopyXattr()); err != nil && err != syscall.ENODATA {
		return toErrno(err)
	}
	sysx.Futimens(fd, &times)
	n.mu.Lock()
	n.data = nil
	n.mu.Unlock()
	n.repointHandles(n.holder())
	n.attrsChanged()
	return 0
}

// repointHandles re-opens n's open read-only files on its upper copy, which holds the data from now on.
func (n *Node) repointHandles(l *Layer) {
	n.mu.RLock()
	handles := make([]*file, 0, len(n.handles))
	for f := range n.handles {
		if !f.writable && !f.passthrough {
			// A passthrough file's reads never reach the daemon: the kernel keeps using the file it registered.
			handles = append(handles, f)
		}
	}
	n.mu.RUnlock()
	if len(handles) == 0 {
		return
	}
	dirfd, name, errno := n.locationIn(l)
	if errno != 0 {
		return
	}
	for _, f := range handles {
		fd, err := sysx.OpenObject(dirfd, name, f.flags&^unix.O_NOATIME)
		if err != nil {
			n.root.layerErrno(l, "re-opening after copy-up", name, err)
			continue
		}
		var st unix.Stat_t
		if err := sysx.Fstat(fd, &st); err != nil || !n.isObject(&st) {
			unix.Close(fd) // renamed meanwhile: the file keeps its descriptor
			continue
		}
		f.repoint(fd)
	}
}
