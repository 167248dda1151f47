package unionfs

import (
	"context"
	"os"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// needsCopyUp is the answer to a change that needs a copy-up or a whiteout in the upper layer.
func (r *Root) needsCopyUp() syscall.Errno { return syscall.EROFS }

// writableDir returns the upper layer directory of directory n, where new names are made. It fails with EROFS on
// a read-only union and with needsCopyUp when n has no upper directory yet.
func (n *Node) writableDir() (layerDir, syscall.Errno) {
	if n.root.cfg.ReadOnly {
		return layerDir{}, syscall.EROFS
	}
	dirs := n.stack()
	if dirs == nil {
		return layerDir{}, syscall.ESTALE
	}
	if !dirs[0].layer.IsUpper() || dirs[0].fd < 0 {
		return layerDir{}, n.root.needsCopyUp()
	}
	return dirs[0], 0
}

// prepareNew checks that name can be made in directory n and returns the upper directory to make it in. A marker
// name is refused with EPERM, so no user can forge a whiteout; a name the upper layer whites out needs the whiteout
// replaced.
func (n *Node) prepareNew(name string) (layerDir, syscall.Errno) {
	if err := sysx.CheckName(name); err != nil {
		return layerDir{}, syscall.EINVAL
	}
	if n.isHidden(name) {
		return layerDir{}, syscall.EPERM
	}
	up, errno := n.writableDir()
	if errno != 0 {
		return layerDir{}, errno
	}
	var st unix.Stat_t
	err := sysx.Fstatat(up.fd, name, &st)
	switch {
	case err == nil && whiteout.IsOverlayWhiteout(&st):
		return layerDir{}, n.root.needsCopyUp()
	case err == nil:
		return layerDir{}, syscall.EEXIST
	case err != syscall.ENOENT:
		return layerDir{}, n.root.layerErrno(up.layer, "lookup", name, err)
	}
	if up.layer.aufs && whiteout.HasAufsWhiteout(up.fd, name) {
		return layerDir{}, n.root.needsCopyUp()
	}
	return up, 0
}

// callerOf returns the credentials of the process a request comes from.
func callerOf(ctx context.Context) (uid, gid uint32) {
	if c, ok := ctx.(*fuse.Context); ok {
		return c.Owner.Uid, c.Owner.Gid
	}
	return uint32(os.Geteuid()), uint32(os.Getegid())
}

// ownNew gives the new object name in dirfd (made by the daemon, so owned by it) to the caller: the caller's
// uid, and the caller's gid unless the parent directory is setgid, in which case the kernel has already given it
// the parent's group. The object was made with mode 0, so until this returns it is no more accessible than the
// caller will make it. A daemon that is not root cannot give files away: they stay its own.
func ownNew(ctx context.Context, dirfd int, name string, parentMode uint32) error {
	if os.Geteuid() != 0 {
		return nil
	}
	uid, gid := callerOf(ctx)
	g := int(gid)
	if parentMode&unix.S_ISGID != 0 {
		g = -1
	}
	return sysx.Chownat(dirfd, name, int(uid), g)
}

// newMode returns the permission bits a new object gets: the requested ones, and for a directory in a setgid
// directory the setgid bit, which directories inherit.
func newMode(mode, parentMode uint32) uint32 {
	perm := mode & 07777
	if mode&unix.S_IFMT == unix.S_IFDIR && parentMode&unix.S_ISGID != 0 {
		perm |= unix.S_ISGID
	}
	return perm
}

// finishNew gives a new upper object to the caller, sets its mode and returns its node. On failure the object is
// removed again.
func (n *Node) finishNew(ctx context.Context, up layerDir, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	fail := func(err error) (*fs.Inode, syscall.Errno) {
		flags := 0
		if mode&unix.S_IFMT == unix.S_IFDIR {
			flags = unix.AT_REMOVEDIR
		}
		unix.Unlinkat(up.fd, name, flags)
		return nil, n.root.layerErrno(up.layer, "create", name, err)
	}
	var parent unix.Stat_t
	if err := sysx.Fstat(up.fd, &parent); err != nil {
		return fail(err)
	}
	if err := ownNew(ctx, up.fd, name, parent.Mode); err != nil {
		return fail(err)
	}
	if mode&unix.S_IFMT != unix.S_IFLNK {
		if err := sysx.Chmodat(up.fd, name, newMode(mode, parent.Mode)); err != nil {
			return fail(err)
		}
	}
	var st unix.Stat_t
	if err := sysx.Fstatat(up.fd, name, &st); err != nil {
		return fail(err)
	}
	var child *Node
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		fd, err := sysx.OpenDir(up.fd, name)
		if err != nil {
			return fail(err)
		}
		child = n.root.newDirNode([]layerDir{{layer: up.layer, fd: fd, dev: st.Dev, ino: st.Ino}})
	} else {
		child = n.root.newFileNode(up.layer, &st)
	}
	ino := n.root.inos.ino(devIno{st.Dev, st.Ino})
	fillAttr(&out.Attr, &st, ino, false)
	return n.NewInode(ctx, child, fs.StableAttr{Mode: st.Mode & unix.S_IFMT, Ino: ino, Gen: 1}), 0
}

// Create - FUSE call. Makes a regular file in the upper layer, owned by the caller, and opens it.
func (n *Node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	up, errno := n.prepareNew(name)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	fd, err := sysx.Openat(up.fd, name, openFlags(flags)|unix.O_CREAT|unix.O_EXCL, 0)
	if err != nil {
		return nil, nil, 0, n.root.layerErrno(up.layer, "create", name, err)
	}
	inode, errno := n.finishNew(ctx, up, name, unix.S_IFREG|mode, out)
	if errno != 0 {
		unix.Close(fd)
		return nil, nil, 0, errno
	}
	return inode, &file{fd: fd}, 0, 0
}

// Mkdir - FUSE call.
func (n *Node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	up, errno := n.prepareNew(name)
	if errno != 0 {
		return nil, errno
	}
	if err := unix.Mkdirat(up.fd, name, 0); err != nil {
		return nil, n.root.layerErrno(up.layer, "mkdir", name, err)
	}
	return n.finishNew(ctx, up, name, unix.S_IFDIR|mode, out)
}

// Mknod - FUSE call: devices, FIFOs and sockets. The kernel has checked that the caller may make devices.
func (n *Node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	up, errno := n.prepareNew(name)
	if errno != 0 {
		return nil, errno
	}
	if err := unix.Mknodat(up.fd, name, mode&unix.S_IFMT, int(dev)); err != nil {
		return nil, n.root.layerErrno(up.layer, "mknod", name, err)
	}
	return n.finishNew(ctx, up, name, mode, out)
}

// Symlink - FUSE call.
func (n *Node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	up, errno := n.prepareNew(name)
	if errno != 0 {
		return nil, errno
	}
	if err := unix.Symlinkat(target, up.fd, name); err != nil {
		return nil, n.root.layerErrno(up.layer, "symlink", name, err)
	}
	return n.finishNew(ctx, up, name, unix.S_IFLNK|0777, out)
}

// Link - FUSE call. Links an upper object under a new name.
func (n *Node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	tn, ok := target.(interface{ unionNode() *Node })
	if !ok {
		return nil, syscall.EXDEV
	}
	t := tn.unionNode()
	up, errno := n.prepareNew(name)
	if errno != 0 {
		return nil, errno
	}
	if !t.holder().IsUpper() {
		return nil, n.root.needsCopyUp()
	}
	tdir, tname, errno := t.location()
	if errno != 0 {
		return nil, errno
	}
	if err := unix.Linkat(tdir, tname, up.fd, name, 0); err != nil {
		return nil, n.root.layerErrno(up.layer, "link", name, err)
	}
	var st unix.Stat_t
	if err := sysx.Fstatat(up.fd, name, &st); err != nil {
		return nil, n.root.layerErrno(up.layer, "link", name, err)
	}
	fillAttr(&out.Attr, &st, t.StableAttr().Ino, false)
	return t.EmbeddedInode(), 0
}

// removable checks that name in directory n can be removed by deleting its upper object alone: the name's
// topmost object is in the upper layer and no lower object of that name would show once it is gone. It returns
// the upper directory and the name's objects.
func (n *Node) removable(name string) (layerDir, []probe, syscall.Errno) {
	if n.isHidden(name) {
		return layerDir{}, nil, syscall.ENOENT
	}
	up, errno := n.writableDir()
	if errno != 0 {
		return layerDir{}, nil, errno
	}
	stack := n.stack()
	found, errno := n.root.resolve(stack, name)
	if errno != 0 {
		return layerDir{}, nil, errno
	}
	if len(found) == 0 {
		return layerDir{}, nil, syscall.ENOENT
	}
	if !found[0].parent.layer.IsUpper() || len(found) > 1 {
		return layerDir{}, nil, n.root.needsCopyUp()
	}
	if below, errno := n.root.resolve(stack[1:], name); errno != 0 {
		return layerDir{}, nil, errno
	} else if len(below) > 0 {
		return layerDir{}, nil, n.root.needsCopyUp()
	}
	return up, found, 0
}

// Unlink - FUSE call.
func (n *Node) Unlink(ctx context.Context, name string) syscall.Errno {
	up, _, errno := n.removable(name)
	if errno != 0 {
		return errno
	}
	if err := unix.Unlinkat(up.fd, name, 0); err != nil {
		return n.root.layerErrno(up.layer, "unlink", name, err)
	}
	return 0
}

// Rmdir - FUSE call.
func (n *Node) Rmdir(ctx context.Context, name string) syscall.Errno {
	up, _, errno := n.removable(name)
	if errno != 0 {
		return errno
	}
	if err := unix.Unlinkat(up.fd, name, unix.AT_REMOVEDIR); err != nil {
		return n.root.layerErrno(up.layer, "rmdir", name, err)
	}
	return 0
}

// Rename - FUSE call. Renames within the upper layer, for names no lower layer has.
func (n *Node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(interface{ unionNode() *Node })
	if !ok {
		return syscall.EXDEV
	}
	dst := np.unionNode()
	if flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0 {
		return syscall.EINVAL
	}
	if dst.isHidden(newName) {
		return syscall.EPERM
	}
	up, _, errno := n.removable(name)
	if errno == syscall.EROFS && !n.root.cfg.ReadOnly {
		return syscall.EXDEV
	} else if errno != 0 {
		return errno
	}
	dup, errno := dst.writableDir()
	if errno != 0 {
		return errno
	}
	if _, _, errno := dst.removable(newName); errno == syscall.EROFS {
		return syscall.EXDEV
	} else if errno != 0 && errno != syscall.ENOENT {
		return errno
	} else if errno == syscall.ENOENT {
		if flags&unix.RENAME_EXCHANGE != 0 {
			return syscall.ENOENT
		}
		// The new name may be whited out in the upper layer.
		if _, errno := dst.prepareNew(newName); errno == syscall.EROFS {
			return syscall.EXDEV
		}
	}
	if err := unix.Renameat2(up.fd, name, dup.fd, newName, uint(flags)); err != nil {
		return n.root.layerErrno(up.layer, "rename", name, err)
	}
	return 0
}
