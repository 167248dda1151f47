package unionfs

import (
	"testing"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// TestCachesMatchFreshMount is the oracle for the kernel caches the daemon lets live for an hour (entries,
// attributes, negative entries, listings, symlink targets, page cache): after every operation of random
// sequences, the union's view, read through whatever the kernel cached while reading it after the earlier
// operations, must equal the view of a second, fresh, read-only mount of the same layers, which has no caches. A
// change the daemon makes without telling the kernel (a copy-up that changes a name's inode, a whiteout, an
// ancestor's link count, a hard link split) shows as a difference.
func TestCachesMatchFreshMount(t *testing.T) {
	testutil.RequireRoot(t)
	seeds, nops := envInt("LTSP_UNIONFS_COHERENCE_SEEDS", 4), envInt("LTSP_UNIONFS_COHERENCE_OPS", 60)
	opt := fstest.CompareOptions{IgnoreAtime: true}
	for seed := int64(1); seed <= int64(seeds); seed++ {
		u := newTestUnion(t, 2)
		fstest.FillLowers(t, u.Lower(0), u.Lower(1))
		mnt := u.Mount(t)
		freshMnt := u.mkdir("fresh")
		for i, op := range fstest.RandomOps(seed, nops, true) {
			op.Apply(mnt)
			live, err := fstest.Describe(mnt, opt)
			if err != nil {
				t.Fatalf("seed %d, after %v: reading the union: %v", seed, op, err)
			}
			fresh := &testUnion{dir: u.dir, cfg: testConfig(t), lowers: u.lowers, upper: u.upper,
				mnt: freshMnt}
			fresh.cfg.ReadOnly = true
			freshView := fresh.Mount(t)
			want, err := fstest.Describe(freshView, opt)
			fresh.Unmount(t)
			if err != nil {
				t.Fatalf("seed %d, after %v: reading a fresh mount: %v", seed, op, err)
			}
			if d := fstest.DiffDescriptions(want, live); d != "" {
				t.Fatalf("seed %d, after operation %d (%v), the mount's cached view differs from a fresh mount's "+
					"(-fresh +cached):\n%s", seed, i, op, d)
			}
		}
		u.Unmount(t)
	}
}
