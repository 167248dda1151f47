package unionfs

import (
	"fmt"
	"os"
	"testing"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// fixtureDir is a rich read-only tree (see testutil.BuildFixture) that many tests use as a lower layer. TestMain
// snapshots it before the tests and compares after them all: the union must never change a lower layer, not its
// content, modes, owners, xattrs, mtimes, ctimes or even atimes.
var fixtureDir string

func TestMain(m *testing.M) {
	if name := os.Getenv(clientEnv); name != "" {
		os.Exit(clientMain(name))
	}
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	tmp, err := testutil.PackageTempDir("unionfs")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	dir := tmp + "/fixture"
	if err := os.Mkdir(dir, 0755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fixtureDir = dir
	if err := testutil.BuildFixture(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	before, err := testutil.Snapshot(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapshot:", err)
		return 1
	}
	code := m.Run()
	after, err := testutil.Snapshot(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapshot:", err)
		return 1
	}
	if diffs := testutil.DiffSnapshots(before, after); len(diffs) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the tests changed the lower layer fixture %s (%d objects):\n", dir, len(diffs))
		for _, d := range diffs {
			fmt.Fprintln(os.Stderr, d)
		}
		return 1
	}
	if code == 0 {
		fmt.Printf("lower layer fixture unchanged after all tests: %d objects compared\n", len(before))
	}
	if left := testutil.UnionMounts(tmp); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the tests left ltsp-unionfs mounts behind: %v\n", left)
		return 1
	}
	return code
}
