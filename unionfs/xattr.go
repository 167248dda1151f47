package unionfs

import (
	"context"
	"syscall"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// objectAt returns how to reach the object n stands for with the sysx calls: a directory descriptor and a name,
// where an empty name means the directory itself (n is a directory), and the layer holding it.
func (n *Node) objectAt() (dirfd int, name string, l *Layer, errno syscall.Errno) {
	if n.isDir() {
		dirs := n.stack()
		if dirs == nil {
			return -1, "", nil, syscall.ESTALE
		}
		if dirs[0].fd < 0 {
			return -1, "", dirs[0].layer, syscall.EOPNOTSUPP // a mount point inside a lower layer
		}
		return dirs[0].fd, "", dirs[0].layer, 0
	}
	dirfd, name, errno = n.location()
	return dirfd, name, n.holder(), errno
}

// Getxattr - FUSE call. The union's private attributes (trusted.overlay.*) read as absent.
func (n *Node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	n.root.stats.count(opGetxattr)
	if whiteout.IsPrivateXattr(attr) {
		return 0, syscall.ENODATA
	}
	if attr == StatsXattr && n.IsRoot() {
		b := n.root.statsJSON()
		if len(dest) == 0 {
			return uint32(len(b)), 0
		}
		if len(dest) < len(b) {
			return uint32(len(b)), syscall.ERANGE
		}
		return uint32(copy(dest, b)), 0
	}
	dirfd, name, l, errno := n.objectAt()
	if errno != 0 {
		return 0, errno
	}
	if len(dest) == 0 {
		sz, err := sysx.Getxattrat(dirfd, name, attr, nil)
		return uint32(sz), n.xattrErrno(l, name, err)
	}
	sz, err := sysx.Getxattrat(dirfd, name, attr, dest)
	if err == syscall.ERANGE {
		sz, err = sysx.Getxattrat(dirfd, name, attr, nil)
		if err == nil {
			return uint32(sz), syscall.ERANGE
		}
	}
	return uint32(sz), n.xattrErrno(l, name, err)
}

// Listxattr - FUSE call. The union's private attributes are left out.
func (n *Node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	n.root.stats.count(opListxattr)
	dirfd, name, l, errno := n.objectAt()
	if errno != 0 {
		return 0, errno
	}
	names, err := sysx.ListxattrAll(dirfd, name)
	if err == syscall.ENOTSUP || err == syscall.ENOSYS {
		names, err = nil, nil // a layer without xattr support: no attributes
	}
	if err != nil {
		return 0, n.root.layerErrno(l, "listxattr", name, err)
	}
	size := 0
	for _, a := range names {
		if !whiteout.IsPrivateXattr(a) {
			size += len(a) + 1
		}
	}
	if len(dest) == 0 {
		return uint32(size), 0
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	off := 0
	for _, a := range names {
		if !whiteout.IsPrivateXattr(a) {
			off += copy(dest[off:], a)
			dest[off] = 0
			off++
		}
	}
	return uint32(size), 0
}

// xattrErrno converts an xattr error. A layer without xattr support (NFSv3, some FUSE lowers) has no attributes
// rather than failing: getxattr reads ENODATA and listxattr an empty list.
func (n *Node) xattrErrno(l *Layer, name string, err error) syscall.Errno {
	switch err {
	case nil:
		return 0
	case syscall.ENOTSUP, syscall.ENOSYS:
		return syscall.ENODATA
	}
	return n.root.layerErrno(l, "xattr", name, err)
}
