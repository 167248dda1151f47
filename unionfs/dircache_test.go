package unionfs

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// The daemon refuses OPENDIR so that the kernel never sends OPENDIR/RELEASEDIR and caches every listing
// (handleFreeDirs). These tests read listings through that path the hard ways: long listings in many requests,
// concurrently, abandoned half way in more directories than the daemon keeps cursors for, and after the kernel
// dropped its cached pages mid-listing.

// lowerDirs makes n directories of per entries each in the first lower, with names long enough that a listing
// takes several READDIR requests, and returns their names and the sorted entry names every one holds.
func lowerDirs(t *testing.T, u *testUnion, n, per int) ([]string, []string) {
	t.Helper()
	var entries []string
	for i := 0; i < per; i++ {
		entries = append(entries, fmt.Sprintf("entry-%05d-%s", i, strings.Repeat("x", 40)))
	}
	var dirs []string
	for d := 0; d < n; d++ {
		name := fmt.Sprintf("d%03d", d)
		dirs = append(dirs, name)
		if err := os.Mkdir(filepath.Join(u.Lower(0), name), 0755); err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if err := os.WriteFile(filepath.Join(u.Lower(0), name, e), nil, 0644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return dirs, entries
}

func TestListingConcurrentReaders(t *testing.T) {
	u := newTestUnion(t, 1)
	dirs, want := lowerDirs(t, u, 1, 3000)
	mnt := u.Mount(t)
	// Entries in the upper too, so that the listing is a merge.
	for i := 0; i < 100; i++ {
		name := fmt.Sprintf("upper-%03d", i)
		if err := os.WriteFile(filepath.Join(mnt, dirs[0], name), nil, 0644); err != nil {
			t.Fatal(err)
		}
		want = append(want, name)
	}
	slices.Sort(want)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := 0; g < 16; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rep := 0; rep < 5; rep++ {
				got, err := readNames(filepath.Join(mnt, dirs[0]), 7)
				if err != nil {
					errs <- err
					return
				}
				if !slices.Equal(got, want) {
					errs <- fmt.Errorf("listing has %d names, want %d (first difference: %s)", len(got), len(want),
						firstDifference(got, want))
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// TestListingsAbandonedHalfWay leaves more directories half-listed than the daemon keeps cursors for, makes the
// kernel forget the pages it cached, and finishes every listing: each must come out whole and without
// duplicates, continued from where it stopped.
func TestListingsAbandonedHalfWay(t *testing.T) {
	u := newTestUnion(t, 1)
	n := 3 * maxDirCursors
	dirs, want := lowerDirs(t, u, n, 300)
	mnt := u.Mount(t)
	files := make([]*os.File, n)
	got := make([][]string, n)
	for i, d := range dirs {
		f, err := os.Open(filepath.Join(mnt, d))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		files[i] = f
		first, err := f.Readdirnames(10)
		if err != nil {
			t.Fatal(err)
		}
		got[i] = first
	}
	dropCaches(t)
	for i, f := range files {
		rest, err := f.Readdirnames(-1)
		if err != nil {
			t.Fatal(err)
		}
		names := append(got[i], rest...)
		slices.Sort(names)
		if !slices.Equal(names, want) {
			t.Fatalf("%s: %d names, want %d (first difference: %s)", dirs[i], len(names), len(want),
				firstDifference(names, want))
		}
	}
}

// TestListingSeesChanges lists a directory (the kernel caches it), changes it through the mount in every way,
// and lists again: the kernel must not answer from the stale listing.
func TestListingSeesChanges(t *testing.T) {
	u := newTestUnion(t, 1)
	testutil.WriteFile(t, filepath.Join(u.Lower(0), "lower-a"), nil, 0644)
	testutil.WriteFile(t, filepath.Join(u.Lower(0), "lower-b"), nil, 0644)
	testutil.Mkdirs(t, filepath.Join(u.Lower(0), "lower-dir"))
	mnt := u.Mount(t)
	check := func(step string, want ...string) {
		t.Helper()
		for pass := 0; pass < 2; pass++ { // the second pass is the one the kernel may answer from its cache
			got, err := readNames(mnt, 0)
			if err != nil {
				t.Fatal(err)
			}
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Fatalf("after %s: listing %v, want %v", step, got, want)
			}
		}
	}
	check("mount", "lower-a", "lower-b", "lower-dir")
	must(t, os.WriteFile(filepath.Join(mnt, "new"), nil, 0644))
	check("create", "lower-a", "lower-b", "lower-dir", "new")
	must(t, os.Remove(filepath.Join(mnt, "lower-a")))
	check("unlink of a lower file", "lower-b", "lower-dir", "new")
	must(t, os.Rename(filepath.Join(mnt, "lower-b"), filepath.Join(mnt, "renamed")))
	check("rename of a lower file", "lower-dir", "new", "renamed")
	must(t, os.Remove(filepath.Join(mnt, "lower-dir")))
	check("rmdir of a lower directory", "new", "renamed")
	must(t, os.Mkdir(filepath.Join(mnt, "lower-dir"), 0755))
	check("mkdir over a whiteout", "lower-dir", "new", "renamed")
	must(t, os.Link(filepath.Join(mnt, "new"), filepath.Join(mnt, "link")))
	check("link", "link", "lower-dir", "new", "renamed")
	must(t, os.Symlink("new", filepath.Join(mnt, "sym")))
	check("symlink", "link", "lower-dir", "new", "renamed", "sym")
}

func TestFsyncDirectory(t *testing.T) {
	u := newTestUnion(t, 1)
	testutil.Mkdirs(t, filepath.Join(u.Lower(0), "d"))
	mnt := u.Mount(t)
	for _, d := range []string{mnt, filepath.Join(mnt, "d")} {
		f, err := os.Open(d)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Errorf("fsync %s: %v", d, err)
		}
		f.Close()
	}
}

// readNames lists dir in batches of batch names (all at once if batch is 0) and returns them sorted.
func readNames(dir string, batch int) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var names []string
	for {
		n := batch
		if n == 0 {
			n = -1
		}
		got, err := f.Readdirnames(n)
		names = append(names, got...)
		if err == io.EOF || batch == 0 && err == nil {
			break
		}
		if err != nil {
			return nil, err
		}
	}
	slices.Sort(names)
	return names, nil
}

func firstDifference(got, want []string) string {
	for i := 0; i < len(got) && i < len(want); i++ {
		if got[i] != want[i] {
			return fmt.Sprintf("got %q, want %q at %d", got[i], want[i], i)
		}
	}
	return fmt.Sprintf("lengths %d and %d", len(got), len(want))
}

func dropCaches(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t) // to drop the kernel's caches
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
