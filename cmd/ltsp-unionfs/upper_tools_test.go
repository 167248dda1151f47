package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/inuse"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/tools/changes"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Tests of `check` and `convert` on upper layers written by ltsp-unionfs (in each format), by kernel overlayfs
// (with redirects and metadata-only copies) and by the real unionfs-fuse, over the read-only fixture.

// renameScript adds what exercises redirects and metadata-only copies to unionfsScript: directory renames (with
// changes inside), chmods of lower files, a renamed chmodded file.
const renameScript = `set -e
cd "$1"
chmod 640 bin/plain
mv usr/lib usr/lib.moved
rm usr/lib.moved/libx.so.1
mkdir usr/lib.moved/newdir
echo x > usr/lib.moved/newdir/f
mv many many2
rm many2/f2*
chmod 600 xattrs
mv xattrs xattrs.moved
chmod 600 etc/conf.d/06.conf
mv etc/conf.d/06.conf etc/06.moved
mv deep/0 deep-moved
`

// changeUnion runs the scripts on the union mounted at mnt.
func changeUnion(t *testing.T, mnt string, scripts ...string) {
	t.Helper()
	for _, s := range scripts {
		if out, err := exec.Command("bash", "-c", s, "script", mnt).CombinedOutput(); err != nil {
			t.Fatalf("changing the union: %v: %s", err, out)
		}
	}
}

// newLower builds a private copy of the fixture as a lower layer: kernel overlayfs and unionfs-fuse update the
// atimes of the lower files they read, and the shared fixture must stay unchanged.
func newLower(t *testing.T) string {
	t.Helper()
	lower := filepath.Join(t.TempDir(), "lower")
	testutil.Mkdirs(t, lower)
	if err := testutil.BuildFixture(lower); err != nil {
		t.Fatal(err)
	}
	return lower
}

// upperDirs makes an upper directory and a mount point below a fresh temporary directory.
func upperDirs(t *testing.T) (dir, upper, mnt string) {
	dir = t.TempDir()
	upper, mnt = filepath.Join(dir, "upper"), filepath.Join(dir, "mnt")
	for _, d := range []string{upper, mnt} {
		if err := os.Mkdir(d, 0755); err != nil {
			t.Fatal(err)
		}
	}
	return dir, upper, mnt
}

// mountLtsp mounts the binary over lower and upper on mnt with extra arguments; it is unmounted at cleanup.
func mountLtsp(t *testing.T, lower, upper, mnt string, extra ...string) {
	t.Helper()
	testutil.RequireFUSE(t)
	r := runCLI(t, "", append(extra, "ro="+lower, "rw="+upper, mnt)...)
	if r.code != 0 {
		t.Fatalf("mount: exit %d: %s", r.code, r.stderr)
	}
	t.Cleanup(func() { unmountAndWait(t, mnt) })
}

// mountKernelRO mounts kernel overlayfs read-only with upper as the top lower layer over lower.
func mountKernelRO(t *testing.T, lower, upper, mnt string) {
	t.Helper()
	testutil.MountOverlay(t, []string{upper, lower}, "", "", mnt, "metacopy=on", "redirect_dir=follow")
}

// produceLtsp changes a union of ltsp-unionfs writing the given format and returns its upper.
func produceLtsp(t *testing.T, lower, format string) string {
	dir, upper, mnt := upperDirs(t)
	_ = dir
	mountLtsp(t, lower, upper, mnt, "-o", "whiteout="+format)
	changeUnion(t, mnt, unionfsScript, renameScript)
	unmountAndWait(t, mnt)
	return upper
}

// produceKernel changes a kernel overlayfs union with redirect_dir=on and metacopy=on and returns its upper.
func produceKernel(t *testing.T, lower string) string {
	dir, upper, mnt := upperDirs(t)
	work := filepath.Join(dir, "work")
	testutil.Mkdirs(t, work)
	testutil.MountOverlay(t, []string{lower}, upper, work, mnt, "redirect_dir=on", "metacopy=on")
	changeUnion(t, mnt, unionfsScript, renameScript)
	testutil.Unmount(t, mnt)
	return upper
}

// produceUnionfsFuse changes a union of the real unionfs-fuse and returns its upper.
func produceUnionfsFuse(t *testing.T, lower string) string {
	bin := requireUnionfsFuse(t)
	_, upper, mnt := upperDirs(t)
	mountUnionfsFuse(t, bin, lower, upper, mnt)
	changeUnion(t, mnt, unionfsScript)
	if out, err := exec.Command("fusermount3", "-u", mnt).CombinedOutput(); err != nil {
		t.Fatalf("unmount: %v: %s", err, out)
	}
	waitUnused(t, upper)
	return upper
}

// waitUnused waits until no daemon uses upper any more: unionfs-fuse exits a moment after its unmount.
func waitUnused(t *testing.T, upper string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		who, ok := inuse.InUse(upper)
		if !ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still in use 10s after the unmount: %s", upper, who)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lowerFlags turns lower layers given as DIR:DIR... into --lower flags, topmost first.
func lowerFlags(lowers string) []string {
	var flags []string
	for _, l := range strings.Split(lowers, ":") {
		flags = append(flags, "--lower", l)
	}
	return flags
}

// wantClean runs check on upper with its lower layers (DIR:DIR..., topmost first) and fails unless it finds
// nothing.
func wantClean(t *testing.T, lower, upper string) {
	t.Helper()
	r := runCLI(t, "", append(append([]string{"check"}, lowerFlags(lower)...), upper)...)
	if r.code != 0 {
		t.Errorf("check: exit %d: %s%s", r.code, r.stdout, r.stderr)
	}
}

// viewOpts compares merged views: atimes change by reading, and merged directories report other link counts
// and sizes than the opaque ones a conversion may make of them.
var viewOpts = fstest.CompareOptions{IgnoreAtime: true, IgnoreDirNlink: true, IgnoreDirSize: true}

// convertChain converts upper to each format of chain in turn and compares, after each step, the merged view of
// the converted upper with ref, the view before any conversion: through ltsp-unionfs, and through the union the
// format belongs to (kernel overlayfs, unionfs-fuse 1.0) too. Each converted upper must check clean. lower may
// name several layers (DIR:DIR..., topmost first).
func convertChain(t *testing.T, lower, upper, ref string, chain ...string) {
	t.Helper()
	for i, f := range chain {
		failed := t.Failed()
		r := runCLI(t, "", append([]string{"convert", upper, "--to", f}, lowerFlags(lower)...)...)
		if r.code != 0 {
			t.Fatalf("convert --to %s: exit %d: %s", f, r.code, r.stderr)
		}
		wantClean(t, lower, upper)
		views := filepath.Join(t.TempDir(), "views")
		ltsp, kernel, uf := views+"/ltsp", views+"/kernel", views+"/unionfs-fuse"
		for _, d := range []string{ltsp, kernel, uf} {
			testutil.Mkdirs(t, d)
		}
		mountLtsp(t, lower, upper, ltsp, "-o", "ro")
		n := fstest.CompareTrees(t, ref, ltsp, viewOpts)
		unmountAndWait(t, ltsp)
		if n < 100 {
			t.Errorf("step %d (%s): compared only %d objects", i, f, n)
		}
		switch f {
		case "overlay":
			mountKernelRO(t, lower, upper, kernel)
			fstest.CompareTrees(t, ref, kernel, viewOpts)
			testutil.Unmount(t, kernel)
		case "unionfs-fuse-1.0":
			if strings.Contains(lower, ":") {
				break // rotated lowers hold overlay markers, which unionfs-fuse does not read
			}
			mountUnionfsFuse(t, requireUnionfsFuse(t), lower, upper, uf)
			opt := viewOpts
			opt.IgnoreXattrs = true // Debian's unionfs-fuse is built without xattr support
			fstest.CompareTrees(t, ref, uf, opt)
			if out, err := exec.Command("fusermount3", "-u", uf).CombinedOutput(); err != nil {
				t.Fatalf("unmount: %v: %s", err, out)
			}
			waitUnused(t, upper)
		}
		if t.Failed() && !failed {
			t.Fatalf("the view changed with the conversion to %s", f)
		}
	}
}

// refView copies upper and mounts the copy read-only (kernel: with kernel overlayfs, else ltsp-unionfs) as the
// reference view for convertChain.
func refView(t *testing.T, lower, upper string, kernel bool) string {
	t.Helper()
	dir := t.TempDir()
	cp, mnt := filepath.Join(dir, "upper"), filepath.Join(dir, "mnt")
	testutil.Mkdirs(t, mnt)
	if out, err := exec.Command("cp", "-a", upper, cp).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v: %s", err, out)
	}
	if kernel {
		mountKernelRO(t, lower, cp, mnt)
	} else {
		mountLtsp(t, lower, cp, mnt, "-o", "ro")
	}
	return mnt
}

// convertLtspUpper changes a union of ltsp-unionfs writing format, checks its upper, and converts it along chain.
func convertLtspUpper(t *testing.T, format string, chain ...string) {
	testutil.RequireRoot(t)
	lower := newLower(t)
	upper := produceLtsp(t, lower, format)
	if format != "overlay" {
		// Without redirects a directory rename copies the tree up and makes it opaque; the whiteouts the tree
		// held before then hide nothing (the lowers have no such names at the new path). The repair removes them.
		r := runCLI(t, "", "check", "--repair", "--lower", lower, upper)
		if r.code != 0 || strings.Contains(r.stdout, "not repaired") {
			t.Errorf("check --repair: exit %d: %s", r.code, r.stdout)
		}
	}
	wantClean(t, lower, upper)
	convertChain(t, lower, upper, refView(t, lower, upper, false), chain...)
}

// rotatedScript changes whatever a union shows, without knowing its names: appends to files (copy-ups, of
// metadata-only copies in a lower layer among them), removes and chmods others, renames the deepest directories
// (their lower content is then found through redirects, or copied), removes the first ones and creates new ones.
const rotatedScript = `set -eu
cd "$1"
mapfile -t files < <(find . -type f | sort)
mapfile -t deepest < <(find . -mindepth 2 -type d | sort -r | head -3)
mapfile -t first < <(find . -mindepth 1 -maxdepth 1 -type d | sort | head -2)
for f in "${files[@]:0:10}"; do echo appended >> "$f"; done
for f in "${files[@]:10:10}"; do rm -f "$f"; done
for f in "${files[@]:20:5}"; do chmod 600 "$f"; done
i=0
for d in "${deepest[@]}"; do mv "$d" "$d.moved$i"; i=$((i+1)); done
for d in "${first[@]}"; do rm -rf "$d"; done
mkdir -p newdir/sub
echo new > newdir/sub/file
`

// TestToolsOverRotatedLowers reads, with the daemon and with check and convert, an upper over a stack whose top
// lower is the upper of an earlier kernel overlayfs mount (layers rotated down): its redirects, metadata-only
// copies, whiteouts and opaque directories must mean the same to every tool as to the daemon. The daemon writes
// the new upper in each format; check must find it clean and every conversion must leave the view unchanged.
func TestToolsOverRotatedLowers(t *testing.T) {
	testutil.RequireRoot(t)
	base := newLower(t)
	// A directory kernel overlayfs renamed (a redirect in the rotated layer) that the new union renames again,
	// and a file it made a metadata-only copy of that the new union changes again: a conversion that has to copy
	// them must follow the rotated layer's redirect and metadata-only copy down to the base.
	if err := os.MkdirAll(base+"/rot/A/sub", 0755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"rot/A/one", "rot/A/sub/two", "rot/F"} {
		if err := os.WriteFile(filepath.Join(base, f), []byte("base "+f+"\n"), 0644); err != nil {
			t.Fatal(err)
		}
	}
	kupper := produceKernel(t, base)
	dir, _, kmnt := upperDirs(t)
	kwork := filepath.Join(dir, "work2")
	testutil.Mkdirs(t, kwork)
	testutil.MountOverlay(t, []string{base}, kupper, kwork, kmnt, "redirect_dir=on", "metacopy=on")
	changeUnion(t, kmnt, `set -e; cd "$1"; mv rot/A rot/B; chmod 600 rot/F`)
	testutil.Unmount(t, kmnt)
	if v, err := unix.Lgetxattr(kupper+"/rot/B", "trusted.overlay.redirect", make([]byte, 64)); err != nil || v == 0 {
		t.Fatalf("kernel overlayfs wrote no redirect for the renamed directory: %v", err)
	}
	if _, err := unix.Lgetxattr(kupper+"/rot/F", "trusted.overlay.metacopy", nil); err != nil {
		t.Fatalf("kernel overlayfs made no metadata-only copy: %v", err)
	}
	lowers := kupper + ":" + base
	for _, format := range []string{"overlay", "aufs", "unionfs-fuse-1.0"} {
		t.Run(format, func(t *testing.T) {
			_, upper, mnt := upperDirs(t)
			mountLtsp(t, lowers, upper, mnt, "-o", "whiteout="+format)
			changeUnion(t, mnt, `set -e; cd "$1"; mv rot/B rot/C; chmod 640 rot/F`, rotatedScript)
			unmountAndWait(t, mnt)
			if format != "overlay" {
				// As in convertLtspUpper: whiteouts inside a renamed (copied, opaque) tree hide nothing any more.
				r := runCLI(t, "", append(append([]string{"check", "--repair"}, lowerFlags(lowers)...), upper)...)
				if r.code != 0 || strings.Contains(r.stdout, "not repaired") {
					t.Errorf("check --repair: exit %d: %s", r.code, r.stdout)
				}
			}
			wantClean(t, lowers, upper)
			diffAgreesWithViews(t, lowers, upper)
			chain := map[string][]string{"overlay": {"aufs", "overlay"}, "aufs": {"overlay", "aufs"},
				"unionfs-fuse-1.0": {"overlay", "unionfs-fuse-1.0"}}[format]
			convertChain(t, lowers, upper, refView(t, lowers, upper, false), chain...)
		})
	}
}

// Each format is converted to and from every other one across these tests (unionfs-fuse 2.0's format is
// read by no union but ltsp-unionfs, so it is a waypoint).
func TestConvertLtspOverlayUpper(t *testing.T) {
	convertLtspUpper(t, "overlay", "aufs", "unionfs-fuse", "overlay")
}

func TestConvertLtspAufsUpper(t *testing.T) {
	convertLtspUpper(t, "aufs", "unionfs-fuse-1.0", "aufs")
}

func TestConvertLtspUnionfsUpper(t *testing.T) {
	convertLtspUpper(t, "unionfs-fuse-1.0", "overlay", "unionfs-fuse-1.0")
}

func TestConvertKernelOverlayUpper(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFUSE(t)
	lower := newLower(t)
	upper := produceKernel(t, lower)
	wantClean(t, lower, upper)
	for _, p := range []string{"usr/lib.moved", "xattrs.moved", "etc/06.moved", "bin/plain"} {
		if out, _ := exec.Command("getfattr", "-d", "-m", "trusted.overlay.(redirect|metacopy)", filepath.Join(upper, p)).Output(); len(out) == 0 {
			t.Errorf("kernel overlayfs left no redirect or metacopy mark on %s: the test checks less than it should", p)
		}
	}
	// The reference is kernel overlayfs's own view, which ltsp-unionfs shows as well: the data of the renamed
	// metadata-only copies (xattrs.moved, etc/06.moved) is found through their redirects.
	ref := refView(t, lower, upper, true)
	ltsp := filepath.Join(t.TempDir(), "ltsp")
	testutil.Mkdirs(t, ltsp)
	mountLtsp(t, lower, upper, ltsp, "-o", "ro")
	fstest.CompareTrees(t, ref, ltsp, viewOpts)
	unmountAndWait(t, ltsp)
	convertChain(t, lower, upper, ref, "unionfs-fuse-1.0", "overlay")
}

func TestConvertUnionfsFuseUpper(t *testing.T) {
	requireUnionfsFuse(t)
	lower := newLower(t)
	upper := produceUnionfsFuse(t, lower)
	wantClean(t, lower, upper)
	convertChain(t, lower, upper, refView(t, lower, upper, false), "aufs", "overlay", "unionfs-fuse-1.0")
}

// TestConvertNeedsLowers: an upper with redirects and metadata-only copies cannot become aufs without its lowers:
// the conversion is refused, naming the first, and nothing changes.
func TestConvertNeedsLowers(t *testing.T) {
	testutil.RequireRoot(t)
	lower := newLower(t)
	upper := produceKernel(t, lower)
	before, err := testutil.Snapshot(upper)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"aufs", "unionfs-fuse"} {
		r := runCLI(t, "", "convert", upper, "--to", f)
		if r.code != exitUsage || !strings.Contains(r.stderr, "--lower") ||
			!(strings.Contains(r.stderr, "redirect") || strings.Contains(r.stderr, "metadata-only")) {
			t.Errorf("convert --to %s without lowers: exit %d: %s", f, r.code, r.stderr)
		}
	}
	after, err := testutil.Snapshot(upper)
	if err != nil {
		t.Fatal(err)
	}
	if d := testutil.DiffSnapshots(before, after); len(d) > 0 {
		t.Errorf("a refused conversion changed the upper: %v", d)
	}
	// To overlay nothing needs the lowers.
	if r := runCLI(t, "", "convert", upper, "--to", "overlay"); r.code != 0 {
		t.Errorf("convert --to overlay: exit %d: %s", r.code, r.stderr)
	}
}

// TestCheckExitCodes: problems give 7, a repair that fixes them all 0, then a clean check 0; usage errors 2,
// missing layers 3, a repair or conversion of the upper of a live mount 8 (kernel overlayfs, ltsp-unionfs and
// unionfs-fuse mounts).
func TestCheckExitCodes(t *testing.T) {
	testutil.RequireRoot(t)
	lower := newLower(t)
	_, upper, mnt := upperDirs(t)
	mountLtsp(t, lower, upper, mnt)
	changeUnion(t, mnt, unionfsScript)
	for _, args := range [][]string{{"convert", upper, "--to", "aufs"}, {"check", "--repair", upper}} {
		if r := runCLI(t, "", args...); r.code != exitBusy || !strings.Contains(r.stderr, "in use") {
			t.Errorf("%v on the upper of a live ltsp-unionfs mount: exit %d: %s", args, r.code, r.stderr)
		}
	}
	unmountAndWait(t, mnt)

	tmp := filepath.Join(upper, "etc", whiteout.TempPrefix+"00112233")
	if err := os.WriteFile(tmp, []byte("half"), 0644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(upper, whiteout.AufsPrefix+"no-such-name"), nil, 0644); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, "", "check", "--json", "--lower", lower, upper)
	var rep struct {
		Formats  []string
		Problems []struct{ Kind, Path string }
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("check --json: %v: %s", err, r.stdout)
	}
	if r.code != exitProblems || len(rep.Problems) != 3 {
		t.Errorf("check: exit %d, problems %+v; want 7 and a temp object, a useless whiteout, mixed formats", r.code, rep.Problems)
	}
	r = runCLI(t, "", "check", "--repair", "--lower", lower, upper)
	if r.code != 0 || strings.Count(r.stdout, "[repaired: removed]") != 2 {
		t.Errorf("check --repair: exit %d: %s", r.code, r.stdout)
	}
	wantClean(t, lower, upper)
	// An aufs whiteout of a lower name in an overlay-format upper: mixed formats, which only convert fixes.
	if err := os.WriteFile(filepath.Join(upper, whiteout.AufsPrefix+"dangling"), nil, 0644); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, "", "check", "--repair", "--lower", lower, upper)
	if r.code != exitProblems || !strings.Contains(r.stdout, "mixed-formats") {
		t.Errorf("check --repair of mixed formats: exit %d (want 7): %s", r.code, r.stdout)
	}
	if r := runCLI(t, "", "convert", upper, "--to", "unionfs-fuse-1.0", "--lower", lower); r.code != 0 {
		t.Errorf("convert: exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Lstat(filepath.Join(upper, whiteout.UnionfsLegacyMetaDir, "dangling"+whiteout.UnionfsHiddenSuffix)); err != nil {
		t.Errorf("the aufs whiteout was not converted: %v", err)
	}
	wantClean(t, lower, upper)

	missing := filepath.Join(upper, "no-such-dir")
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"check"}, exitUsage},
		{[]string{"check", "a", "b"}, exitUsage},
		{[]string{"check", "--bogus", upper}, exitUsage},
		{[]string{"convert", upper}, exitUsage},
		{[]string{"convert", upper, "--to", "zfs"}, exitUsage},
		{[]string{"check", missing}, exitLayer},
		{[]string{"check", "--lower", missing, upper}, exitLayer},
		{[]string{"convert", missing, "--to", "aufs"}, exitLayer},
		{[]string{"convert", upper, "--to", "aufs", "--lower", missing}, exitLayer},
	} {
		if r := runCLI(t, "", c.args...); r.code != c.code {
			t.Errorf("%v: exit %d, want %d: %s", c.args, r.code, c.code, r.stderr)
		}
	}

	// Kernel overlayfs and unionfs-fuse mounts of the upper.
	dir := filepath.Dir(upper)
	work := filepath.Join(dir, "work")
	testutil.Mkdirs(t, work)
	if r := runCLI(t, "", "convert", upper, "--to", "overlay", "--lower", lower); r.code != 0 {
		t.Fatalf("convert: exit %d: %s", r.code, r.stderr)
	}
	testutil.MountOverlay(t, []string{lower}, upper, work, mnt)
	for _, args := range [][]string{{"convert", upper, "--to", "aufs"}, {"check", "--repair", upper}} {
		if r := runCLI(t, "", args...); r.code != exitBusy || !strings.Contains(r.stderr, "mount on "+mnt) {
			t.Errorf("%v on the upper of a live overlay mount: exit %d: %s", args, r.code, r.stderr)
		}
	}
	if r := runCLI(t, "", "check", upper); r.code != 0 {
		t.Errorf("check (no repair) of a mounted upper: exit %d: %s", r.code, r.stderr)
	}
	testutil.Unmount(t, mnt)
	bin := requireUnionfsFuse(t)
	mountUnionfsFuse(t, bin, lower, upper, mnt)
	if r := runCLI(t, "", "convert", upper, "--to", "aufs"); r.code != exitBusy {
		t.Errorf("convert of the upper of a live unionfs-fuse mount: exit %d: %s", r.code, r.stderr)
	}
}

// diffAgreesWithViews checks what diff --json says about upper over lowers (DIR:DIR...) against what the daemon
// shows, with the upper layer and without it (an empty upper): every path diff reports changed is in the union's
// view, every path it reports deleted only in the lowers' view; every path only one view has, and every file the
// two views show differently, is covered by a change of it or of a parent.
func diffAgreesWithViews(t *testing.T, lowers, upper string) {
	t.Helper()
	r := runCLI(t, "", append([]string{"diff", "--json", upper}, lowerFlags(lowers)...)...)
	if r.code != 0 {
		t.Fatalf("diff: exit %d: %s", r.code, r.stderr)
	}
	var rep changes.Report
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
		t.Fatalf("diff --json: %v", err)
	}
	dir := t.TempDir()
	union, below, empty := filepath.Join(dir, "union"), filepath.Join(dir, "below"), filepath.Join(dir, "empty")
	testutil.Mkdirs(t, union, below, empty)
	mountLtsp(t, lowers, upper, union, "-o", "ro")
	mountLtsp(t, lowers, empty, below, "-o", "ro")
	u, l := viewFiles(t, union), viewFiles(t, below)
	unmountAndWait(t, union)
	unmountAndWait(t, below)

	byPath := map[string]*changes.Change{}
	for _, c := range rep.Changes {
		byPath[strings.TrimPrefix(c.Path, "/")] = c
	}
	// lowerPath is where the lowers hold what p shows: below a renamed directory, at the directory's source.
	lowerPath := func(p string) string {
		for q := p; q != "." && q != ""; q = filepath.Dir(q) {
			if c, ok := byPath[q]; ok && c.Kind == changes.Renamed {
				return strings.TrimPrefix(c.From, "/") + strings.TrimPrefix(p, q)
			}
		}
		return p
	}
	for _, c := range rep.Changes {
		p := strings.TrimPrefix(c.Path, "/")
		_, inUnion := u[p]
		_, inLower := l[lowerPath(p)]
		switch {
		case c.Kind == changes.Deleted && (inUnion || !inLower):
			t.Errorf("diff says %s is deleted: in the union's view %v, in the lowers' (at /%s) %v", c.Path, inUnion,
				lowerPath(p), inLower)
		case c.Kind != changes.Deleted && p != "" && !inUnion:
			t.Errorf("diff says %s (%s), which the union does not show", c, c.Kind)
		}
	}
	// covered reports whether a change of p, or one of a parent that replaces its content, explains a difference.
	covered := func(p string, any bool) bool {
		if _, ok := byPath[p]; ok {
			return true
		}
		for q := p; q != "." && q != ""; {
			q = filepath.Dir(q)
			if c, ok := byPath[q]; ok && (any || c.Kind == changes.Added || c.Kind == changes.Opaque ||
				c.Kind == changes.Renamed || c.Kind == changes.Modified) {
				return true
			}
		}
		return false
	}
	for p := range u {
		if _, ok := l[p]; !ok && !covered(p, true) {
			t.Errorf("the union shows %s, which the lowers do not, and diff says nothing of it", p)
		}
	}
	for p, desc := range l {
		got, ok := u[p]
		switch {
		case !ok && !covered(p, true):
			t.Errorf("the lowers show %s, which the union does not, and diff says nothing of it", p)
		case ok && got != desc && !covered(p, false):
			t.Errorf("%s differs (%s, below %s) and diff says nothing of it", p, got, desc)
		}
	}
	if len(rep.Changes) < 10 {
		t.Errorf("diff reports only %d changes", len(rep.Changes))
	}
}

// viewFiles describes every object below root by its path: type, mode and, for files, the content's digest.
func viewFiles(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == "." {
			return nil
		}
		desc := fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		out[rel] = desc
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
