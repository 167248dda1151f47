package whiteout

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
)

// Dir is a directory of the upper layer as a marker writer needs it.
type Dir struct {
	Fd   int    // the directory (an O_PATH descriptor is enough)
	Path string // its path from the layer root, "" for the root; unionfs-fuse keeps markers in a tree by path
	Root int    // the layer root directory
}

// Format writes the markers of one whiteout format into the upper layer. Every method leaves the merged view
// consistent at each step: a name is never briefly visible with the wrong content, and a failure leaves the view
// as it was.
type Format interface {
	// Name is the format's name, as --whiteout takes it.
	Name() string

	// Hide makes the lower objects called name in d invisible. If the upper layer has an object called name it
	// is moved to the temporary name tmp in d (which the caller then deletes, see Removed) and moved reports
	// true; formats whose markers live beside the object leave it in place and report false.
	Hide(d Dir, name, tmp string) (moved bool, err error)

	// Publish moves the new object built under the temporary name tmp in d to name, replacing this format's
	// whiteout of name if there is one. isDir says whether the object is a directory. The aufs and unionfs-fuse
	// formats, whose whiteouts live beside the name, also accept an object already moved to name (tmp == name):
	// they then only remove the whiteout.
	Publish(d Dir, tmp, name string, isDir bool) error

	// MarkOpaque makes the upper directory now called cur in src, which will be (or is) called name in dst, hide
	// every lower directory called name in dst. The overlay and aufs formats mark the directory itself;
	// unionfs-fuse marks the path it will have.
	MarkOpaque(src Dir, cur string, dst Dir, name string) error

	// ClearDir removes this format's markers from the upper directory sub, called name in d, so that it can be
	// removed once the merged view shows it empty.
	ClearDir(d Dir, name string, sub int) error

	// Redirects reports whether the format can record a directory's rename (Redirect) instead of copying the
	// directory's lower content.
	Redirects() bool

	// Redirect records that the upper directory dirfd takes its lower content from the lower directory at path
	// (absolute from the layer roots, beginning with "/") or called path in the same parent (no "/").
	Redirect(dirfd int, path string) error

	// Move renames the upper object name in src to newName in dst, both directories of the upper layer. hideOld
	// leaves name hiding the lower objects of that name; replaceMarker says a whiteout of this format hides newName
	// and is to be replaced by the object. isDir says whether the object is a directory. The object is never
	// visible under neither name, nor a lower object at newName once it is there.
	Move(src Dir, name string, dst Dir, newName string, isDir, hideOld, replaceMarker bool) error

	// Metacopies reports whether an upper layer in this format may hold metadata-only copies: kernel overlayfs
	// (metacopy=on) follows them to the data, aufs and unionfs-fuse would show their empty data.
	Metacopies() bool

	// MarkerTree returns the directory at the upper layer's root that holds this format's markers by path
	// (unionfs-fuse's meta directory), or "" if the markers live in the directories they concern.
	MarkerTree() string

	// Declare readies the upper layer whose root is the directory root for this format's markers, before any is
	// written: aufs's base marker, unionfs-fuse's meta directory. Readers (Detect, aufs) recognize the format by them.
	Declare(root int) error
}

// ForUpper returns the format to write into the upper layer whose root is the directory root, given the format f
// chosen for it: f, except that unionfs-fuse keeps the meta directory the layer already has (1.0's, say), so that
// an upper written by unionfs-fuse 1.0 stays readable by it.
func ForUpper(f Format, root int) Format {
	u, ok := f.(Unionfs)
	if !ok {
		return f
	}
	if have, ok := Detect(root); ok {
		if h, ok := have.(Unionfs); ok {
			u.MetaDir = h.MetaDir
		}
	}
	return u
}

// Formats lists the formats by name. "unionfs-fuse" is the layout of unionfs-fuse 2.0 and later; "unionfs-fuse-1.0"
// that of 1.0, which Debian and Ubuntu ship.
var Formats = map[string]Format{
	"overlay":          Overlay{},
	"aufs":             Aufs{},
	"unionfs-fuse":     Unionfs{MetaDir: UnionfsMetaDir},
	"unionfs-fuse-1.0": Unionfs{MetaDir: UnionfsLegacyMetaDir},
}

// ByName returns the format called name.
func ByName(name string) (Format, error) {
	if f, ok := Formats[name]; ok {
		return f, nil
	}
	return nil, fmt.Errorf("unknown whiteout format %q (want overlay, aufs, unionfs-fuse or unionfs-fuse-1.0)", name)
}

// Detect returns the format an existing upper layer is written in: unionfs-fuse if its root holds a meta
// directory, aufs if its root holds aufs markers, overlay if its root carries overlay xattrs or whiteouts, and ok
// false for an upper without markers.
func Detect(rootfd int) (f Format, ok bool) {
	for _, meta := range []string{UnionfsMetaDir, UnionfsLegacyMetaDir} {
		var st unix.Stat_t
		if err := sysx.Fstatat(rootfd, meta, &st); err == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return Unionfs{MetaDir: meta}, true
		}
	}
	dfd, err := sysx.Openat(rootfd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, false
	}
	defer unix.Close(dfd)
	var aufs, overlay bool
	sysx.Getdents(dfd, func(name string, _ uint64, typ uint8) {
		if IsMarkerName(name) {
			aufs = true
		}
		if typ == unix.DT_CHR {
			var st unix.Stat_t
			if sysx.Fstatat(dfd, name, &st) == nil && IsOverlayWhiteout(&st) {
				overlay = true
			}
		}
	})
	if aufs {
		return Aufs{}, true
	}
	if names, err := sysx.ListxattrAll(rootfd, ""); err == nil {
		for _, n := range names {
			if IsPrivateXattr(n) {
				overlay = true
			}
		}
	}
	if overlay {
		return Overlay{}, true
	}
	return nil, false
}

// TempName returns a fresh name for an object under construction in an upper directory. It is a marker name, so
// the merged view never shows it and no user can create or open it through the union.
func TempName() string {
	var b [8]byte
	rand.Read(b[:])
	return TempPrefix + hex.EncodeToString(b[:])
}

// TempPrefix begins the names of the union's temporary objects; `check` tools remove leftovers after a crash.
const TempPrefix = AufsPrefix + AufsPrefix + "ltsp-tmp."

// IsTempName reports whether name is one of the union's temporary objects.
func IsTempName(name string) bool { return strings.HasPrefix(name, TempPrefix) }

// renameNoReplace renames old to new in d, failing with EEXIST if new exists.
func renameNoReplace(d Dir, old, new string) error {
	return unix.Renameat2(d.Fd, old, d.Fd, new, unix.RENAME_NOREPLACE)
}

// removeTree removes the upper object name in dirfd, a directory with everything in it included. It is used on
// temporary objects and marker trees only.
func removeTree(dirfd int, name string) error {
	err := unix.Unlinkat(dirfd, name, 0)
	if err == nil || errors.Is(err, syscall.ENOENT) {
		return nil
	}
	if !errors.Is(err, syscall.EISDIR) && !errors.Is(err, syscall.EPERM) {
		return err
	}
	sub, err := sysx.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		return err
	}
	var names []string
	err = sysx.Getdents(sub, func(n string, _ uint64, _ uint8) {
		if n != "." && n != ".." {
			names = append(names, n)
		}
	})
	if err == nil {
		for _, n := range names {
			if err = removeTree(sub, n); err != nil {
				break
			}
		}
	}
	unix.Close(sub)
	if err != nil {
		return err
	}
	return unix.Unlinkat(dirfd, name, unix.AT_REMOVEDIR)
}

// RemoveTree removes the upper object name in dirfd and, for a directory, everything in it.
func RemoveTree(dirfd int, name string) error { return removeTree(dirfd, name) }

// ClearMarkers removes from the upper directory dirfd every entry the merged view never shows: overlay
// whiteouts, aufs markers and the union's temporary objects.
func ClearMarkers(dirfd int) error {
	return removeEntries(dirfd, func(n string, typ uint8) bool {
		if IsMarkerName(n) {
			return true
		}
		if typ != unix.DT_CHR && typ != unix.DT_UNKNOWN {
			return false
		}
		wo, _, _ := isWhiteoutAt(dirfd, n)
		return wo
	})
}
