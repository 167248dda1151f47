package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// RunPackage runs the tests of a package that mounts unions (m.Run) and returns its exit code. The package gets a
// temporary directory of its own (PackageTempDir; TMPDIR points at it) holding the read-only fixture tree
// (BuildFixture); setup, if not nil, prepares more in it before the tests run (a binary, say). The run fails if
// the tests changed the fixture, which lower layers are made from, or left ltsp-unionfs mounts below the
// directory (they are unmounted lazily then, so that the next run starts clean).
func RunPackage(m *testing.M, pkg string, setup func(tmp, fixture string) error) int {
	tmp, err := PackageTempDir(pkg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	fixture := filepath.Join(tmp, "fixture")
	if err := os.Mkdir(fixture, 0755); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if err := BuildFixture(fixture); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if setup != nil {
		if err := setup(tmp, fixture); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	before, err := Snapshot(fixture)
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapshot:", err)
		return 1
	}
	code := m.Run()
	after, err := Snapshot(fixture)
	if err != nil {
		fmt.Fprintln(os.Stderr, "snapshot:", err)
		return 1
	}
	if diffs := DiffSnapshots(before, after); len(diffs) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the tests changed the lower layer fixture %s (%d objects):\n", fixture, len(diffs))
		for _, d := range diffs {
			fmt.Fprintln(os.Stderr, d)
		}
		return 1
	}
	if code == 0 {
		fmt.Printf("lower layer fixture unchanged after all tests: %d objects compared\n", len(before))
	}
	if left := UnionMounts(tmp); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the tests left ltsp-unionfs mounts behind: %v\n", left)
		for _, m := range left {
			exec.Command("umount", "-l", m).Run()
		}
		return 1
	}
	return code
}
