package whiteout

import (
	"strings"
	"syscall"
	"testing"
)

// FuzzMarkerNames checks the name rules of the three formats for any name: the unionfs-fuse hidden name round
// trips and never exceeds NAME_MAX, every aufs whiteout and temporary name is a marker (never shown through the
// union), and the predicates agree with the prefixes they document. The seed corpus runs with every go test;
// make fuzz runs it for FUZZTIME.
func FuzzMarkerNames(f *testing.F) {
	for _, s := range []string{"", ".", "..", "x", ".wh.", ".wh.x", ".wh..wh..opq", ".wh..wh.ltsp-tmp.0011", "x.wh.",
		"wh.x", ".unionfs", ".unionfs-fuse", ".unionfs/", "x_HIDDEN~", "_HIDDEN~", strings.Repeat("a", 247),
		strings.Repeat("a", 248), strings.Repeat("a", 255), "trusted.overlay.opaque", "user.overlay.", "trusted.overlayx",
		"overlay", "aufs", "unionfs-fuse", "unionfs-fuse-1.0", "Overlay", "a\nb", "\xff\xfe", "a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		hidden, err := hiddenName(name)
		if len(name)+len(UnionfsHiddenSuffix) > 255 {
			if err != syscall.ENAMETOOLONG {
				t.Errorf("hiddenName(%d bytes) = %q, %v; want ENAMETOOLONG", len(name), hidden, err)
			}
		} else if back, ok := strings.CutSuffix(hidden, UnionfsHiddenSuffix); err != nil || !ok || back != name || len(hidden) > 255 {
			t.Errorf("hiddenName(%q) = %q, %v: does not round trip", name, hidden, err)
		}
		if IsMarkerName(name) != strings.HasPrefix(name, AufsPrefix) {
			t.Errorf("IsMarkerName(%q) = %v", name, IsMarkerName(name))
		}
		if !IsMarkerName(AufsPrefix + name) {
			t.Errorf("the aufs whiteout of %q is not a marker name", name)
		}
		if IsTempName(name) && !IsMarkerName(name) {
			t.Errorf("the temporary name %q is not a marker name: the union would show it", name)
		}
		if IsRootMetaName(name) != (name == UnionfsMetaDir || name == UnionfsLegacyMetaDir) {
			t.Errorf("IsRootMetaName(%q) = %v", name, IsRootMetaName(name))
		}
		private := strings.HasPrefix(name, "trusted.overlay.") || strings.HasPrefix(name, "user.overlay.")
		if IsPrivateXattr(name) != private {
			t.Errorf("IsPrivateXattr(%q) = %v", name, IsPrivateXattr(name))
		}
		format, err := ByName(name)
		if _, known := Formats[name]; known != (err == nil) {
			t.Errorf("ByName(%q) = %v, %v", name, format, err)
		} else if err != nil && strings.ContainsAny(err.Error(), "\n\r") {
			t.Errorf("ByName(%q): error %q is not one line", name, err)
		} else if err == nil && !strings.HasPrefix(name, format.Name()) {
			t.Errorf("ByName(%q) is the format %s", name, format.Name())
		}
		if tmp := TempName(); !IsTempName(tmp) || !IsMarkerName(tmp) || len(tmp) > 255 || tmp == TempName() {
			t.Errorf("TempName() = %q", tmp)
		}
	})
}
