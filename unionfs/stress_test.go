package unionfs

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// TestStress runs fstest's concurrent stress workers on the union and, with the same seeds, on kernel overlayfs
// at the same time: every worker checks its model after every step, the two runs must give the same error for
// every step, the same tree at the end, and the union's upper must read back the same through a fresh daemon.
// CI runs LTSP_UNIONFS_STRESS_SEEDS seeds (default 2) of 8 workers x 400 operations per whiteout format;
// LTSP_UNIONFS_STRESS_DURATION (e.g. 1h, set by make stress) runs seeds until that much time has passed.
func TestStress(t *testing.T) {
	testutil.RequireRoot(t)
	const workers = 8
	nops := envInt("LTSP_UNIONFS_STRESS_OPS", 400)
	seeds := envInt("LTSP_UNIONFS_STRESS_SEEDS", 2)
	first := int64(envInt("LTSP_UNIONFS_STRESS_FIRST_SEED", 1)) // to replay one seed: FIRST_SEED=n SEEDS=n
	formats := []string{"overlay", "aufs", "unionfs-fuse"}
	if f := os.Getenv("LTSP_UNIONFS_STRESS_FORMATS"); f != "" {
		formats = strings.Split(f, ",")
	}
	var until time.Time
	if d, err := time.ParseDuration(os.Getenv("LTSP_UNIONFS_STRESS_DURATION")); err == nil {
		until = time.Now().Add(d)
	}
	total, started := 0, time.Now()
	for seed := first; seed <= int64(seeds) || time.Now().Before(until); seed++ {
		for _, format := range formats {
			t.Run(fmt.Sprintf("seed%d/%s", seed, format), func(t *testing.T) {
				stressOnce(t, diffPair(format), format, fstest.StressConfig{Seed: seed, Workers: workers, Ops: nops})
			})
			total += workers * nops
		}
		if t.Failed() {
			break
		}
	}
	t.Logf("%d operations in %v, each checked against the model and against kernel overlayfs", total,
		time.Since(started).Round(time.Millisecond))
}

// stressOnce runs one seed on a fresh reference and a fresh union, concurrently.
func stressOnce(t *testing.T, pair fstest.DiffPair, format string, cfg fstest.StressConfig) {
	ref, sut := pair.Ref(t), pair.SUT(t)
	for _, u := range []fstest.Union{ref, sut} {
		fstest.FillStressLowers(t, u.Lower(0), u.Lower(1), cfg.Workers)
	}
	rm, sm := ref.Mount(t), sut.Mount(t)
	done := make(chan *fstest.StressResult)
	go func() { done <- fstest.Stress(rm, cfg) }()
	got := new(fstest.StressResult)
	runClient(t, "stress", stressArgs{Mnt: sm, Cfg: cfg}, got) // in another process: see client_test.go
	want := <-done
	if len(want.Failures) > 0 {
		t.Fatalf("the model disagrees with the reference (a harness bug):\n%s", strings.Join(want.Failures, "\n"))
	}
	if len(got.Failures) > 0 {
		t.Errorf("the union broke the model:\n%s", strings.Join(got.Failures, "\n"))
		if u, ok := sut.(*testUnion); ok {
			s := u.root.Stats()
			t.Logf("error replies the daemon sent: %v (layer errors among them: %v)", s.Replies, s.Errors)
		}
		shrinkWorker(t, pair, got)
		return
	}
	if d := fstest.CompareStressErrors(want, got); d != "" {
		t.Errorf("the union and overlayfs disagree:\n%s", d)
		return
	}
	// EINVAL is not checked here: the workers try invalid operations, and overlayfs's errors were compared.
	if u, ok := sut.(*testUnion); ok {
		for _, m := range unexpectedReplies(u, "EIO") {
			t.Error(m)
		}
	}
	opt := fstest.DiffCompare
	opt.IgnoreDirNlink = pair.IgnoreDirNlink
	wantTree, err := fstest.Describe(rm, opt)
	if err != nil {
		t.Fatal(err)
	}
	gotTree, err := fstest.Describe(sm, opt)
	if err != nil {
		t.Fatal(err)
	}
	if d := fstest.DiffDescriptions(wantTree, gotTree); d != "" {
		t.Errorf("after the run the trees differ:\n%s", d)
	}
	// A fresh daemon on the same upper reads back what the first one wrote.
	sut.Unmount(t)
	sm = sut.Mount(t)
	if gotTree2, err := fstest.Describe(sm, opt); err != nil {
		t.Fatal(err)
	} else if d := fstest.DiffDescriptions(gotTree, gotTree2); d != "" {
		t.Errorf("a fresh daemon on the same upper (%s format) shows another tree:\n%s", format, d)
	}
	t.Logf("%d workers x %d operations: union %v, overlayfs %v; succeeded: %v", cfg.Workers, cfg.Ops,
		got.Elapsed.Round(time.Millisecond), want.Elapsed.Round(time.Millisecond), got.Succeeded)
}

// shrinkWorker replays the sequence of the first worker that broke the model alone on fresh unions and shrinks
// it to a short reproducer when it fails alone too.
func shrinkWorker(t *testing.T, pair fstest.DiffPair, res *fstest.StressResult) {
	w := -1
	fmt.Sscanf(res.Failures[0], "worker %d", &w)
	if w < 0 {
		return
	}
	fails := func(ops []fstest.Op) bool {
		u := pair.SUT(t)
		fstest.FillStressLowers(t, u.Lower(0), u.Lower(1), 1)
		mnt := u.Mount(t)
		defer u.Unmount(t)
		var failure string
		runClient(t, "replay", stressArgs{Mnt: mnt, Ops: ops}, &failure)
		return failure != ""
	}
	ops := res.Ops[w]
	if !fails(ops) {
		t.Logf("worker %d's sequence passes when run alone: the failure needs the other workers (seed and worker "+
			"identify it)", w)
		return
	}
	short := fstest.Shrink(ops, fails)
	t.Logf("worker %d's sequence fails alone; shrunk to %d operations (replay with fstest.ReplayWorker):\n%s", w,
		len(short), fstest.Reproducer(short))
}
