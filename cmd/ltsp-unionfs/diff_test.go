package main

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/tools/changes"
)

// The same changes are made through every union that writes upper layers (ltsp-unionfs in its three marker
// formats, kernel overlayfs with redirects and metacopy, the real unionfs-fuse); then diff must list exactly the
// expected changes, and merge into a copy of the lower must give the tree the union shows.

// changeScript changes a union: modify, chmod only, delete a file and a tree, delete and recreate a directory
// (opaque), rename a directory (a redirect where the format has them), new file, directory, symlink, FIFO and hard
// link. With a second argument "xattrs", it also changes an xattr (Debian's unionfs-fuse has no xattrs).
const changeScript = `set -e
cd "$1"
echo more >> etc/passwd
chmod 600 etc/shadow
chmod 4755 bin/tool
rm etc/hostname
rm -r usr/share/doc
rm -r var/cache
mkdir var/cache
echo fresh > var/cache/fresh
mv opt/app opt/moved
echo new > etc/new
ln etc/new etc/new-link
mkdir newdir
ln -s ../etc/new newdir/link
mkfifo newdir/fifo
mv etc/motd etc/motd.old
if [ "$2" = xattrs ]; then setfattr -n user.color -v red etc/attr; fi
`

// buildDiffLower makes the lower layer the script changes, with old times, so that any time a union or a merge
// sets wrongly shows.
func buildDiffLower(t *testing.T, dir string) {
	t.Helper()
	script := `set -e
cd "$1"
mkdir -p bin etc usr/share/doc/pkg var/cache/app opt/app/bin opt/app/lib keep
printf 'tool\n' > bin/tool; chmod 755 bin/tool
printf 'root:x:0:0::/root:/bin/sh\n' > etc/passwd
printf 'root:*:1::::::\n' > etc/shadow; chmod 640 etc/shadow; chown 0:42 etc/shadow
printf 'host\n' > etc/hostname
printf 'welcome\n' > etc/motd
printf 'attr\n' > etc/attr; setfattr -n user.color -v blue etc/attr
printf 'readme\n' > usr/share/doc/pkg/README
printf 'd1\n' > var/cache/app/d1
printf 'd2\n' > var/cache/d2
printf 'run\n' > opt/app/bin/run; chmod 755 opt/app/bin/run
printf 'x\n' > opt/app/lib/x
printf 'kept\n' > keep/file
ln keep/file keep/link
truncate -s 1M keep/sparse
find . -exec touch -h -d 2001-02-03T04:05:06 {} +
`
	if out, err := exec.Command("bash", "-c", script, "build", dir).CombinedOutput(); err != nil {
		t.Fatalf("building the lower layer: %v: %s", err, out)
	}
}

// Expected diff output. Every producer agrees on the files; they differ in how a directory rename is recorded.
const (
	expectCommon = `m /bin/tool (metadata: mode)
D /etc/hostname
D /etc/motd
%sA /etc/new
A /etc/new-link (link to /etc/new)
M /etc/passwd
m /etc/shadow (metadata: mode)
A /newdir
A /newdir/fifo
A /newdir/link
D /opt/app
`
	expectRedirect = `R /opt/moved <- /opt/app
`
	expectCopiedDir = `A /opt/moved
A /opt/moved/bin
A /opt/moved/bin/run
A /opt/moved/lib
A /opt/moved/lib/x
`
	expectTail = `D /usr/share/doc
O /var/cache (opaque)
A /var/cache/fresh
`
	expectXattr = "m /etc/attr (metadata: xattrs)\n"
)

// upperProducer makes an upper layer by running changeScript on a union of lower and upper.
type upperProducer struct {
	name     string
	xattrs   bool   // the union supports xattrs
	redirect bool   // directory renames are redirects
	format   string // the format diff --json reports
	// alone is diff's output without --lower.
	alone string
	// metacopyRename says whether renaming a lower file makes a metadata-only copy with a redirect to its data.
	metacopyRename bool
	// mount mounts the union on mnt and returns the function that unmounts it.
	mount func(t *testing.T, lower, upper, work, mnt string) func()
}

// movedFile is the line for the renamed lower file etc/motd; kind is what a plain copy of it is reported as.
func (p upperProducer) movedFile(kind string) string {
	if p.metacopyRename {
		return "m /etc/motd.old (data from /etc/motd; metadata-only copy)\n"
	}
	return kind + " /etc/motd.old\n"
}

func ltspProducer(name, format string, redirect bool, opts ...string) upperProducer {
	return upperProducer{name: "ltsp-unionfs " + name, xattrs: format != "unionfs-fuse-1.0", redirect: redirect,
		format: format,
		mount: func(t *testing.T, lower, upper, work, mnt string) func() {
			testutil.RequireFUSE(t)
			r := runCLI(t, "", append(opts, "ro="+lower, "rw="+upper, mnt)...)
			if r.code != 0 {
				t.Fatalf("mount: exit %d: %s", r.code, r.stderr)
			}
			t.Cleanup(func() { unmountAndWait(t, mnt) })
			return func() { unmountAndWait(t, mnt) }
		}}
}

func upperProducers() []upperProducer {
	overlayAlone := `C /bin
m /bin/tool (metadata-only copy)
C /etc
m /etc/attr (metadata-only copy)
D /etc/hostname
D /etc/motd
MOVED
C /etc/new
C /etc/new-link (link to /etc/new)
C /etc/passwd
m /etc/shadow (metadata-only copy)
%sC /opt
D /opt/app
R /opt/moved <- /opt/app
C /usr
C /usr/share
D /usr/share/doc
C /var
O /var/cache (opaque)
A /var/cache/fresh
`
	copiedAlone := `C /bin
C /bin/tool
C /etc
%sD /etc/hostname
D /etc/motd
MOVED
C /etc/new
C /etc/new-link (link to /etc/new)
C /etc/passwd
C /etc/shadow
C /newdir
C /newdir/fifo
C /newdir/link
C /opt
D /opt/app
%s
C /usr
C /usr/share
D /usr/share/doc
C /var
O /var/cache (opaque)
A /var/cache/fresh
`
	movedAlone := func(kind string) string {
		return strings.TrimSuffix(strings.ReplaceAll(expectCopiedDir, "A ", kind+" "), "\n")
	}
	ltspOverlay := ltspProducer("overlay", "overlay", true)
	ltspOverlay.alone = fmt.Sprintf(overlayAlone, "C /newdir\nC /newdir/fifo\nC /newdir/link\n")
	aufs := ltspProducer("aufs", "aufs", false, "-o", "whiteout=aufs")
	aufs.alone = fmt.Sprintf(copiedAlone, "C /etc/attr\n", "O /opt/moved (opaque)\n"+
		strings.TrimPrefix(movedAlone("A"), "A /opt/moved\n"))
	unionfs := ltspProducer("unionfs-fuse-1.0", "unionfs-fuse-1.0", false, "-o", "whiteout=unionfs-fuse-1.0")
	unionfs.alone = fmt.Sprintf(copiedAlone, "", "O /opt/moved (opaque)\n"+
		strings.TrimPrefix(movedAlone("A"), "A /opt/moved\n"))
	kernel := upperProducer{name: "kernel overlayfs", xattrs: true, redirect: true, format: "overlay",
		alone: fmt.Sprintf(overlayAlone, "O /newdir (opaque)\nA /newdir/fifo\nA /newdir/link\n"),
		mount: func(t *testing.T, lower, upper, work, mnt string) func() {
			testutil.MountOverlay(t, []string{lower}, upper, work, mnt, "redirect_dir=on", "metacopy=on")
			return func() { testutil.Unmount(t, mnt) }
		}}
	realUnionfs := upperProducer{name: "unionfs-fuse", format: "unionfs-fuse-1.0",
		// unionfs-fuse does not copy the parents of a deleted name up: /usr/share/doc's whiteout is in its
		// marker tree only.
		alone: strings.Replace(fmt.Sprintf(copiedAlone, "", movedAlone("C")), "C /usr\nC /usr/share\n", "", 1),
		mount: func(t *testing.T, lower, upper, work, mnt string) func() {
			mountUnionfsFuse(t, requireUnionfsFuse(t), lower, upper, mnt)
			return func() {
				if out, err := exec.Command("fusermount3", "-u", mnt).CombinedOutput(); err != nil {
					t.Fatalf("fusermount3 -u %s: %v: %s", mnt, err, out)
				}
			}
		}}
	kernel.metacopyRename = true
	ps := []upperProducer{ltspOverlay, aufs, unionfs, kernel, realUnionfs}
	for i := range ps {
		ps[i].alone = strings.Replace(ps[i].alone, "MOVED\n", ps[i].movedFile("C"), 1)
	}
	return ps
}

// producedUpper is an upper layer made by a producer, with its lower.
type producedUpper struct {
	dir, lower, upper string
}

// produce runs changeScript through p's union.
func produce(t *testing.T, p upperProducer) producedUpper {
	t.Helper()
	testutil.RequireRoot(t)
	d := t.TempDir()
	u := producedUpper{dir: d, lower: filepath.Join(d, "lower"), upper: filepath.Join(d, "upper")}
	work, mnt := filepath.Join(d, "work"), filepath.Join(d, "mnt")
	for _, p := range []string{u.lower, u.upper, work, mnt} {
		testutil.Mkdirs(t, p)
	}
	buildDiffLower(t, u.lower)
	unmount := p.mount(t, u.lower, u.upper, work, mnt)
	arg := ""
	if p.xattrs {
		arg = "xattrs"
	}
	if out, err := exec.Command("bash", "-c", changeScript, "script", mnt, arg).CombinedOutput(); err != nil {
		unmount()
		t.Fatalf("changing the union: %v: %s", err, out)
	}
	unmount()
	return u
}

// expectedDiff is diff's expected output with --lower for p.
func expectedDiff(p upperProducer) string {
	s := fmt.Sprintf(expectCommon, p.movedFile("A"))
	if p.redirect {
		s += expectRedirect
	} else {
		s += expectCopiedDir
	}
	s += expectTail
	if p.xattrs {
		s = strings.Replace(s, "D /etc/hostname\n", expectXattr+"D /etc/hostname\n", 1)
	}
	return s
}

func TestDiffUppers(t *testing.T) {
	for _, p := range upperProducers() {
		t.Run(p.name, func(t *testing.T) {
			u := produce(t, p)
			before, err := testutil.Snapshot(u.upper)
			if err != nil {
				t.Fatal(err)
			}
			lowerBefore, err := testutil.Snapshot(u.lower)
			if err != nil {
				t.Fatal(err)
			}

			r := runCLI(t, "", "diff", u.upper, "--lower", u.lower)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("diff: exit %d: %s", r.code, r.stderr)
			}
			if want := expectedDiff(p); r.stdout != want {
				t.Errorf("diff --lower:\n%s", lineDiff(want, r.stdout))
			}

			r = runCLI(t, "", "diff", u.upper)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("diff: exit %d: %s", r.code, r.stderr)
			}
			if r.stdout != p.alone {
				t.Errorf("diff without --lower:\n%s", lineDiff(p.alone, r.stdout))
			}

			// --json says the same as the text, and the format the upper layer is written in.
			r = runCLI(t, "", "diff", "--json", "--lower", u.lower, u.upper)
			if r.code != 0 {
				t.Fatalf("diff --json: exit %d: %s", r.code, r.stderr)
			}
			var rep changes.Report
			if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil {
				t.Fatalf("diff --json: %v: %s", err, r.stdout)
			}
			var text strings.Builder
			for _, c := range rep.Changes {
				text.WriteString(c.String() + "\n")
			}
			if text.String() != expectedDiff(p) {
				t.Errorf("diff --json differs from the text output:\n%s", lineDiff(expectedDiff(p), text.String()))
			}
			if rep.Format != p.format || rep.Upper != u.upper || len(rep.Lowers) != 1 {
				t.Errorf("diff --json: upper %q, lowers %q, format %q; want %q, [%q], %q", rep.Upper, rep.Lowers,
					rep.Format, u.upper, u.lower, p.format)
			}

			after, _ := testutil.Snapshot(u.upper)
			lowerAfter, _ := testutil.Snapshot(u.lower)
			if d := append(layerChanges(before, after), layerChanges(lowerBefore, lowerAfter)...); len(d) > 0 {
				t.Errorf("diff changed the layers:\n%s", strings.Join(d, "\n"))
			}
		})
	}
}

func TestMergeUppers(t *testing.T) {
	for _, p := range upperProducers() {
		t.Run(p.name, func(t *testing.T) {
			u := produce(t, p)
			into := filepath.Join(u.dir, "into")
			testutil.Run(t, "cp", "-a", u.lower, into)
			upperBefore, err := testutil.Snapshot(u.upper)
			if err != nil {
				t.Fatal(err)
			}
			before, err := testutil.Snapshot(into)
			if err != nil {
				t.Fatal(err)
			}

			r := runCLI(t, "", "merge", u.upper, "--into", into, "--dry-run")
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("merge --dry-run: exit %d: %s", r.code, r.stderr)
			}
			for _, want := range []string{"delete /etc/hostname\n", "replace /etc/passwd\n",
				"metadata /etc/shadow (mode)\n", "link /etc/new-link -> /etc/new\n", "would merge: "} {
				if !strings.Contains(r.stdout, want) {
					t.Errorf("merge --dry-run does not say %q:\n%s", want, r.stdout)
				}
			}
			if p.redirect {
				// Renamed sources are moved aside before anything else changes the directory.
				lines := strings.Split(r.stdout, "\n")
				moves := 0
				for moves < len(lines) && strings.HasPrefix(lines[moves], "move ") {
					moves++
				}
				if !strings.Contains(strings.Join(lines[:moves], "\n"), "move /opt/app -> /opt/moved") {
					t.Errorf("merge --dry-run does not begin by moving the renamed directory:\n%s", r.stdout)
				}
			}
			after, _ := testutil.Snapshot(into)
			if d := testutil.DiffSnapshots(before, after); len(d) > 0 {
				t.Fatalf("merge --dry-run changed the directory:\n%s", strings.Join(d, "\n"))
			}

			r = runCLI(t, "", "merge", u.upper, "--into", into)
			if r.code != 0 || r.stderr != "" || r.stdout != "" {
				t.Fatalf("merge: exit %d: %s%s", r.code, r.stdout, r.stderr)
			}
			upperAfter, _ := testutil.Snapshot(u.upper)
			if d := layerChanges(upperBefore, upperAfter); len(d) > 0 {
				t.Errorf("merge changed the upper layer:\n%s", strings.Join(d, "\n"))
			}

			// The merged directory holds what the union shows, read-only over the original lower; for kernel
			// overlayfs's upper layer, also what kernel overlayfs shows.
			opt := fstest.CompareOptions{IgnoreAtime: true, IgnoreDirNlink: true, IgnoreDirSize: true}
			if p.metacopyRename {
				kview := filepath.Join(u.dir, "kview")
				testutil.Mkdirs(t, kview)
				testutil.MountOverlay(t, []string{u.upper, u.lower}, "", "", kview, "ro", "redirect_dir=follow",
					"metacopy=on")
				fstest.CompareTrees(t, kview, into, opt)
				testutil.Unmount(t, kview)
			}
			view := filepath.Join(u.dir, "view")
			testutil.Mkdirs(t, view)
			if r := runCLI(t, "", "-o", "ro", "ro="+u.lower, "rw="+u.upper, view); r.code != 0 {
				t.Fatalf("mounting the view: %s", r.stderr)
			}
			t.Cleanup(func() { unmountAndWait(t, view) })
			if n := fstest.CompareTrees(t, view, into, opt); n < 20 {
				t.Errorf("compared only %d objects", n)
			}
			// Spot checks of what CompareTrees sees only as descriptions.
			var a, b unix.Stat_t
			unix.Lstat(filepath.Join(into, "etc/new"), &a)
			unix.Lstat(filepath.Join(into, "etc/new-link"), &b)
			if a.Ino != b.Ino || a.Nlink != 2 {
				t.Errorf("the upper's hard links are not links in the merged directory: inodes %d, %d", a.Ino, b.Ino)
			}
			unix.Lstat(filepath.Join(into, "bin/tool"), &a)
			if a.Mode&07777 != 04755 {
				t.Errorf("bin/tool has mode %o after the merge, want 4755", a.Mode&07777)
			}
			if names, _ := filepath.Glob(filepath.Join(into, ".wh.*")); len(names) > 0 {
				t.Errorf("the merge left temporary objects: %v", names)
			}
			// Merging the same upper layer again changes nothing more, except where a redirect's source is
			// gone after the first merge.
			if p.redirect {
				return
			}
			unmountAndWait(t, view)
			if r := runCLI(t, "", "merge", u.upper, "--into", into); r.code != 0 {
				t.Fatalf("second merge: exit %d: %s", r.code, r.stderr)
			}
			if r := runCLI(t, "", "-o", "ro", "ro="+u.lower, "rw="+u.upper, view); r.code != 0 {
				t.Fatalf("mounting the view: %s", r.stderr)
			}
			fstest.CompareTrees(t, view, into, opt)
		})
	}
}

// layerChanges returns the differences between two snapshots of a layer, but for the access times of symlinks:
// readlink(2) sets them (there is no O_NOATIME for it) on filesystems mounted with atime updates.
func layerChanges(before, after map[string]string) []string {
	var out []string
	for _, d := range testutil.DiffSnapshots(before, after) {
		lines := strings.Split(d, "\n")
		if len(lines) == 3 && strings.Contains(lines[1], "mode=120") {
			b := strings.Fields(lines[1])
			a := strings.Fields(lines[2])
			same := len(a) == len(b)
			for i := 1; same && i < len(a); i++ {
				if a[i] != b[i] && !strings.HasPrefix(a[i], "atime=") {
					same = false
				}
			}
			if same {
				continue
			}
		}
		out = append(out, d)
	}
	return out
}

// TestKernelRenamedMetacopy reads, through ltsp-unionfs, an upper layer in which kernel overlayfs (metacopy=on)
// renamed a lower file: the upper file is a metadata-only copy whose trusted.overlay.redirect names its data
// (found by this package's merge tests: ltsp-unionfs used to follow redirects of directories only and read
// zeros). Then it writes to the file through ltsp-unionfs, which copies the data up from the redirect's target.
func TestKernelRenamedMetacopy(t *testing.T) {
	testutil.RequireRoot(t)
	d := t.TempDir()
	lower, upper, work, mnt := filepath.Join(d, "lower"), filepath.Join(d, "upper"), filepath.Join(d, "work"),
		filepath.Join(d, "mnt")
	for _, p := range []string{lower, upper, work, mnt} {
		testutil.Mkdirs(t, p)
	}
	testutil.WriteFile(t, filepath.Join(lower, "motd"), []byte("welcome\n"), 0644)
	testutil.MountOverlay(t, []string{lower}, upper, work, mnt, "redirect_dir=on", "metacopy=on")
	testutil.Run(t, "mv", filepath.Join(mnt, "motd"), filepath.Join(mnt, "motd.old"))
	testutil.Unmount(t, mnt)
	if r := runCLI(t, "", "-o", "ro", "ro="+lower, "rw="+upper, mnt); r.code != 0 {
		t.Fatalf("mount: %s", r.stderr)
	}
	t.Cleanup(func() { unmountAndWait(t, mnt) })
	if b, err := os.ReadFile(filepath.Join(mnt, "motd.old")); err != nil || string(b) != "welcome\n" {
		t.Errorf("motd.old reads %q, %v; want the lower file's data", b, err)
	}
	unmountAndWait(t, mnt)
	if r := runCLI(t, "", "ro="+lower, "rw="+upper, mnt); r.code != 0 {
		t.Fatalf("mount: %s", r.stderr)
	}
	f, err := os.OpenFile(filepath.Join(mnt, "motd.old"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("more\n")
	f.Close()
	unmountAndWait(t, mnt)
	if b, err := os.ReadFile(filepath.Join(upper, "motd.old")); err != nil || string(b) != "welcome\nmore\n" {
		t.Errorf("after an append through ltsp-unionfs the upper file holds %q, %v", b, err)
	}
}
