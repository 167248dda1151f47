package stack

import (
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Layer is what readers need of one layer of a stack.
type Layer struct {
	// Root is a descriptor of the layer's root directory (O_PATH is enough); absolute redirects are walked from it.
	Root int
	// Aufs says that the layer's root declares aufs markers: only then does ".wh.NAME" white NAME out.
	Aufs bool
}

// Declarations reads which marker formats the layer root rootfd declares: aufs (see DeclaresAufs), and the
// unionfs-fuse meta directory if it has one (2.0's name first, then 1.0's): its name and an O_PATH descriptor the
// caller closes, or "" and -1.
func Declarations(rootfd int) (aufs bool, metaName string, meta int) {
	aufs = DeclaresAufs(rootfd)
	for _, name := range []string{whiteout.UnionfsMetaDir, whiteout.UnionfsLegacyMetaDir} {
		if fd, err := sysx.OpenDir(rootfd, name); err == nil {
			return aufs, name, fd
		}
	}
	return aufs, "", -1
}

// DeclaresAufs reports whether the layer root rootfd holds an aufs marker, which makes ".wh.NAME" entries of the
// layer whiteouts (aufs keeps ".wh..wh.aufs", ".wh..wh.plnk" and ".wh..wh.orph" at the root of every writable
// branch; the union's temporary objects do not count).
func DeclaresAufs(rootfd int) bool {
	fd, err := openList(rootfd)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	aufs := false
	sysx.Getdents(fd, func(name string, _ uint64, _ uint8) {
		if whiteout.IsMarkerName(name) && !whiteout.IsTempName(name) {
			aufs = true
		}
	})
	return aufs
}

// openList opens the directory dirfd for reading its entries, without updating its access time where the caller
// may ask for that (O_NOATIME needs the owner or CAP_FOWNER).
func openList(dirfd int) (int, error) {
	fd, err := sysx.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME, 0)
	if err == unix.EPERM {
		fd, err = sysx.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	}
	return fd, err
}
