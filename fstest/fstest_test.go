package fstest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPlain validates Cases on a plain directory of the machine's filesystem.
func TestPlain(t *testing.T) {
	Run(t, Cases, func(t *testing.T) string { return t.TempDir() }, Config{})
}

// TestKernelOverlay validates UnionCases on kernel overlayfs, the reference the union is measured against.
func TestKernelOverlay(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("LTSP_UNIONFS_REQUIRE_FUSE") != "" {
			t.Fatal("mounting overlayfs needs root")
		}
		t.Skip("mounting overlayfs needs root")
	}
	RunUnion(t, UnionCases, func(t *testing.T) Union { return NewKernelOverlay(t) }, Config{Skip: map[string]string{
		"MergedDinoMatchesStat": "overlayfs without xino reports the upper d_ino of a merged subdirectory " +
			"while stat reports the lower st_ino; ltsp-unionfs keeps them equal",
	}})
}

// TestKernelOverlayCow validates CowCases on kernel overlayfs with redirect_dir=on, the mode that renames lower
// directories without EXDEV (the union always does).
func TestKernelOverlayCow(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("LTSP_UNIONFS_REQUIRE_FUSE") != "" {
			t.Fatal("mounting overlayfs needs root")
		}
		t.Skip("mounting overlayfs needs root")
	}
	RunUnion(t, CowCases, func(t *testing.T) Union {
		return NewKernelOverlay(t, "redirect_dir=on")
	}, Config{})
}

// TestDiffHarness validates the differential machinery on kernel overlayfs: two overlay mounts agree on random
// operations, and overlayfs without redirect_dir (EXDEV on lower directory renames) disagrees with overlayfs
// with it, the disagreement shrinking to a short reproducer that renames a lower directory.
func TestDiffHarness(t *testing.T) {
	requireRoot(t)
	same := DiffPair{
		Ref:  func(t *testing.T) Union { return NewKernelOverlay(t, "redirect_dir=on") },
		SUT:  func(t *testing.T) Union { return NewKernelOverlay(t, "redirect_dir=on") },
		Fill: FillLowers,
	}
	for seed := int64(1); seed <= 3; seed++ {
		if msg := RunDiff(t, same, RandomOps(seed, 100, true), nil); msg != "" {
			t.Fatalf("seed %d: two identical overlay mounts disagree: %s", seed, msg)
		}
	}
	differ := same
	differ.SUT = func(t *testing.T) Union { return NewKernelOverlay(t, "redirect_dir=off") }
	ops := []Op{{Kind: "create", Path: "a", Data: "x", N: 0644}, {Kind: "rename", Path: "lower", Path2: "moved"},
		{Kind: "append", Path: "a", Data: "y"}}
	if msg := RunDiff(t, differ, ops, nil); msg == "" {
		t.Fatal("the harness saw no difference between redirect_dir=on and redirect_dir=off")
	}
	short := Shrink(ops, func(o []Op) bool { return RunDiff(t, differ, o, nil) != "" })
	if len(short) != 1 || short[0].Kind != "rename" {
		t.Fatalf("shrunk to %d ops, want the rename alone:\n%s", len(short), Reproducer(short))
	}
	if !strings.Contains(Reproducer(short), `Kind: "rename"`) {
		t.Errorf("reproducer: %s", Reproducer(short))
	}
}

// TestStressOnReference validates the stress model: concurrent workers on kernel overlayfs (and on the union's
// reference behaviour for every operation kind) never disagree with it, and a broken filesystem is caught: a
// file changed behind a worker's back is reported.
func TestStressOnReference(t *testing.T) {
	requireRoot(t)
	u := NewKernelOverlay(t, "redirect_dir=on")
	const workers = 4
	FillStressLowers(t, u.Lower(0), u.Lower(1), workers+1) // the last one for the tampering below
	mnt := u.Mount(t)
	res := Stress(mnt, StressConfig{Seed: 1, Workers: workers, Ops: 300})
	if len(res.Failures) > 0 {
		t.Fatalf("the model disagrees with kernel overlayfs:\n%s", strings.Join(res.Failures, "\n"))
	}
	for _, kind := range []string{"create", "write", "mmapwrite", "truncate", "rename", "link", "rmdir", "unlink",
		"setxattr", "chmod"} {
		if res.Succeeded[kind] == 0 {
			t.Errorf("no %s succeeded in %d operations: the run tests too little", kind, workers*300)
		}
	}
	t.Logf("%d workers x 300 operations in %v; succeeded: %v", workers, res.Elapsed, res.Succeeded)

	// The model catches a change it did not make.
	dir := filepath.Join(mnt, stressWorkerDir(workers))
	m := stressModel(022)
	if msg := m.checkAll(dir); msg != "" {
		t.Fatalf("a fresh worker directory disagrees with the model: %s", msg)
	}
	if err := os.WriteFile(filepath.Join(dir, "ld", "b"), []byte("changed behind the model's back"), 0644); err != nil {
		t.Fatal(err)
	}
	if msg := m.checkAll(dir); !strings.Contains(msg, "ld/b") {
		t.Errorf("a file changed behind the model's back went unnoticed: %q", msg)
	}
}

// TestFsxOnReference validates the fsx model on a plain file of the machine's filesystem, and checks that it
// notices a file changed behind its back.
func TestFsxOnReference(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("reference "), 30000)
	p, src := filepath.Join(dir, "f"), filepath.Join(dir, "src")
	os.WriteFile(p, data, 0644)
	os.WriteFile(src, data[:100000], 0644)
	res := Fsx(p, data, src, data[:100000], FsxConfig{Seed: 1, Ops: 2000, MaxSize: 4 << 20})
	if res.Failure != "" {
		t.Fatalf("%s\nlast operations:\n%s", res.Failure, strings.Join(res.Log, "\n"))
	}
	t.Logf("operations: %v", res.Counts)
	want, _ := os.ReadFile(p)
	os.WriteFile(p, append(want, 'x'), 0644)
	if res := Fsx(p, want, src, nil, FsxConfig{Seed: 2, Ops: 16, MaxSize: 4 << 20}); res.Failure == "" {
		t.Error("a file changed behind fsx's back went unnoticed")
	}
}
