package faultfs

import (
	"context"
	"path"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// node is a loopback node whose operations consult the FS's rules first.
type node struct {
	*fs.LoopbackNode
	fs *FS
}

// stale reports whether the node was made stale (see FS.MarkStale).
func (n *node) stale() bool { return n.fs.isStale(n.StableAttr()) }

var (
	_ fs.NodeWrapChilder    = (*node)(nil)
	_ fs.NodeLookuper       = (*node)(nil)
	_ fs.NodeOpener         = (*node)(nil)
	_ fs.NodeGetattrer      = (*node)(nil)
	_ fs.NodeOpendirHandler = (*node)(nil)
	_ fs.NodeGetxattrer     = (*node)(nil)
	_ fs.NodeSetxattrer     = (*node)(nil)
	_ fs.NodeListxattrer    = (*node)(nil)
	_ fs.NodeRemovexattrer  = (*node)(nil)
	_ fs.NodeReadlinker     = (*node)(nil)
	_ fs.NodeCreater        = (*node)(nil)
	_ fs.NodeTmpfiler       = (*node)(nil)
	_ fs.NodeMkdirer        = (*node)(nil)
	_ fs.NodeMknoder        = (*node)(nil)
	_ fs.NodeSymlinker      = (*node)(nil)
	_ fs.NodeLinker         = (*node)(nil)
	_ fs.NodeRenamer        = (*node)(nil)
)

// WrapChild makes every child a node of the same FS.
func (n *node) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	return &node{LoopbackNode: ops.(*fs.LoopbackNode), fs: n.fs}
}

// rel is the node's path relative to the root.
func (n *node) rel() string { return n.Path(nil) }

// Lookup - FUSE call.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.fs.fault(OpLookup, path.Join(n.rel(), name)); errno != 0 {
		return nil, errno
	}
	if n.stale() {
		return nil, syscall.ESTALE
	}
	ch, errno := n.LoopbackNode.Lookup(ctx, name, out)
	if errno == 0 {
		if id := ch.StableAttr(); n.fs.isStale(id) {
			// The name's object as a new node (a later generation), as a server hands out a new handle.
			for n.fs.isStale(id) {
				id.Gen++
			}
			ch = n.NewInode(ctx, &fs.LoopbackNode{RootData: n.RootData}, id)
		}
	}
	if errno == 0 && n.fs.zeroBlk.Load() {
		out.Blocks = 0
	}
	return ch, errno
}

// Open - FUSE call. The file handle fails reads by the rules too.
func (n *node) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	p := n.rel()
	if errno := n.fs.fault(OpOpen, p); errno != 0 {
		return nil, 0, errno
	}
	if n.stale() {
		return nil, 0, syscall.ESTALE
	}
	fh, fl, errno := n.LoopbackNode.Open(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return &file{LoopbackFile: fh.(*fs.LoopbackFile), fs: n.fs, path: p}, fl, 0
}

// Getattr - FUSE call.
func (n *node) Getattr(ctx context.Context, f fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if errno := n.fs.fault(OpGetattr, n.rel()); errno != 0 {
		return errno
	}
	if n.stale() {
		return syscall.ESTALE
	}
	if ff, ok := f.(*file); ok {
		f = ff.LoopbackFile
	}
	errno := n.LoopbackNode.Getattr(ctx, f, out)
	if errno == 0 && n.fs.zeroBlk.Load() {
		out.Blocks = 0
	}
	return errno
}

// Readlink - FUSE call (latency only).
func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	n.fs.fault(0, "")
	return n.LoopbackNode.Readlink(ctx)
}

// OpendirHandle - FUSE call. With SetDTUnknown the listing carries no types.
func (n *node) OpendirHandle(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if errno := n.fs.fault(OpReaddir, n.rel()); errno != 0 {
		return nil, 0, errno
	}
	if n.stale() {
		return nil, 0, syscall.ESTALE
	}
	fh, fl, errno := n.LoopbackNode.OpendirHandle(ctx, flags)
	if errno != 0 {
		return nil, 0, errno
	}
	return &dir{FileHandle: fh, fs: n.fs}, fl, 0
}

// Getxattr - FUSE call.
func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if errno := n.fs.xattrFault(); errno != 0 {
		return 0, errno
	}
	return n.LoopbackNode.Getxattr(ctx, attr, dest)
}

// Setxattr - FUSE call.
func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if errno := n.fs.xattrFault(); errno != 0 {
		return errno
	}
	if errno := n.fs.fault(OpSetxattr, n.rel()); errno != 0 {
		return errno
	}
	return n.LoopbackNode.Setxattr(ctx, attr, data, flags)
}

// Listxattr - FUSE call.
func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if errno := n.fs.xattrFault(); errno != 0 {
		return 0, errno
	}
	return n.LoopbackNode.Listxattr(ctx, dest)
}

// Removexattr - FUSE call.
func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if errno := n.fs.xattrFault(); errno != 0 {
		return errno
	}
	return n.LoopbackNode.Removexattr(ctx, attr)
}

// Create - FUSE call.
func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	p := path.Join(n.rel(), name)
	if errno := n.fs.fault(OpCreate, p); errno != 0 {
		return nil, nil, 0, errno
	}
	ch, fh, fl, errno := n.LoopbackNode.Create(ctx, name, flags, mode, out)
	if errno != 0 {
		return nil, nil, 0, errno
	}
	return ch, &file{LoopbackFile: fh.(*fs.LoopbackFile), fs: n.fs, path: p}, fl, 0
}

// Tmpfile - FUSE call. Refused, as by filesystems without O_TMPFILE: clients fall back to named temporary files.
func (n *node) Tmpfile(ctx context.Context, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EOPNOTSUPP
}

// Mkdir - FUSE call.
func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.fs.fault(OpCreate, path.Join(n.rel(), name)); errno != 0 {
		return nil, errno
	}
	return n.LoopbackNode.Mkdir(ctx, name, mode, out)
}

// Mknod - FUSE call.
func (n *node) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.fs.fault(OpCreate, path.Join(n.rel(), name)); errno != 0 {
		return nil, errno
	}
	return n.LoopbackNode.Mknod(ctx, name, mode, rdev, out)
}

// Symlink - FUSE call.
func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.fs.fault(OpCreate, path.Join(n.rel(), name)); errno != 0 {
		return nil, errno
	}
	return n.LoopbackNode.Symlink(ctx, target, name, out)
}

// Link - FUSE call.
func (n *node) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	if errno := n.fs.fault(OpCreate, path.Join(n.rel(), name)); errno != 0 {
		return nil, errno
	}
	if t, ok := target.(*node); ok {
		target = t.LoopbackNode
	}
	return n.LoopbackNode.Link(ctx, target, name, out)
}

// Rename - FUSE call. A rename that leaves a whiteout creates an object too.
func (n *node) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	p := path.Join(n.rel(), name)
	if errno := n.fs.fault(OpRename, p); errno != 0 {
		return errno
	}
	const renameWhiteout = 1 << 2 // RENAME_WHITEOUT
	if flags&renameWhiteout != 0 {
		if errno := n.fs.fault(OpCreate, p); errno != 0 {
			return errno
		}
	}
	if np, ok := newParent.(*node); ok {
		newParent = np.LoopbackNode
	}
	return n.LoopbackNode.Rename(ctx, name, newParent, newName, flags)
}

// file is an open file whose reads consult the rules. It offers no passthrough descriptor, so reads reach it.
type file struct {
	*fs.LoopbackFile
	fs   *FS
	path string
}

// Read - FUSE call.
func (f *file) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if errno := f.fs.fault(OpRead, f.path); errno != 0 {
		return nil, errno
	}
	return f.LoopbackFile.Read(ctx, dest, off)
}

// Write - FUSE call.
func (f *file) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if errno := f.fs.fault(OpWrite, f.path); errno != 0 {
		return 0, errno
	}
	return f.LoopbackFile.Write(ctx, data, off)
}

// Writev - FUSE call.
func (f *file) Writev(ctx context.Context, data [][]byte, off int64) (uint32, syscall.Errno) {
	if errno := f.fs.fault(OpWrite, f.path); errno != 0 {
		return 0, errno
	}
	return f.LoopbackFile.Writev(ctx, data, off)
}

// Allocate - FUSE call (fallocate counts as a write).
func (f *file) Allocate(ctx context.Context, off uint64, size uint64, mode uint32) syscall.Errno {
	if errno := f.fs.fault(OpWrite, f.path); errno != 0 {
		return errno
	}
	return f.LoopbackFile.Allocate(ctx, off, size, mode)
}

// PassthroughFd - never: the kernel must send every read.
func (f *file) PassthroughFd() (int, bool) { return -1, false }

// dir is an open directory; with SetDTUnknown its entries have no type.
type dir struct {
	fs.FileHandle
	fs *FS
}

var (
	_ fs.FileReaddirenter = (*dir)(nil)
	_ fs.FileSeekdirer    = (*dir)(nil)
	_ fs.FileReleasedirer = (*dir)(nil)
	_ fs.FileFsyncdirer   = (*dir)(nil)
)

// Readdirent - FUSE call.
func (d *dir) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	de, errno := d.FileHandle.(fs.FileReaddirenter).Readdirent(ctx)
	if de != nil && d.fs.dtUnknown.Load() {
		e := *de
		e.Mode = 0
		de = &e
	}
	return de, errno
}

// Seekdir - FUSE call.
func (d *dir) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	return d.FileHandle.(fs.FileSeekdirer).Seekdir(ctx, off)
}

// Releasedir - FUSE call.
func (d *dir) Releasedir(ctx context.Context, flags uint32) {
	d.FileHandle.(fs.FileReleasedirer).Releasedir(ctx, flags)
}

// Fsyncdir - FUSE call.
func (d *dir) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	return d.FileHandle.(fs.FileFsyncdirer).Fsyncdir(ctx, flags)
}
