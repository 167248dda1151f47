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
	n.fs.fault(0, "")
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
