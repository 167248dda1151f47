package layers

import (
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Meta is a directory of a unionfs-fuse meta tree that belongs to the upper directory being walked: the tree's
// root for the upper layer's root, its subdirectory of the same path for the directories below.
type Meta struct {
	Tree string // the meta tree: whiteout.UnionfsMetaDir or whiteout.UnionfsLegacyMetaDir
	Fd   int
}

// OpenMetas opens the meta trees an upper layer has at its root rootfd.
func OpenMetas(rootfd int) []Meta {
	var metas []Meta
	for _, tree := range []string{whiteout.UnionfsMetaDir, whiteout.UnionfsLegacyMetaDir} {
		if fd, err := sysx.OpenDir(rootfd, tree); err == nil {
			metas = append(metas, Meta{Tree: tree, Fd: fd})
		}
	}
	return metas
}

// SubMetas opens the meta directories that belong to the subdirectory name: those of metas that have one.
func SubMetas(metas []Meta, name string) []Meta {
	var out []Meta
	for _, m := range metas {
		if fd, err := sysx.OpenDir(m.Fd, name); err == nil {
			out = append(out, Meta{Tree: m.Tree, Fd: fd})
		}
	}
	return out
}

// CloseMetas closes the meta directories.
func CloseMetas(metas []Meta) {
	for _, m := range metas {
		unix.Close(m.Fd)
	}
}
