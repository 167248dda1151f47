package unionfs

import (
	"context"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Renaming. What moves is first brought into the upper layer: a non-directory is copied up; a directory that
// exists below is copied up empty and given a redirect to its lower path (overlay format, as overlayfs with
// redirect_dir=on does), or copied up with its whole visible subtree and made opaque (aufs and unionfs-fuse
// formats, as unionfs-fuse does). The upper object is then renamed; a whiteout is left at the old name if lower
// objects would show there, and a moved directory is made opaque if lower directories of the new name would
// merge into it. No rename ever fails with EXDEV.

// Rename - FUSE call, with RENAME_NOREPLACE and RENAME_EXCHANGE.
func (n *Node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	n.root.stats.count(opRename)
	m := asNode(newParent.EmbeddedInode())
	if m == nil {
		return syscall.EXDEV
	}
	if flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0 {
		return syscall.EINVAL
	}
	if n.isHidden(name) {
		return syscall.ENOENT
	}
	if m.isHidden(newName) {
		return syscall.EPERM
	}
	if sysx.CheckName(newName) != nil {
		return syscall.EINVAL
	}
	if n.root.cfg.ReadOnly {
		return syscall.EROFS
	}
	exchange := flags&unix.RENAME_EXCHANGE != 0
	src, errno := n.resolve(name)
	if errno != 0 {
		return errno
	}
	defer src.close()
	dst, errno := m.resolve(newName)
	if errno != 0 {
		return errno
	}
	defer dst.close()
	switch {
	case !src.Exists():
		return syscall.ENOENT
	case exchange && !dst.Exists():
		return syscall.ENOENT
	case flags&unix.RENAME_NOREPLACE != 0 && dst.Exists():
		return syscall.EEXIST
	}
	if !exchange && dst.Exists() {
		switch {
		case src.IsDir() && !dst.IsDir():
			return syscall.ENOTDIR
		case !src.IsDir() && dst.IsDir():
			return syscall.EISDIR
		case dst.IsDir():
			empty, errno := n.root.isEmpty(dst)
			if errno != 0 {
				return errno
			}
			if !empty {
				return syscall.ENOTEMPTY
			}
		}
	}
	srcNode, errno := n.child(ctx, name)
	if errno != 0 {
		return errno
	}
	var dstNode *Node
	if exchange {
		if dstNode, errno = m.child(ctx, newName); errno != 0 {
			return errno
		}
	}

	// Bring into the upper layer whatever moves, and the directories it moves between.
	nUp, errno := n.ensureUpperDir()
	if errno != 0 {
		return errno
	}
	mUp, errno := m.ensureUpperDir()
	if errno != 0 {
		return errno
	}
	if errno := srcNode.prepareMove(); errno != 0 {
		return errno
	}
	if exchange {
		if errno := dstNode.prepareMove(); errno != 0 {
			return errno
		}
	}
	srcBelow, errno := n.lowerHas(name)
	if errno != 0 {
		return errno
	}
	dstBelow, errno := m.lowerHas(newName)
	if errno != 0 {
		return errno
	}
	nDir, mDir := n.upperDirOf(nUp), m.upperDirOf(mUp)
	defer n.refreshMeta()
	defer m.refreshMeta()

	// Mark moving directories so that they show the same content at their new place.
	srcOpaque, errno := n.markMoved(srcNode, nDir, name, mDir, newName, dstBelow)
	if errno != 0 {
		return errno
	}
	if exchange {
		dstOpaque, errno := m.markMoved(dstNode, mDir, newName, nDir, name, srcBelow)
		if errno != 0 {
			return errno
		}
		if srcNode.isRegular() {
			n.keepByDescriptor(nUp, name)
		}
		if dstNode.isRegular() {
			m.keepByDescriptor(mUp, newName)
		}
		if err := unix.Renameat2(nUp.fd, name, mUp.fd, newName, unix.RENAME_EXCHANGE); err != nil {
			return n.root.layerErrno(nUp.layer, "rename", name, err)
		}
		srcNode.afterMove(srcOpaque)
		dstNode.afterMove(dstOpaque)
		return 0
	}

	replaceMarker := !dst.Exists() && dst.Whiteout == 0
	if dst.Exists() && dst.Found[0].Layer == 0 && !dst.IsDir() {
		m.keepByDescriptor(mUp, newName) // the object renamed over loses its name, maybe not its users
	}
	if dst.Exists() && dst.Found[0].Layer == 0 && dst.IsDir() {
		// Renaming over an empty directory: clear the markers it holds, or rename(2) finds it not empty.
		if errno := m.clearUpperDir(mUp, mDir, newName); errno != 0 {
			return errno
		}
	}
	if srcNode.isRegular() {
		n.keepByDescriptor(nUp, name) // see there: requests racing with the move find the file by its descriptor
	}
	if errno := n.moveUpper(nUp, nDir, name, mDir, newName, src.IsDir(), srcBelow, replaceMarker); errno != 0 {
		return errno
	}
	srcNode.afterMove(srcOpaque)
	return 0
}

// child returns the node of name in directory n, looking it up if the tree does not hold it.
func (n *Node) child(ctx context.Context, name string) (*Node, syscall.Errno) {
	if c := asNode(n.GetChild(name)); c != nil && c.live() {
		return c, 0
	}
	var out fuse.EntryOut
	inode, errno := n.Lookup(ctx, name, &out)
	if errno != 0 {
		return nil, errno
	}
	// Register the node as a child so that its parent is known; the kernel has no reference to it, so the tree
	// drops it again with the parent.
	n.AddChild(name, inode, false)
	if c := asNode(n.GetChild(name)); c != nil {
		return c, 0
	}
	return nil, syscall.ESTALE
}

// prepareMove brings n into the upper layer before it moves: a non-directory with its data (a metadata-only
// copy takes its data from its own path); a directory copied up empty where the format records redirects, with
// its whole visible subtree otherwise.
func (n *Node) prepareMove() syscall.Errno {
	if !n.isDir() {
		return n.copyUp(true)
	}
	if n.root.format.Redirects() {
		_, errno := n.ensureUpperDir()
		return errno
	}
	return n.copyUpTree()
}

// copyUpTree copies directory n and everything it shows into the upper layer.
func (n *Node) copyUpTree() syscall.Errno {
	if _, errno := n.ensureUpperDir(); errno != 0 {
		return errno
	}
	if len(n.stack()) <= 1 {
		return 0 // a pure upper directory
	}
	entries, errno := n.list()
	if errno != 0 {
		return errno
	}
	ctx := context.Background()
	for _, e := range entries {
		if e.Name == "." || e.Name == ".." {
			continue
		}
		c, errno := n.child(ctx, e.Name)
		if errno != 0 {
			return errno
		}
		if c.isDir() {
			errno = c.copyUpTree()
		} else {
			errno = c.copyUp(true)
		}
		if errno != 0 {
			return errno
		}
	}
	return 0
}

// markMoved prepares the upper directory of c, now called cur in src (whose node is n), for being called name in
// dst: it keeps showing its lower content through a redirect to its lower path, or, where it takes nothing from
// below, is made opaque if lower directories called name in dst would merge into it. Non-directories need
// nothing. It reports whether the directory was made opaque.
func (n *Node) markMoved(c *Node, src whiteout.Dir, cur string, dst whiteout.Dir, name string, below bool) (bool, syscall.Errno) {
	if !c.isDir() {
		return false, 0
	}
	stack := c.stack()
	if stack == nil {
		return false, syscall.ESTALE
	}
	f := n.root.format
	if len(stack) > 1 && f.Redirects() {
		redirect := c.lowerPath()
		if redirect == "" {
			return false, syscall.ESTALE
		}
		if err := f.Redirect(stack[0].fd, redirect); err != nil {
			return false, n.root.layerErrno(stack[0].layer, "setting redirect of", cur, err)
		}
		c.mu.Lock()
		c.redirect = redirect
		c.mu.Unlock()
		return false, 0
	}
	if !below && len(stack) <= 1 {
		return false, 0
	}
	// A directory whose content is all in the upper layer (pure, or copied with its subtree).
	if err := f.MarkOpaque(src, cur, dst, name); err != nil {
		return false, n.root.layerErrno(stack[0].layer, "marking opaque", cur, err)
	}
	return true, 0
}

// afterMove drops the lower directories of a moved directory that was made opaque: it shows its upper content
// only from now on.
func (n *Node) afterMove(opaque bool) {
	if !opaque {
		return
	}
	n.mu.Lock()
	if len(n.dirs) > 1 {
		n.dirs = n.dirs[:1]
	}
	if len(n.dirs) == 1 {
		n.dirs[0].opacity = whiteout.Opaque
	}
	n.mu.Unlock()
	n.attrsChanged() // outside mu, though safe under it (see doc.go, Locking): nothing here needs it held
}

// clearUpperDir removes the markers from the upper directory name in d, which the merged view shows empty.
func (n *Node) clearUpperDir(up layerDir, d whiteout.Dir, name string) syscall.Errno {
	sub, err := sysx.OpenDir(up.fd, name)
	if err != nil {
		return n.root.layerErrno(up.layer, "opening directory", name, err)
	}
	defer unix.Close(sub)
	if err := n.root.format.ClearDir(d, name, sub); err != nil {
		return n.root.layerErrno(up.layer, "clearing", name, err)
	}
	if err := clearInvisible(sub); err != nil {
		return n.root.layerErrno(up.layer, "clearing", name, err)
	}
	return 0
}

// moveUpper renames the upper object name in nUp to newName in mUp, leaving a whiteout behind if lower objects
// of the old name would show (srcBelow) and replacing a marker of the new name (replaceMarker).
func (n *Node) moveUpper(nUp layerDir, nDir whiteout.Dir, name string, mDir whiteout.Dir, newName string,
	isDir, srcBelow, replaceMarker bool) syscall.Errno {
	if err := n.root.format.Move(nDir, name, mDir, newName, isDir, srcBelow, replaceMarker); err != nil {
		return n.root.layerErrno(nUp.layer, "rename", name, err)
	}
	return 0
}
