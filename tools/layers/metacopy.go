package layers

import (
	"golang.org/x/sys/unix"

	"strings"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/stack"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// MetacopyData finds the lower file holding the data of the metadata-only copy name in the upper directory
// dirfd, whose lower below is below: the file its redirect xattr names (overlayfs records one when a
// metadata-only copy is renamed: an absolute path, or a name in the same directory), else the one of the same
// name below. The entry's Dirfd stays valid until
// release is called.
func MetacopyData(lowers *Lowers, dirfd int, name string, below *Stack) (e Entry, release func(), ok bool) {
	release = func() {}
	switch r := whiteout.ReadRedirect(dirfd, name); {
	case strings.HasPrefix(r, "/") && lowers != nil:
		res := &stack.Result{}
		release = res.Close
		if lowers.t.LookupPath(r, res) == nil && res.Exists() {
			e, ok = entryOf(res), true
		}
	case r != "" && sysx.CheckName(r) == nil:
		e, ok = below.Lookup(r)
	default:
		e, ok = below.Lookup(name)
	}
	if ok && e.Data != nil {
		e = *e.Data // a lower metadata-only copy: the data is further down
	}
	return e, release, ok && e.Stat.Mode&unix.S_IFMT == unix.S_IFREG
}
