package unionfs

import (
	"context"
	"os"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/cow"
	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Creating objects. A new object is built invisibly (cow.Staged), given to the caller (owner, setgid group,
// mode) and only then published under its name: no other process ever sees it with the daemon's ownership or an
// unfinished mode. A name the upper layer whites out is replaced in the same step; a directory made where a lower
// directory is hidden is made opaque first, so the old content does not reappear.

// newPlace is where a new object goes.
type newPlace struct {
	up      layerDir     // the upper directory
	dir     whiteout.Dir // the same, for the marker format
	replace bool         // the upper layer whites the name out: publishing replaces the marker
	below   bool         // a lower layer has the name (hidden): a new directory must be opaque
	parent  unix.Stat_t  // the upper directory's attributes (setgid)
}

// prepareNew checks that name can be made in directory n and returns where. A marker name is refused with
// EPERM, so no user can forge a whiteout or reach a temporary object.
func (n *Node) prepareNew(name string) (*newPlace, syscall.Errno) {
	if err := sysx.CheckName(name); err != nil {
		return nil, syscall.EINVAL
	}
	if n.isHidden(name) {
		return nil, syscall.EPERM
	}
	if n.root.cfg.ReadOnly {
		return nil, syscall.EROFS
	}
	up, errno := n.ensureUpperDir()
	if errno != 0 {
		return nil, errno
	}
	res, errno := n.resolve(name)
	if errno != 0 {
		return nil, errno
	}
	defer res.close()
	if res.Exists() {
		return nil, syscall.EEXIST
	}
	p := &newPlace{up: up, dir: n.upperDirOf(up)}
	if res.Whiteout == 0 {
		p.replace = true
		below, errno := n.resolveBelow(name)
		if errno != 0 {
			return nil, errno
		}
		p.below = below.Exists()
		below.close()
	}
	if err := sysx.Fstat(up.fd, &p.parent); err != nil {
		return nil, toErrno(err)
	}
	return p, 0
}

// callerOf returns the credentials of the process a request comes from.
func callerOf(ctx context.Context) (uid, gid uint32) {
	if c, ok := ctx.(*fuse.Context); ok {
		return c.Owner.Uid, c.Owner.Gid
	}
	return uint32(os.Geteuid()), uint32(os.Getegid())
}

// giveToCaller makes the staged object belong to the caller: the caller's uid, and the caller's gid unless the
// directory is setgid, in which case the object already has the directory's group. Its permission bits become
// perm (a directory in a setgid directory keeps the setgid bit it inherited). A daemon that is not root cannot
// give files away: they stay its own.
func giveToCaller(ctx context.Context, s *cow.Staged, p *newPlace, perm uint32) error {
	if os.Geteuid() == 0 {
		uid, gid := callerOf(ctx)
		g := int(gid)
		if p.parent.Mode&unix.S_ISGID != 0 {
			g = -1
		}
		if err := s.Chown(int(uid), g); err != nil {
			return err
		}
	}
	if s.Mode&unix.S_IFMT == unix.S_IFDIR && p.parent.Mode&unix.S_ISGID != 0 {
		perm |= unix.S_ISGID
	}
	if s.Mode&unix.S_IFMT == unix.S_IFLNK {
		return nil
	}
	return s.Chmod(perm)
}

// publishNew makes the staged object visible as name and returns its node; on failure it removes the object.
func (n *Node) publishNew(ctx context.Context, s *cow.Staged, p *newPlace, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	isDir := s.Mode&unix.S_IFMT == unix.S_IFDIR
	fail := func(op string, err error) (*fs.Inode, syscall.Errno) {
		s.Discard()
		return nil, n.root.layerErrno(p.up.layer, op, name, err)
	}
	if isDir && p.below {
		if err := s.Named(); err != nil {
			return fail("create", err)
		}
		if err := n.root.format.MarkOpaque(p.dir, s.Tmp, p.dir, name); err != nil {
			return fail("marking opaque", err)
		}
	}
	if p.replace {
		if err := s.Named(); err != nil {
			return fail("create", err)
		}
		if err := n.root.format.Publish(p.dir, s.Tmp, name, isDir); err != nil {
			return fail("create", err)
		}
		s.Published()
	} else if err := s.Publish(name); err != nil {
		return fail("create", err)
	}
	n.refreshMeta()
	var st unix.Stat_t
	if err := sysx.Fstatat(p.up.fd, name, &st); err != nil {
		return nil, n.root.layerErrno(p.up.layer, "create", name, err)
	}
	var child *Node
	if isDir {
		fd, err := sysx.OpenDir(p.up.fd, name)
		if err != nil {
			return nil, n.root.layerErrno(p.up.layer, "create", name, err)
		}
		ud := layerDir{layer: p.up.layer, fd: fd, dev: st.Dev, ino: st.Ino}
		if p.below {
			ud.opacity = whiteout.Opaque
		}
		child = n.root.newDirNode([]layerDir{ud}, nil, "")
	} else {
		child = n.root.newFileNode(p.up.layer, &st)
	}
	ino := n.root.inos.ino(devIno{st.Dev, st.Ino})
	fillAttr(&out.Attr, &st, ino, false)
	return n.NewInode(ctx, child, fs.StableAttr{Mode: st.Mode & unix.S_IFMT, Ino: ino, Gen: 1}), 0
}

// Create - FUSE call. Makes a regular file owned by the caller in the upper layer and opens it.
func (n *Node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	n.root.stats.count(opCreate)
	p, errno := n.prepareNew(name)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	s, err := cow.NewFile(p.up.fd, mode&0777)
	if err != nil {
		return nil, nil, 0, n.root.layerErrno(p.up.layer, "create", name, err)
	}
	if err := giveToCaller(ctx, s, p, mode&07777); err != nil {
		s.Discard()
		return nil, nil, 0, n.root.layerErrno(p.up.layer, "create", name, err)
	}
	inode, errno := n.publishNew(ctx, s, p, name, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	fd := s.TakeFd()
	child := asNode(inode)
	f := &file{node: child, fd: fd, flags: unix.O_RDWR, writable: true}
	child.openMu.Lock()
	fh, fuseFlags := child.registerLocked(f, child.obj, 0, mode)
	child.openMu.Unlock()
	return inode, fh, fuseFlags, 0
}

// Mkdir - FUSE call.
func (n *Node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.root.stats.count(opMkdir)
	p, errno := n.prepareNew(name)
	if errno != 0 {
		return nil, errno
	}
	s, err := cow.NewDir(p.up.fd, mode&0777)
	if err != nil {
		return nil, n.root.layerErrno(p.up.layer, "mkdir", name, err)
	}
	if err := giveToCaller(ctx, s, p, mode&07777); err != nil {
		s.Discard()
		return nil, n.root.layerErrno(p.up.layer, "mkdir", name, err)
	}
	return n.publishNew(ctx, s, p, name, out)
}

// Mknod - FUSE call: devices, FIFOs and sockets. The kernel has checked that the caller may make devices.
// Whiteouts (0/0 character devices) cannot be made, by anyone.
func (n *Node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.root.stats.count(opMknod)
	if mode&unix.S_IFMT == unix.S_IFCHR && dev == 0 {
		// A 0/0 character device is an overlay whiteout, which the kernel lets anyone make (mknod(2) needs no
		// CAP_MKNOD for it): made in the upper layer it would be a marker, not an object. EPERM, as overlayfs.
		return nil, syscall.EPERM
	}
	p, errno := n.prepareNew(name)
	if errno != 0 {
		return nil, errno
	}
	s, err := cow.NewNode(p.up.fd, mode&(unix.S_IFMT|0777), uint64(dev))
	if err != nil {
		return nil, n.root.layerErrno(p.up.layer, "mknod", name, err)
	}
	if err := giveToCaller(ctx, s, p, mode&07777); err != nil {
		s.Discard()
		return nil, n.root.layerErrno(p.up.layer, "mknod", name, err)
	}
	return n.publishNew(ctx, s, p, name, out)
}

// Symlink - FUSE call.
func (n *Node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.root.stats.count(opSymlink)
	p, errno := n.prepareNew(name)
	if errno != 0 {
		return nil, errno
	}
	s, err := cow.NewSymlink(p.up.fd, target)
	if err != nil {
		return nil, n.root.layerErrno(p.up.layer, "symlink", name, err)
	}
	if err := giveToCaller(ctx, s, p, 0); err != nil {
		s.Discard()
		return nil, n.root.layerErrno(p.up.layer, "symlink", name, err)
	}
	return n.publishNew(ctx, s, p, name, out)
}

// Link - FUSE call. Links the target under a new name; a lower target is copied up first (with its data: both
// names must share it).
func (n *Node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	n.root.stats.count(opLink)
	t := asNode(target.EmbeddedInode())
	if t == nil || t.isDir() {
		return nil, syscall.EPERM
	}
	p, errno := n.prepareNew(name)
	if errno != 0 {
		return nil, errno
	}
	if errno := t.copyUp(true); errno != 0 {
		return nil, errno
	}
	t.mu.RLock()
	anon, obj := t.anon, t.obj
	t.mu.RUnlock()
	dest := name
	if p.replace {
		dest = whiteout.TempName()
	}
	var err error
	if anon >= 0 {
		err = sysx.LinkObject(anon, p.up.fd, dest)
	} else {
		tdir, tname, errno := t.location()
		if errno != 0 {
			return nil, errno
		}
		err = unix.Linkat(tdir, tname, p.up.fd, dest, 0)
	}
	if err != nil {
		return nil, n.root.layerErrno(p.up.layer, "link", name, err)
	}
	var st unix.Stat_t
	if err := sysx.Fstatat(p.up.fd, dest, &st); err != nil || obj != (devIno{st.Dev, st.Ino}) {
		unix.Unlinkat(p.up.fd, dest, 0)
		return nil, syscall.ESTALE // the target's name was replaced meanwhile
	}
	if p.replace {
		if err := n.root.format.Publish(p.dir, dest, name, false); err != nil {
			unix.Unlinkat(p.up.fd, dest, 0)
			return nil, n.root.layerErrno(p.up.layer, "link", name, err)
		}
		n.refreshMeta()
	}
	fillAttr(&out.Attr, &st, t.StableAttr().Ino, false)
	return t.EmbeddedInode(), 0
}

// Tmpfile - FUSE call for open(2) with O_TMPFILE: an unnamed file in the upper layer, owned by the caller, which
// it may later link into place.
func (n *Node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	n.root.stats.count(opTmpfile)
	if n.root.cfg.ReadOnly {
		return nil, nil, 0, syscall.EROFS
	}
	up, errno := n.ensureUpperDir()
	if errno != 0 {
		return nil, nil, 0, errno
	}
	fd, err := sysx.Openat(up.fd, ".", unix.O_TMPFILE|unix.O_RDWR, mode&0777)
	if err != nil {
		return nil, nil, 0, toErrno(err)
	}
	p := &newPlace{up: up}
	sysx.Fstat(up.fd, &p.parent)
	s := &cow.Staged{Dirfd: up.fd, Fd: fd, Mode: unix.S_IFREG | mode&0777}
	if err := giveToCaller(ctx, s, p, mode&07777); err != nil {
		s.Close()
		return nil, nil, 0, toErrno(err)
	}
	anon, err := unix.Dup(fd)
	if err != nil {
		s.Close()
		return nil, nil, 0, toErrno(err)
	}
	syscall.CloseOnExec(anon)
	var st unix.Stat_t
	sysx.Fstat(fd, &st)
	child := n.root.newFileNode(up.layer, &st)
	child.anon = anon
	f := &file{node: child, fd: s.TakeFd(), flags: unix.O_RDWR, writable: true}
	fh, fuseFlags := child.registerLocked(f, child.obj, 0, st.Mode)
	ino := n.root.inos.ino(devIno{st.Dev, st.Ino})
	fillAttr(&out.Attr, &st, ino, false)
	inode := n.NewInode(ctx, child, fs.StableAttr{Mode: unix.S_IFREG, Ino: ino, Gen: 1})
	return inode, fh, fuseFlags, 0
}
