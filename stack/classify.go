package stack

import (
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// EntryKind is what an entry of a layer directory is to the merged view.
type EntryKind uint8

const (
	// Shown entries are objects of the merged view (unless a layer above hides them).
	Shown EntryKind = iota
	// Whiteout entries are overlay whiteouts (a character device 0/0, or an xwhiteout in a directory of "x"
	// opacity), named as the name they hide.
	Whiteout
	// AufsWhiteout entries are aufs markers ".wh.NAME" in a layer that declares aufs; they hide Entry.Hides.
	AufsWhiteout
	// Hidden entries are never shown and hide nothing: aufs's own ".wh..wh.*" names (the opaque marker among
	// them), ".wh." names in a layer that does not declare aufs, the meta directories at a layer's root.
	Hidden
	// Temp entries are the union's temporary objects (leftovers after a crash, or work in progress).
	Temp
)

// Entry is one classified entry of a layer directory.
type Entry struct {
	Name  string
	Ino   uint64
	Type  uint8     // DT_* type; the entry was stat'ed where getdents did not tell enough to classify it
	Kind  EntryKind //
	Hides string    // for Whiteout and AufsWhiteout entries, the name they hide
}

// DirContext is what classifying a layer directory's entries depends on.
type DirContext struct {
	Aufs    bool             // the layer declares aufs (Layer.Aufs)
	AtRoot  bool             // the directory is the layer's root, which holds the meta directories
	Opacity whiteout.Opacity // the directory's opacity: only an Xwhiteouts directory holds xwhiteouts
	// Skip, if set, names entries the caller has no use for (a layer above has them): they are neither
	// classified nor passed on, which spares a stat where getdents does not tell enough.
	Skip func(name string) bool
}

// ReadDir calls fn with every entry of the layer directory dirfd ("." and ".." excluded), classified, until fn
// returns an error, which ReadDir returns. The entry fn gets is valid until fn returns. An entry removed between getdents and the stat that classifies it is
// skipped.
func ReadDir(dirfd int, c DirContext, fn func(e *Entry) error) error {
	fd, err := openList(dirfd)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var ferr error
	var e Entry // one for the whole listing: fn gets a pointer, and an entry each would be an allocation each
	err = sysx.Getdents(fd, func(name string, ino uint64, typ uint8) {
		if ferr != nil || name == "." || name == ".." || c.Skip != nil && c.Skip(name) {
			return
		}
		e = Entry{Name: name, Ino: ino, Type: typ}
		switch {
		case whiteout.IsTempName(name):
			e.Kind = Temp
		case c.AtRoot && whiteout.IsRootMetaName(name):
			e.Kind = Hidden
		case whiteout.IsMarkerName(name):
			e.Kind = Hidden
			if h, ok := aufsTarget(name); ok && c.Aufs {
				e.Kind, e.Hides = AufsWhiteout, h
			}
		case typ == unix.DT_UNKNOWN || typ == unix.DT_CHR || typ == unix.DT_REG && c.Opacity == whiteout.Xwhiteouts:
			// The type is unknown (some NFS servers, older filesystems) or the entry may be a whiteout.
			var st unix.Stat_t
			if err := sysx.Fstatat(dirfd, name, &st); err != nil {
				if err != syscall.ENOENT {
					ferr = &Error{Op: "stat", Name: name, Err: err}
				}
				return
			}
			e.Type = uint8((st.Mode & unix.S_IFMT) >> 12)
			if whiteout.IsOverlayWhiteout(&st) ||
				e.Type == unix.DT_REG && c.Opacity == whiteout.Xwhiteouts && whiteout.IsXwhiteout(dirfd, name, &st) {
				e.Kind, e.Hides = Whiteout, name
			}
		}
		ferr = fn(&e)
	})
	if ferr != nil {
		return ferr
	}
	return err
}

// aufsTarget returns the name an aufs marker ".wh.NAME" whites out; the aufs meta names ".wh..wh.*" (the union's
// temporary objects among them) white out nothing.
func aufsTarget(marker string) (string, bool) {
	name, ok := strings.CutPrefix(marker, whiteout.AufsPrefix)
	if !ok || name == "" || strings.HasPrefix(name, whiteout.AufsPrefix) {
		return "", false
	}
	return name, true
}

// MetaKind is what an entry of a unionfs-fuse meta-tree directory is.
type MetaKind uint8

const (
	// MetaWhiteout entries "NAME_HIDDEN~" hide MetaEntry.Hides (a file; unionfs-fuse 1.0 hides a directory with
	// a directory).
	MetaWhiteout MetaKind = iota
	// MetaDir entries are directories of the tree, holding the markers of the directory of that name.
	MetaDir
	// MetaOther entries are neither: nothing unionfs-fuse writes.
	MetaOther
)

// MetaEntry is one classified entry of a meta-tree directory.
type MetaEntry struct {
	Name  string
	Kind  MetaKind
	Hides string // for MetaWhiteout entries, the name they hide
}

// ReadMeta calls fn with every entry of the meta-tree directory dirfd, classified, until fn returns an error,
// which ReadMeta returns.
func ReadMeta(dirfd int, fn func(e *MetaEntry) error) error {
	fd, err := openList(dirfd)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var ferr error
	var e MetaEntry // one for the whole listing, as in ReadDir
	err = sysx.Getdents(fd, func(name string, _ uint64, typ uint8) {
		if ferr != nil || name == "." || name == ".." {
			return
		}
		e = MetaEntry{Name: name, Kind: MetaOther}
		if h, ok := strings.CutSuffix(name, whiteout.UnionfsHiddenSuffix); ok && h != "" {
			e.Kind, e.Hides = MetaWhiteout, h
		} else {
			if typ == unix.DT_UNKNOWN {
				var st unix.Stat_t
				if sysx.Fstatat(dirfd, name, &st) != nil {
					return
				}
				typ = uint8((st.Mode & unix.S_IFMT) >> 12)
			}
			if typ == unix.DT_DIR {
				e.Kind = MetaDir
			}
		}
		ferr = fn(&e)
	})
	if ferr != nil {
		return ferr
	}
	return err
}
