package unionfs

import (
	"context"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Removing names. A name whose lower objects would show once its upper object is gone gets a whiteout, in one
// step with the removal where the format allows (overlay: the upper object is swapped for a whiteout). A merged
// directory can be removed when the merged view shows it empty, whatever markers its upper directory holds.

// Unlink - FUSE call.
func (n *Node) Unlink(ctx context.Context, name string) syscall.Errno {
	n.root.stats.count(opUnlink)
	return n.remove(name, false)
}

// Rmdir - FUSE call.
func (n *Node) Rmdir(ctx context.Context, name string) syscall.Errno {
	n.root.stats.count(opRmdir)
	return n.remove(name, true)
}

// remove removes name from directory n: a directory (rmdir) or anything else (unlink).
func (n *Node) remove(name string, dir bool) syscall.Errno {
	if n.isHidden(name) {
		return syscall.ENOENT
	}
	if n.root.cfg.ReadOnly {
		return syscall.EROFS
	}
	res, errno := n.resolve(name)
	if errno != 0 {
		return errno
	}
	defer res.close()
	switch {
	case !res.Exists():
		return syscall.ENOENT
	case dir && !res.IsDir():
		return syscall.ENOTDIR
	case !dir && res.IsDir():
		return syscall.EISDIR
	}
	if dir {
		empty, errno := n.root.isEmpty(res)
		if errno != 0 {
			return errno
		}
		if !empty {
			return syscall.ENOTEMPTY
		}
	}
	below, errno := n.lowerHas(name)
	if errno != 0 {
		return errno
	}
	up, errno := n.ensureUpperDir()
	if errno != 0 {
		return errno
	}
	d := n.upperDirOf(up)
	defer n.refreshMeta()
	if res.Found[0].Layer != 0 {
		// Only lower objects: a whiteout hides them.
		if _, err := n.root.format.Hide(d, name, whiteout.TempName()); err != nil {
			return n.root.layerErrno(up.layer, "whiteout", name, err)
		}
		return 0
	}
	if !dir {
		n.keepByDescriptor(up, name)
	}
	if below {
		tmp := whiteout.TempName()
		moved, err := n.root.format.Hide(d, name, tmp)
		if err != nil {
			return n.root.layerErrno(up.layer, "whiteout", name, err)
		}
		if moved {
			// The object now sits under tmp, invisible; remove it with whatever markers it holds.
			if err := whiteout.RemoveTree(up.fd, tmp); err != nil {
				n.root.layerErrno(up.layer, "removing", tmp, err)
			}
			return 0
		}
	}
	return n.removeUpper(up, d, name, dir)
}

// keepByDescriptor is called before the upper non-directory name in directory n is removed or renamed over. If the kernel still
// knows the name's node (a process may have it open, or hold an O_PATH descriptor or a mapping of it), the node
// keeps a descriptor of the object, as the kernel keeps the inode of a deleted file: ftruncate, fchmod, fstat,
// fsetxattr and the rest then act on the object itself instead of failing because its name is gone.
//
// Rename calls it for a regular file before moving it too: between the move in the layer and go-fuse's move of
// the node in its tree, the node's name (parent and name) still says where the file was, and a request on it (an
// open of a descriptor fanotify hands out, an fchmod) would find nothing there. Reached through its descriptor,
// the file is found wherever its name goes.
func (n *Node) keepByDescriptor(up layerDir, name string) {
	child := asNode(n.GetChild(name))
	if child == nil || child.isDir() {
		return
	}
	child.mu.RLock()
	want, kept := child.obj, child.anon >= 0 || !child.layer.IsUpper()
	child.mu.RUnlock()
	if kept {
		return // already reached by a descriptor, or a lower object (whose unlinking leaves it where it is)
	}
	fd, err := sysx.Openat(up.fd, name, unix.O_PATH, 0)
	if err != nil {
		return
	}
	var st unix.Stat_t
	if sysx.Fstat(fd, &st) != nil || (devIno{st.Dev, st.Ino}) != want {
		unix.Close(fd)
		return
	}
	child.mu.Lock()
	if child.anon < 0 && child.obj == want {
		child.anon, fd = fd, -1
	}
	child.mu.Unlock()
	if fd >= 0 {
		unix.Close(fd)
	}
}

// removeUpper removes the upper object name, a directory after clearing the markers in it (they hide nothing
// the merged view shows: it is empty).
func (n *Node) removeUpper(up layerDir, d whiteout.Dir, name string, dir bool) syscall.Errno {
	if !dir {
		if err := unix.Unlinkat(up.fd, name, 0); err != nil {
			return n.root.layerErrno(up.layer, "unlink", name, err)
		}
		return 0
	}
	sub, err := sysx.OpenDir(up.fd, name)
	if err != nil {
		return n.root.layerErrno(up.layer, "rmdir", name, err)
	}
	err = n.root.format.ClearDir(d, name, sub)
	if err == nil {
		// Markers of other formats and leftover temporary objects are invisible too.
		err = clearInvisible(sub)
	}
	unix.Close(sub)
	if err != nil {
		return n.root.layerErrno(up.layer, "rmdir", name, err)
	}
	if err := unix.Unlinkat(up.fd, name, unix.AT_REMOVEDIR); err != nil {
		return n.root.layerErrno(up.layer, "rmdir", name, err)
	}
	return 0
}

// clearInvisible removes the entries of an upper directory that the merged view never shows: overlay whiteouts,
// aufs markers, temporary objects.
func clearInvisible(dirfd int) error {
	return whiteout.ClearMarkers(dirfd)
}

// lowerHas reports whether a lower layer has an object called name in directory n that would show if the upper
// layer had nothing of that name.
func (n *Node) lowerHas(name string) (bool, syscall.Errno) {
	res, errno := n.resolveBelow(name)
	if errno != 0 {
		return false, errno
	}
	defer res.close()
	return res.Exists(), 0
}

// isEmpty reports whether the directory res found lists nothing in the merged view.
func (r *Root) isEmpty(res *resolution) (bool, syscall.Errno) {
	var dirs []layerDir
	defer func() { closeDirs(dirs) }()
	for _, p := range res.Found {
		fd, err := sysx.OpenDir(p.Dirfd, p.Name)
		if err == syscall.EXDEV {
			continue
		}
		if err != nil {
			return false, r.layerErrno(r.layerOf(&p), "opening directory", p.Name, err)
		}
		dirs = append(dirs, layerDir{layer: r.layerOf(&p), fd: fd, dev: p.Stat.Dev, ino: p.Stat.Ino, opacity: p.Opacity})
	}
	if len(dirs) == 0 {
		return true, 0
	}
	entries, errno := r.listView(dirView{dirs: dirs, metas: res.metas}, 0, 0)
	if errno != 0 {
		return false, errno
	}
	return len(entries) <= 2, 0
}
