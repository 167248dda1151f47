package check

import (
	"fmt"

	"github.com/ltsp/ltsp-unionfs/internal/inuse"
)

// BusyError says that a mount uses the upper layer, so that changing it underneath would corrupt the mount's
// view (or the change would be undone by the mount).
type BusyError struct {
	Upper string
	User  string // the mount or process using it, for a person
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("%s is in use as the upper layer of %s: unmount it first", e.Upper, e.User)
}

// RefuseInUse returns a *BusyError if a mount uses the directory upper as its upper layer (see InUse).
func RefuseInUse(upper string) error {
	if user, ok := InUse(upper); ok {
		return &BusyError{Upper: upper, User: user}
	}
	return nil
}

// InUse reports whether a mount or FUSE daemon uses the directory upper as its upper layer, and describes it
// (see inuse.Upper); an upper that cannot be examined counts as not in use, and the command fails on it later.
func InUse(upper string) (string, bool) {
	who, err := inuse.Upper(upper)
	return who, err == nil && who != ""
}
