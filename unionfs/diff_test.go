package unionfs

import (
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// The kernel as oracle: the same operations on kernel overlayfs (redirect_dir=on) and on ltsp-unionfs over
// identical lowers must give the same errors and the same merged views after every step. Afterwards the upper
// layer ltsp-unionfs wrote (overlay format) is mounted with kernel overlayfs (redirect_dir=on,metacopy=on) and
// must show the same tree again.

// diffPair is the reference and the union under test.
func diffPair(format string) fstest.DiffPair {
	return fstest.DiffPair{
		Ref: func(t *testing.T) fstest.Union { return fstest.NewKernelOverlay(t, "redirect_dir=on") },
		SUT: func(t *testing.T) fstest.Union {
			u := newTestUnion(t, 2)
			u.cfg.Whiteout = format
			return u
		},
		Fill: fstest.FillLowers,
		// The aufs and unionfs-fuse formats copy a renamed lower directory's subtree: it is no longer merged
		// and reports its real link count, where overlayfs reports 1.
		IgnoreDirNlink: format != "overlay",
	}
}

// kernelReadsUpper mounts the union's upper layer with kernel overlayfs and compares that view with the
// reference's, after a differential run.
func kernelReadsUpper(t *testing.T) func(ref, sut fstest.Union) string {
	return func(ref, sut fstest.Union) string {
		dir := t.TempDir()
		work, view := filepath.Join(dir, "work"), filepath.Join(dir, "view")
		testutil.Mkdirs(t, work)
		testutil.Mkdirs(t, view)
		testutil.MountOverlay(t, []string{sut.Lower(0), sut.Lower(1)}, sut.Upper(), work, view,
			"redirect_dir=on", "metacopy=on")
		defer testutil.Unmount(t, view)
		refView := ref.Mount(t)
		defer ref.Unmount(t)
		want, err := fstest.Describe(refView, fstest.DiffCompare)
		if err != nil {
			return err.Error()
		}
		got, err := fstest.Describe(view, fstest.DiffCompare)
		if err != nil {
			return err.Error()
		}
		if d := fstest.DiffDescriptions(want, got); d != "" {
			return "kernel overlayfs reading the union's upper layer shows another tree:\n" + d
		}
		return ""
	}
}

// TestDifferentialScripted runs a fixed script through both unions: every kind of change to every kind of lower
// object.
func TestDifferentialScripted(t *testing.T) {
	testutil.RequireRoot(t)
	ops := []fstest.Op{
		{Kind: "append", Path: "both/x", Data: "+"},
		{Kind: "chmod", Path: "lower/x", N: 0600},
		{Kind: "chown", Path: "f", N: 1000},
		{Kind: "utimes", Path: "both/z", N: 1234567890},
		{Kind: "setxattr", Path: "lower/sub", Path2: "k1", Data: "v"},
		{Kind: "truncate", Path: "f", N: 3},
		{Kind: "unlink", Path: "both/z"},
		{Kind: "create", Path: "both/z", Data: "new z", N: 0640},
		{Kind: "rename", Path: "lower", Path2: "renamed"},
		{Kind: "create", Path: "renamed/sub/new", Data: "n", N: 0644},
		{Kind: "mkdir", Path: "lower", N: 0755},
		{Kind: "rename", Path: "renamed/sub", Path2: "d2/sub2"},
		{Kind: "link", Path: "renamed/x", Path2: "d1/xlink"},
		{Kind: "append", Path: "d1/xlink", Data: "!"},
		{Kind: "rmdir", Path: "d2/d3"},
		{Kind: "unlink", Path: "d1/a"},
		{Kind: "rmdir", Path: "d1"},
		{Kind: "mkdir", Path: "d1", N: 0700},
		{Kind: "symlink", Path: "d1/a", Data: "../f"},
		{Kind: "rename", Path: "both", Path2: "f", N: unix.RENAME_EXCHANGE},
		{Kind: "mkfifo", Path: "pipe", N: 0600},
		{Kind: "rename", Path: "g", Path2: "renamed/g"},
	}
	if msg := fstest.RunDiff(t, diffPair("overlay"), ops, kernelReadsUpper(t)); msg != "" {
		t.Fatal(msg)
	}
}

// TestDifferentialRandom runs random operation sequences (LTSP_UNIONFS_DIFF_SEEDS seeds, default 10, of
// LTSP_UNIONFS_DIFF_OPS operations, default 150) through both unions, in each whiteout format; a disagreement is
// shrunk to a short reproducer.
func TestDifferentialRandom(t *testing.T) {
	testutil.RequireRoot(t)
	seeds, nops := envInt("LTSP_UNIONFS_DIFF_SEEDS", 10), envInt("LTSP_UNIONFS_DIFF_OPS", 150)
	for _, format := range []string{"overlay", "aufs", "unionfs-fuse"} {
		t.Run(format, func(t *testing.T) {
			pair := diffPair(format)
			var check func(ref, sut fstest.Union) string
			if format == "overlay" {
				check = kernelReadsUpper(t)
			}
			for seed := int64(1); seed <= int64(seeds); seed++ {
				ops := fstest.RandomOps(seed, nops, true)
				msg := fstest.RunDiff(t, pair, ops, check)
				if msg == "" {
					continue
				}
				short := fstest.Shrink(ops, func(o []fstest.Op) bool { return fstest.RunDiff(t, pair, o, check) != "" })
				t.Fatalf("seed %d: %s\nshrunk to %d operations, which fail with:\n%s\n%s", seed, msg, len(short),
					fstest.RunDiff(t, pair, short, check), fstest.Reproducer(short))
			}
		})
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}
