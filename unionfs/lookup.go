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

// probe is one layer's contribution to a name of the merged view.
type probe struct {
	parent  layerDir         // the parent directory in that layer
	st      unix.Stat_t      // the object's attributes
	opacity whiteout.Opacity // directories with a layer below: their opacity
}

// resolve looks name up in the layer directories parent (a directory's stack, topmost first) with overlayfs's
// rules and returns the objects that make up the name, topmost first: one for a non-directory, one per layer
// directory for a directory. An empty result means the name does not exist (absent or whited out).
func (r *Root) resolve(parent []layerDir, name string) ([]probe, syscall.Errno) {
	var found []probe
	for i, pd := range parent {
		if pd.fd < 0 {
			continue // a mount point in this layer: the layer holds nothing beneath it
		}
		var p probe
		p.parent = pd
		err := sysx.Fstatat(pd.fd, name, &p.st)
		if err == syscall.ENOENT {
			if pd.layer.aufs && whiteout.HasAufsWhiteout(pd.fd, name) {
				break
			}
			continue
		}
		if err != nil {
			return nil, r.layerErrno(pd.layer, "lookup", name, err)
		}
		if whiteout.IsOverlayWhiteout(&p.st) {
			break
		}
		if pd.opacity == whiteout.Xwhiteouts && whiteout.IsXwhiteout(pd.fd, name, &p.st) {
			break
		}
		isDir := p.st.Mode&unix.S_IFMT == unix.S_IFDIR
		if len(found) > 0 && !isDir {
			break // a non-directory below a directory is hidden
		}
		if !isDir {
			found = append(found, p)
			break
		}
		if i < len(parent)-1 {
			// Opacity matters only where there is something below to hide.
			op, err := whiteout.DirOpacity(pd.fd, name)
			if err != nil && err != syscall.EXDEV {
				return nil, r.layerErrno(pd.layer, "reading opacity of", name, err)
			}
			p.opacity = op
		}
		found = append(found, p)
		if p.opacity == whiteout.Opaque {
			break
		}
	}
	return found, 0
}

// probeIdentity returns the object whose (device, inode) pair names the union object found: for a directory that
// a lower layer has, the topmost lower directory, so that the number survives a copy of the directory into the
// upper layer; otherwise the topmost object.
func probeIdentity(found []probe) devIno {
	for _, p := range found {
		if !p.parent.layer.IsUpper() {
			return devIno{p.st.Dev, p.st.Ino}
		}
	}
	return devIno{found[0].st.Dev, found[0].st.Ino}
}

// identity is probeIdentity for an open directory stack.
func identity(dirs []layerDir) devIno {
	for _, d := range dirs {
		if !d.layer.IsUpper() {
			return devIno{d.dev, d.ino}
		}
	}
	return devIno{dirs[0].dev, dirs[0].ino}
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
	if n.isHidden(name) {
		return nil, syscall.ENOENT
	}
	stack := n.stack()
	if stack == nil {
		return nil, syscall.ESTALE
	}
	found, errno := n.root.resolve(stack, name)
	if errno != 0 {
		return nil, errno
	}
	if len(found) == 0 {
		return nil, syscall.ENOENT
	}
	return n.root.childFromProbes(ctx, n, name, found, out)
}

// childFromProbes returns the node for the objects found under name in parent, reusing parent's existing child
// when it is the same object, and fills out.
func (r *Root) childFromProbes(ctx context.Context, parent *Node, name string, found []probe, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	top := &found[0]
	mode := top.st.Mode & unix.S_IFMT
	isDir := mode == unix.S_IFDIR
	ino := r.inos.ino(probeIdentity(found))
	merged := isDir && len(found) > 1

	if ch := parent.GetChild(name); ch != nil {
		id := ch.StableAttr()
		if id.Ino == ino && id.Mode == uint32(mode) {
			if cn, ok := ch.Operations().(interface{ unionNode() *Node }); ok && cn.unionNode().live() {
				fillAttr(&out.Attr, &top.st, ino, merged)
				return ch, 0
			}
		}
	}

	var child *Node
	if isDir {
		dirs := make([]layerDir, 0, len(found))
		for _, p := range found {
			d := layerDir{layer: p.parent.layer, dev: p.st.Dev, ino: p.st.Ino, opacity: p.opacity}
			fd, err := sysx.OpenDir(p.parent.fd, name)
			switch {
			case err == syscall.EXDEV:
				st := p.st
				d.fd, d.st = -1, &st
			case err != nil:
				for _, o := range dirs {
					if o.fd >= 0 {
						unix.Close(o.fd)
					}
				}
				if err == syscall.ENOTDIR || err == syscall.ELOOP {
					err = syscall.ESTALE // replaced behind the daemon's back
				}
				return nil, r.layerErrno(p.parent.layer, "opening directory", name, err)
			default:
				d.fd = fd
			}
			dirs = append(dirs, d)
		}
		child = r.newDirNode(dirs)
	} else {
		child = r.newFileNode(top.parent.layer, &top.st)
	}
	fillAttr(&out.Attr, &top.st, ino, merged)
	return parent.NewInode(ctx, child, fs.StableAttr{Mode: uint32(mode), Ino: ino, Gen: 1}), 0
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
