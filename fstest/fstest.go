// Package fstest is a reusable conformance battery for filesystems, and for union filesystems in particular.
//
// A Case checks a filesystem through an empty directory on it; Cases holds the ones every POSIX filesystem
// passes. A UnionCase gets a Union: it fills the layers, mounts, and checks the merged view; UnionCases holds the
// ones kernel overlayfs passes. The package imports nothing of ltsp-unionfs: it validates itself by running Cases
// on a plain directory and UnionCases on kernel overlayfs (see fstest_test.go), so every expectation is checked
// against a reference before it is used to judge ltsp-unionfs.
//
// Run one case with e.g. go test ./fstest -run 'TestPlain/Rename'.
package fstest

import (
	"os"
	"sort"
	"testing"
)

// Case checks a filesystem through dir, an empty directory on it.
type Case func(t *testing.T, dir string)

// Union is a union filesystem under test. A UnionCase fills the layers first, then mounts.
type Union interface {
	// Lower returns the directory of lower layer i, 0 being the topmost. A union has at least two lowers.
	Lower(i int) string
	// Upper returns the upper layer's directory. It starts empty.
	Upper() string
	// Mount mounts the union of the layers as they are now and returns the mount point. It may be called again
	// after Unmount.
	Mount(t *testing.T) string
	// Unmount unmounts the union, so that the layers can be examined or changed and the union mounted again.
	Unmount(t *testing.T)
}

// UnionCase checks a union filesystem.
type UnionCase func(t *testing.T, u Union)

// Config adapts a run of cases to one filesystem.
type Config struct {
	// Skip names cases that do not apply to the filesystem, each with the reason. Skipped cases are reported
	// as skipped, never as passed.
	Skip map[string]string
}

// Run runs every case in a subtest named after it, each in a fresh empty directory made by newDir.
func Run(t *testing.T, cases map[string]Case, newDir func(t *testing.T) string, cfg Config) {
	for _, name := range sortedNames(cases) {
		t.Run(name, func(t *testing.T) {
			if why, ok := cfg.Skip[name]; ok {
				t.Skip(why)
			}
			cases[name](t, newDir(t))
		})
	}
}

// RunUnion runs every union case in a subtest named after it, each on a fresh union made by newUnion.
func RunUnion(t *testing.T, cases map[string]UnionCase, newUnion func(t *testing.T) Union, cfg Config) {
	for _, name := range sortedNames(cases) {
		t.Run(name, func(t *testing.T) {
			if why, ok := cfg.Skip[name]; ok {
				t.Skip(why)
			}
			cases[name](t, newUnion(t))
		})
	}
}

func sortedNames[V any](m map[string]V) []string {
	names := make([]string, 0, len(m))
	for n := range m {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// requireRoot skips a case that needs root (devices, trusted xattrs, chown) when not root. CI runs as root with
// LTSP_UNIONFS_REQUIRE_FUSE set, and then a missing privilege is a failure, not a skip.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("LTSP_UNIONFS_REQUIRE_FUSE") != "" {
		t.Fatal("this case needs root")
	}
	t.Skip("this case needs root")
}
