package check

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/inuse"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/stack"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// newLayers makes a lower layer with a few objects and an empty upper layer.
func newLayers(t *testing.T) (lower, upper string) {
	t.Helper()
	testutil.RequireRoot(t)
	d := t.TempDir()
	lower, upper = filepath.Join(d, "lower"), filepath.Join(d, "upper")
	for _, p := range []string{lower + "/d/sub", lower + "/e", upper} {
		must(t, os.MkdirAll(p, 0755))
	}
	for _, f := range []string{"a", "b", "d/x", "d/sub/y", "e/z"} {
		must(t, os.WriteFile(filepath.Join(lower, f), []byte("lower "+f+"\n"), 0644))
	}
	return lower, upper
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mkWhiteout(t *testing.T, p string) { must(t, unix.Mknod(p, unix.S_IFCHR, 0)) }
func setx(t *testing.T, p, attr, v string) {
	must(t, unix.Lsetxattr(p, attr, []byte(v), 0))
}
func write(t *testing.T, p, content string) {
	must(t, os.MkdirAll(filepath.Dir(p), 0755))
	must(t, os.WriteFile(p, []byte(content), 0644))
}

// found returns the problems of rep as "kind path" lines, sorted.
func found(rep *Report) []string {
	var out []string
	for _, p := range rep.Problems {
		out = append(out, p.Kind+" "+p.Path)
	}
	sort.Strings(out)
	return out
}

func wantProblems(t *testing.T, rep *Report, want ...string) {
	t.Helper()
	sort.Strings(want)
	got := found(rep)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("problems:\n  got  %q\n  want %q", got, want)
	}
}

// TestCheckRepairsFixable builds every fixable problem in an overlay-format upper beside correct markers of the
// same kinds, checks that exactly the problems are reported, that --repair fixes each, and that a second check
// is clean and the correct markers are still there.
func TestCheckRepairsFixable(t *testing.T) {
	lower, upper := newLayers(t)
	// Correct markers: a whiteout of a lower file, an opaque directory, a redirect to a lower directory, a
	// metadata-only copy whose data is below.
	mkWhiteout(t, upper+"/a")
	must(t, os.Mkdir(upper+"/e", 0755))
	setx(t, upper+"/e", whiteout.OverlayOpaqueXattr, "y")
	must(t, os.Mkdir(upper+"/moved", 0755))
	setx(t, upper+"/moved", whiteout.OverlayRedirectXattr, "/d")
	must(t, os.Mkdir(upper+"/moved/sub", 0755))
	mkWhiteout(t, upper+"/moved/sub/y") // hides d/sub/y through the redirect
	write(t, upper+"/b", "")
	must(t, os.Truncate(upper+"/b", 8))
	setx(t, upper+"/b", "trusted.overlay.metacopy", "")
	// Problems.
	temp := whiteout.TempPrefix + "0123456789abcdef"
	write(t, upper+"/d/"+temp, "half a copy")
	must(t, os.MkdirAll(upper+"/"+temp+"x/inside", 0755))
	mkWhiteout(t, upper+"/nothing")         // no lower has it
	mkWhiteout(t, upper+"/e/z")             // e is opaque, but the lower has e/z: not useless
	mkWhiteout(t, upper+"/e/none")          // no lower has e/none
	mkWhiteout(t, upper+"/moved/sub/other") // no d/sub/other
	must(t, os.Mkdir(upper+"/lost", 0755))
	setx(t, upper+"/lost", whiteout.OverlayRedirectXattr, "/gone/away")
	write(t, upper+"/file", "x")
	setx(t, upper+"/file", whiteout.OverlayOpaqueXattr, "y")

	opt := Options{Lowers: []string{lower}}
	rep, err := Check(upper, opt)
	must(t, err)
	fixable := []string{
		KindTempObject + " /d/" + temp, KindTempObject + " /" + temp + "x",
		KindUselessWhiteout + " /nothing", KindUselessWhiteout + " /e/none", KindUselessWhiteout + " /moved/sub/other",
		KindBadRedirect + " /lost", KindOpaqueNonDir + " /file",
	}
	wantProblems(t, rep, fixable...)
	if rep.Unrepaired() != len(fixable) || strings.Join(rep.Formats, ",") != "overlay" {
		t.Errorf("unrepaired %d, formats %v", rep.Unrepaired(), rep.Formats)
	}
	if _, err := os.Lstat(upper + "/nothing"); err != nil {
		t.Errorf("a check without --repair changed the upper: %v", err)
	}

	var st unix.Stat_t
	must(t, unix.Lstat(upper, &st))
	opt.Repair = true
	rep, err = Check(upper, opt)
	must(t, err)
	wantProblems(t, rep, fixable...)
	if n := rep.Unrepaired(); n != 0 {
		t.Errorf("%d problems not repaired: %+v", n, rep.Problems)
	}
	var after unix.Stat_t
	must(t, unix.Lstat(upper, &after))
	if after.Mtim != st.Mtim {
		t.Errorf("the repair changed the upper root's mtime")
	}
	opt.Repair = false
	rep, err = Check(upper, opt)
	must(t, err)
	wantProblems(t, rep)
	for _, p := range []string{"/a", "/moved/sub/y", "/b", "/e/z"} {
		if _, err := os.Lstat(upper + p); err != nil {
			t.Errorf("the repair removed the correct marker %s", p)
		}
	}
	if v, _ := getx(upper+"/lost", whiteout.OverlayOpaqueXattr); v != "y" {
		t.Errorf("the directory whose redirect led nowhere is not opaque after the repair")
	}
	if _, err := getx(upper+"/lost", whiteout.OverlayRedirectXattr); err == nil {
		t.Errorf("the redirect that led nowhere is still there")
	}
}

func getx(p, attr string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Lgetxattr(p, attr, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// TestCheckAufsAndUnionfsMarkers builds the fixable problems of the aufs and unionfs-fuse formats: redundant,
// useless and orphan markers; and the unfixable mixing of formats and unknown meta entries.
func TestCheckAufsAndUnionfsMarkers(t *testing.T) {
	lower, upper := newLayers(t)
	meta := upper + "/" + whiteout.UnionfsLegacyMetaDir
	write(t, meta+"/a_HIDDEN~", "")       // correct
	write(t, meta+"/d/x_HIDDEN~", "")     // correct, though the upper has no d
	write(t, meta+"/nothing_HIDDEN~", "") // hides nothing
	write(t, upper+"/b", "upper b")
	write(t, meta+"/b_HIDDEN~", "")              // redundant beside an upper file
	write(t, meta+"/nodir/deeper/q_HIDDEN~", "") // below a directory that exists nowhere
	write(t, meta+"/junk", "")                   // not a marker
	opt := Options{Lowers: []string{lower}, Repair: true}
	rep, err := Check(upper, opt)
	must(t, err)
	wantProblems(t, rep, KindUselessWhiteout+" /.unionfs-fuse/nothing_HIDDEN~",
		KindRedundantWhiteout+" /.unionfs-fuse/b_HIDDEN~", KindOrphanMeta+" /.unionfs-fuse/nodir",
		KindUnknownMeta+" /.unionfs-fuse/junk")
	if n := rep.Unrepaired(); n != 1 {
		t.Errorf("want only the unknown meta entry unrepaired, got %+v", rep.Problems)
	}
	for _, p := range []string{"a_HIDDEN~", "d/x_HIDDEN~"} {
		if _, err := os.Lstat(meta + "/" + p); err != nil {
			t.Errorf("the repair removed the correct marker %s", p)
		}
	}
	must(t, os.Remove(meta+"/junk"))
	rep, err = Check(upper, Options{Lowers: []string{lower}})
	must(t, err)
	wantProblems(t, rep)

	// aufs markers in the same upper: mixed formats, not repairable; a useless aufs whiteout is.
	write(t, upper+"/"+whiteout.AufsPrefix+"e", "")
	write(t, upper+"/"+whiteout.AufsPrefix+"zz", "")
	rep, err = Check(upper, opt)
	must(t, err)
	wantProblems(t, rep, KindMixedFormats+" /", KindUselessWhiteout+" /.wh.zz")
	if rep.Unrepaired() != 1 || strings.Join(rep.Formats, ",") != "aufs,unionfs-fuse-1.0" {
		t.Errorf("mixed formats: unrepaired %d, formats %v", rep.Unrepaired(), rep.Formats)
	}
}

// TestCheckUnfixable: a metadata-only copy without data and a malformed redirect are reported, and a repair
// leaves them (and the upper) alone.
func TestCheckUnfixable(t *testing.T) {
	lower, upper := newLayers(t)
	write(t, upper+"/gone", "")
	must(t, os.Truncate(upper+"/gone", 100))
	setx(t, upper+"/gone", "trusted.overlay.metacopy", "")
	must(t, os.Mkdir(upper+"/weird", 0755))
	setx(t, upper+"/weird", whiteout.OverlayRedirectXattr, "d/sub")
	for _, repair := range []bool{false, true} {
		rep, err := Check(upper, Options{Lowers: []string{lower}, Repair: repair})
		must(t, err)
		wantProblems(t, rep, KindMetacopyNoData+" /gone", KindBadRedirect+" /weird")
		if rep.Unrepaired() != 2 {
			t.Errorf("repair %v: %+v", repair, rep.Problems)
		}
	}
	// Without lowers only what needs none is decidable.
	rep, err := Check(upper, Options{})
	must(t, err)
	wantProblems(t, rep, KindBadRedirect+" /weird")
}

// TestCheckKernelOverlayUpperClean: an upper written by kernel overlayfs with redirects and metadata-only
// copies checks clean against its lowers.
func TestCheckKernelOverlayUpperClean(t *testing.T) {
	lower, upper := newLayers(t)
	d := filepath.Dir(upper)
	work, mnt := d+"/work", d+"/mnt"
	must(t, os.Mkdir(work, 0755))
	must(t, os.Mkdir(mnt, 0755))
	testutil.MountOverlay(t, []string{lower}, upper, work, mnt, "redirect_dir=on", "metacopy=on")
	script := `set -e; cd "$1"; mv d d2; mv d2/sub d2/sub2; rm a; chmod 600 b; mkdir n; rm -r e; mkdir e; echo new > e/new
rm d2/x; touch d2/x2; mv b b2`
	if out, err := exec.Command("sh", "-c", script, "sh", mnt).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	testutil.Unmount(t, mnt)
	rep, err := Check(upper, Options{Lowers: []string{lower}})
	must(t, err)
	wantProblems(t, rep)
	if strings.Join(rep.Formats, ",") != "overlay" {
		t.Errorf("formats %v", rep.Formats)
	}
	if _, err := getx(upper+"/b2", "trusted.overlay.metacopy"); err != nil {
		t.Errorf("kernel overlayfs made no metadata-only copy: the test checks less than it should")
	}
	// Its data gone, the metadata-only copy (renamed: found through its redirect) is reported, and the
	// whiteout overlayfs left at its old name hides nothing any more.
	must(t, os.Remove(lower+"/b"))
	rep, err = Check(upper, Options{Lowers: []string{lower}})
	must(t, err)
	wantProblems(t, rep, KindMetacopyNoData+" /b2", KindUselessWhiteout+" /b")
}

// TestInUse: the upper of a live overlay mount is in use, and a repair refuses it; after the unmount it is not.
func TestInUse(t *testing.T) {
	lower, upper := newLayers(t)
	d := filepath.Dir(upper)
	work, mnt := d+"/work", d+"/mnt"
	must(t, os.Mkdir(work, 0755))
	must(t, os.Mkdir(mnt, 0755))
	testutil.MountOverlay(t, []string{lower}, upper, work, mnt)
	if who, ok := inuse.InUse(upper); !ok || !strings.Contains(who, mnt) {
		t.Errorf("InUse = %q, %v; want the overlay mount on %s", who, ok, mnt)
	}
	_, err := Check(upper, Options{Repair: true})
	var be *inuse.BusyError
	if !errors.As(err, &be) {
		t.Errorf("check --repair of a mounted upper: %v, want a BusyError", err)
	}
	if _, err := Check(upper, Options{}); err != nil {
		t.Errorf("a check without repair of a mounted upper: %v", err)
	}
	if _, ok := inuse.InUse(lower); ok {
		t.Errorf("a lower layer is reported as an upper in use")
	}
	testutil.Unmount(t, mnt)
	if who, ok := inuse.InUse(upper); ok {
		t.Errorf("after the unmount: in use by %s", who)
	}
	_, err = Check(filepath.Join(d, "missing"), Options{})
	var le *stack.LayerError
	if !errors.As(err, &le) {
		t.Errorf("a missing upper: %v, want a LayerError", err)
	}
}
