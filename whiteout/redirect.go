package whiteout

import (
	"strings"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
)

// The overlay xattrs every reader of layers honours: in the trusted namespace (kernel overlayfs, a daemon
// running as root) and in the user namespace (overlayfs with userxattr, an unprivileged daemon). Readers try them
// in this order.
var (
	// RedirectXattrs hold the lower path of a renamed directory, or where a metadata-only copy's data is.
	RedirectXattrs = []string{OverlayRedirectXattr, "user.overlay.redirect"}
	// MetacopyXattrs mark a metadata-only copy.
	MetacopyXattrs = []string{"trusted.overlay.metacopy", "user.overlay.metacopy"}
	// OpaqueXattrs mark an opaque directory.
	OpaqueXattrs = []string{OverlayOpaqueXattr, OverlayUserOpaqueXattr}
)

// ReadRedirect returns the redirect of name in dirfd (the first of RedirectXattrs it has), or "".
func ReadRedirect(dirfd int, name string) string {
	for _, attr := range RedirectXattrs {
		if v, err := sysx.GetxattrAll(dirfd, name, attr); err == nil && len(v) > 0 {
			return string(v)
		}
	}
	return ""
}

// SplitRedirect splits an absolute redirect ("/a/b", from the layer roots) into its components, dropping empty
// ones; ok is false if it is not absolute or a component is not a plain name. The root ("/") has none.
func SplitRedirect(p string) (comps []string, ok bool) {
	if !strings.HasPrefix(p, "/") {
		return nil, false
	}
	return sysx.SplitNames(p)
}

// ValidRedirect reports whether r has one of the forms overlayfs defines for a redirect: an absolute path from
// the layer roots, or a plain name in the same parent directory.
func ValidRedirect(r string) bool {
	if strings.HasPrefix(r, "/") {
		_, ok := SplitRedirect(r)
		return ok
	}
	return sysx.CheckName(r) == nil
}
