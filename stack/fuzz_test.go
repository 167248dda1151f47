package stack

import (
	"strings"
	"testing"

	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// FuzzAufsTarget checks the parser of aufs marker names in directory listings against its inverse: the
// marker of any name other than an aufs meta name parses back to that name, and whatever parses is a marker whose
// name it came from. The seed corpus runs with every go test; make fuzz runs it for FUZZTIME.
func FuzzAufsTarget(f *testing.F) {
	for _, s := range []string{"", "x", ".wh.", ".wh.x", ".wh..wh..opq", ".wh..wh.ltsp-tmp.00", ".wh..wh.", "..",
		".", "a\nb", "\xff", strings.Repeat("a", 252)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		target, ok := aufsTarget(whiteout.AufsPrefix + name)
		if want := name != "" && !strings.HasPrefix(name, whiteout.AufsPrefix); ok != want || ok && target != name {
			t.Errorf("aufsTarget(%q) = %q, %v", whiteout.AufsPrefix+name, target, ok)
		}
		if target, ok := aufsTarget(name); ok && (whiteout.AufsPrefix+target != name || !whiteout.IsMarkerName(name)) {
			t.Errorf("aufsTarget(%q) = %q", name, target)
		}
	})
}
