package whiteout

import (
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
)

// Marker names and xattrs of the three formats.
const (
	// OverlayOpaqueXattr marks an overlay opaque directory with the value "y".
	OverlayOpaqueXattr = "trusted.overlay.opaque"
	// OverlayUserOpaqueXattr is OverlayOpaqueXattr for overlayfs mounts with userxattr.
	OverlayUserOpaqueXattr = "user.overlay.opaque"
	// OverlayWhiteoutXattr marks an empty regular file as an xwhiteout inside a directory whose opaque xattr is "x".
	OverlayWhiteoutXattr = "trusted.overlay.whiteout"
	// OverlayUserWhiteoutXattr is OverlayWhiteoutXattr for userxattr mounts.
	OverlayUserWhiteoutXattr = "user.overlay.whiteout"
	// OverlayRedirectXattr holds the lower path of a renamed overlay directory.
	OverlayRedirectXattr = "trusted.overlay.redirect"

	// AufsPrefix begins every aufs marker name; ".wh.NAME" whites out NAME.
	AufsPrefix = ".wh."
	// AufsOpaque inside a directory makes it opaque.
	AufsOpaque = ".wh..wh..opq"

	// UnionfsMetaDir is the unionfs-fuse (2.0 and later) meta directory at the root of a branch.
	UnionfsMetaDir = ".unionfs"
	// UnionfsLegacyMetaDir is the unionfs-fuse 1.0 meta directory.
	UnionfsLegacyMetaDir = ".unionfs-fuse"
	// UnionfsHiddenSuffix ends a unionfs-fuse whiteout name in the meta tree.
	UnionfsHiddenSuffix = "_HIDDEN~"
)

// overlayPrefixes are the xattr namespaces overlayfs keeps its private attributes in.
var overlayPrefixes = []string{"trusted.overlay.", "user.overlay."}

// IsOverlayWhiteout reports whether st describes an overlay whiteout: a character device with device number 0/0.
func IsOverlayWhiteout(st *unix.Stat_t) bool {
	return st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0
}

// IsMarkerName reports whether a directory entry called name is a marker of some format and must never be shown
// in the merged view, in any directory.
func IsMarkerName(name string) bool {
	return strings.HasPrefix(name, AufsPrefix)
}

// IsRootMetaName reports whether name, found at the root of a layer, is a meta directory of some format and must
// never be shown in the merged view.
func IsRootMetaName(name string) bool {
	return name == UnionfsMetaDir || name == UnionfsLegacyMetaDir
}

// IsPrivateXattr reports whether attr is an attribute a union keeps for itself (overlayfs's trusted.overlay.* and
// user.overlay.*): it is never listed, read or changed through the merged view.
func IsPrivateXattr(attr string) bool {
	for _, p := range overlayPrefixes {
		if strings.HasPrefix(attr, p) {
			return true
		}
	}
	return false
}

// Opacity says how a layer directory limits the merge with the layers below it.
type Opacity int

const (
	// Transparent directories merge with the directories of the same name below.
	Transparent Opacity = iota
	// Opaque directories hide everything below them.
	Opaque
	// Xwhiteouts directories merge, but some of their empty regular files are whiteouts (overlay "x" opacity).
	Xwhiteouts
)

// DirOpacity reads the opacity of the directory name in dirfd (an empty name means dirfd itself) from the markers
// of every format. A layer without xattr support is not an error: only its aufs marker is then consulted.
func DirOpacity(dirfd int, name string) (Opacity, error) {
	var buf [2]byte
	for _, attr := range []string{OverlayOpaqueXattr, OverlayUserOpaqueXattr} {
		n, err := sysx.Getxattrat(dirfd, name, attr, buf[:])
		switch {
		case err == nil && n == 1 && buf[0] == 'y':
			return Opaque, nil
		case err == nil && n == 1 && buf[0] == 'x':
			return Xwhiteouts, nil
		case err == nil, err == syscall.ENODATA, err == syscall.ERANGE, isUnsupported(err):
			continue
		default:
			return Transparent, err
		}
	}
	var st unix.Stat_t
	if name == "" {
		if err := sysx.Fstatat(dirfd, AufsOpaque, &st); err == nil {
			return Opaque, nil
		}
		return Transparent, nil
	}
	sub, err := sysx.OpenDir(dirfd, name)
	if err != nil {
		if err == syscall.EXDEV {
			return Transparent, nil
		}
		return Transparent, err
	}
	defer unix.Close(sub)
	if err := sysx.Fstatat(sub, AufsOpaque, &st); err == nil {
		return Opaque, nil
	}
	return Transparent, nil
}

// HasAufsWhiteout reports whether dirfd holds the aufs whiteout ".wh.NAME" for name.
//
// A marker that cannot be read is an error, not an absent marker: guessing would show what was deleted.
func HasAufsWhiteout(dirfd int, name string) (bool, error) {
	if len(name) > 255-len(AufsPrefix) {
		return false, nil
	}
	return hasEntry(dirfd, AufsPrefix+name)
}

// HasUnionfsWhiteout reports whether the unionfs-fuse meta directory meta holds the marker "NAME_HIDDEN~" for
// name. A marker that cannot be read is an error, as in HasAufsWhiteout.
func HasUnionfsWhiteout(meta int, name string) (bool, error) {
	if len(name)+len(UnionfsHiddenSuffix) > 255 {
		return false, nil
	}
	return hasEntry(meta, name+UnionfsHiddenSuffix)
}

// hasEntry reports whether dirfd has an entry called name.
func hasEntry(dirfd int, name string) (bool, error) {
	var st unix.Stat_t
	switch err := sysx.Fstatat(dirfd, name, &st); err {
	case nil:
		return true, nil
	case syscall.ENOENT:
		return false, nil
	default:
		return false, err
	}
}

// IsXwhiteout reports whether the entry name in dirfd, described by st, is an overlay xwhiteout. Only directories
// of Xwhiteouts opacity hold them.
func IsXwhiteout(dirfd int, name string, st *unix.Stat_t) bool {
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size != 0 {
		return false
	}
	for _, attr := range []string{OverlayWhiteoutXattr, OverlayUserWhiteoutXattr} {
		if _, err := sysx.Getxattrat(dirfd, name, attr, nil); err == nil {
			return true
		}
	}
	return false
}

func isUnsupported(err error) bool {
	return err == syscall.ENOTSUP || err == syscall.EOPNOTSUPP || err == syscall.ENOSYS
}
