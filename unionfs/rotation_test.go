package unionfs

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// rotationChanges is what each round of TestLayerRotation does to the merged view ($1: the round), on the union
// and on kernel overlayfs alike: rename populated directories and files that live in lower layers (redirects),
// change modes of lower files (metadata-only copies) and then their data, delete (whiteouts), replace a
// directory by a new one (opaque), and move things between directories.
const rotationChanges = `set -e
r=$1
cd "$2"
mv dir$r dir$r.moved                               # a populated lower directory: redirect
mv dir$r.moved/sub dir$r.moved/sub.renamed         # nested
mkdir -p new$r && mv dir$r.moved/f new$r/f.moved   # a lower file into another directory
chmod 600 big$r                                    # metadata-only copy
[ -e big$((r - 1)) ] && chmod 640 big$((r - 1))    # a metadata-only copy of the round before, now in a lower layer
[ -e big$((r - 2)) ] && echo appended >> big$((r - 2)) # data to one two rounds down
rm -f gone$r                                       # whiteout
rm -r opaque$r && mkdir opaque$r && echo new > opaque$r/inside # opaque directory
if [ -d dir$((r - 1)).moved ]; then mv dir$((r - 1)).moved dir$((r - 1)).again; fi # a redirect renamed again
echo "round $r" > round$r
ln -s big$r chain$r.b && ln -s chain$r.b chain$r.a # two symlinks to a file with a metadata-only copy
ln -s dir$r.moved/sub.renamed/g sub$r.b && ln -s sub$r.b sub$r.a # through a redirected directory
`

// TestLayerRotation mounts a union, changes it, and mounts its upper layer again as the topmost lower layer
// under a fresh upper, three rounds deep, as a client's changes are kept and stacked, in every marker format.
// Turning the upper layer into a lower one must not change the view: each round starts with the tree the round
// before ended with. In the overlay format, kernel overlayfs (redirect_dir=on, metacopy=on) reads the same
// layers in every round and must show the same tree, before and after the same changes: redirects,
// metadata-only copies, whiteouts and opaque directories in lower layers are followed as overlayfs follows them.
func TestLayerRotation(t *testing.T) {
	testutil.RequireRoot(t)
	for _, format := range []string{"overlay", "aufs", "unionfs-fuse"} {
		t.Run(format, func(t *testing.T) { layerRotation(t, format) })
	}
}

func layerRotation(t *testing.T, format string) {
	u := noUnexpectedReplies(t, newTestUnion(t, 1))
	u.cfg.Whiteout = format
	image := u.Lower(0)
	for r := 1; r <= 3; r++ {
		for _, d := range []string{fmt.Sprintf("dir%d/sub", r), fmt.Sprintf("opaque%d", r)} {
			if err := os.MkdirAll(filepath.Join(image, d), 0755); err != nil {
				t.Fatal(err)
			}
		}
		for name, content := range map[string]string{
			fmt.Sprintf("dir%d/f", r): "file", fmt.Sprintf("dir%d/sub/g", r): "nested",
			fmt.Sprintf("big%d", r): fmt.Sprintf("data of big%d\n", r), fmt.Sprintf("gone%d", r): "x",
			fmt.Sprintf("opaque%d/old", r): "hidden later",
		} {
			if err := os.WriteFile(filepath.Join(image, name), []byte(content), 0644); err != nil {
				t.Fatal(err)
			}
		}
		// A chain of two symlinks in the image, to a file in a directory a round renames.
		for link, target := range map[string]string{fmt.Sprintf("image%d.b", r): fmt.Sprintf("dir%d/sub/g", r),
			fmt.Sprintf("image%d.a", r): fmt.Sprintf("image%d.b", r)} {
			if err := os.Symlink(target, filepath.Join(image, link)); err != nil {
				t.Fatal(err)
			}
		}
	}
	opt := fstest.DiffCompare
	if format != "overlay" {
		// The aufs and unionfs-fuse formats copy a renamed lower directory's subtree: it is no longer merged
		// and reports its real link count.
		opt.IgnoreDirNlink = true
	}
	lowers := []string{image}
	var last map[string]string // the view at the end of the round before
	for r := 1; r <= 3; r++ {
		upper := u.mkdir(fmt.Sprintf("upper%d", r))
		u.lowers, u.upper = lowers, upper
		mnt := u.Mount(t)
		ovl := ""
		if format == "overlay" {
			ovlUpper, work := u.mkdir(fmt.Sprintf("ovl-upper%d", r)), u.mkdir(fmt.Sprintf("work%d", r))
			ovl = u.mkdir(fmt.Sprintf("ovl%d", r))
			testutil.MountOverlay(t, lowers, ovlUpper, work, ovl, "redirect_dir=on", "metacopy=on")
		}
		compare := func(when string) map[string]string {
			t.Helper()
			got := describe(t, mnt, opt)
			if ovl != "" {
				if d := fstest.DiffDescriptions(describe(t, ovl, opt), got); d != "" {
					t.Fatalf("round %d, %s: the union and overlayfs show different trees:\n%s", r, when, d)
				}
			}
			return got
		}
		openChains(t, mnt, ovl, r)
		if before := compare("before the changes"); last != nil {
			if d := fstest.DiffDescriptions(last, before); d != "" {
				t.Fatalf("round %d: the view changed when the upper layer became a lower one:\n%s", r, d)
			}
		}
		for _, m := range []string{ovl, mnt} {
			if m == "" {
				continue
			}
			if out, err := runShell(rotationChanges, fmt.Sprint(r), m); err != nil {
				t.Fatalf("round %d: changing %s: %v\n%s", r, m, err, out)
			}
		}
		last = compare("after the changes")
		openChains(t, mnt, ovl, r)
		if ovl != "" {
			testutil.Unmount(t, ovl)
		}
		u.Unmount(t)
		// The union's upper layer, not overlayfs's, becomes a lower layer: both read it in the next round.
		lowers = append([]string{upper}, lowers...)
	}
}

// openChains opens every chain of two symlinks (names ending in ".a") of the union at mnt, from chains in the
// image and in every rotated layer: each reads as through overlayfs at ovl (if not ""), the same data or the same
// error. Then four goroutines open the chains that lead to a file at once, 50 times each, in turn read-only and
// for writing (which copies a lower file up under the readers and changes the node's open mode), on the union and
// then the same on overlayfs, and each open must succeed: an intermittent EIO of such an open after a rotation
// was reported.
func openChains(t *testing.T, mnt, ovl string, round int) {
	t.Helper()
	chains, err := filepath.Glob(filepath.Join(mnt, "*.a"))
	if err != nil || len(chains) == 0 {
		t.Fatalf("round %d: no symlink chains in the union (%v)", round, err)
	}
	var live []string
	for _, c := range chains {
		got, gotErr := os.ReadFile(c)
		if ovl != "" {
			want, wantErr := os.ReadFile(filepath.Join(ovl, filepath.Base(c)))
			if string(got) != string(want) || (gotErr == nil) != (wantErr == nil) {
				t.Errorf("round %d: through %s the union reads %q (%v), overlayfs %q (%v)", round,
					filepath.Base(c), got, gotErr, want, wantErr)
			}
		}
		if gotErr == nil {
			live = append(live, c)
		}
	}
	for _, m := range []string{mnt, ovl} { // the same opens on both, which copy up the same files
		if m != "" {
			openConcurrently(t, m, live, round)
		}
	}
}

// openConcurrently opens the names of chains (of the union) under m with four goroutines at once.
func openConcurrently(t *testing.T, m string, chains []string, round int) {
	t.Helper()
	modes := []int{os.O_RDONLY, os.O_WRONLY | os.O_APPEND, os.O_RDONLY | syscall.O_NOATIME, os.O_RDWR}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				c := filepath.Join(m, filepath.Base(chains[(g+i)%len(chains)]))
				f, err := os.OpenFile(c, modes[(g+i)%len(modes)], 0)
				if err != nil {
					t.Errorf("round %d: open through %s: %v", round, c, err)
					return
				}
				if _, err := f.Stat(); err != nil {
					t.Errorf("round %d: fstat through %s: %v", round, c, err)
				}
				f.Close()
			}
		}()
	}
	wg.Wait()
}

// describe describes the tree under root for comparison.
func describe(t *testing.T, root string, opt fstest.CompareOptions) map[string]string {
	t.Helper()
	d, err := fstest.Describe(root, opt)
	if err != nil {
		t.Fatalf("describing %s: %v", root, err)
	}
	return d
}
