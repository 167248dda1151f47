package unionfs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/faultfs"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// A full upper layer: every operation that needs space or an inode in the upper layer fails with ENOSPC, shows
// nothing partial (no half copy, no temporary name, the lower object still there), loses nothing written before,
// and succeeds once space is back (the failure left no state behind).

// Lower content of the space tests.
const (
	nsBig   = 4 << 20 // larger than the whole upper layer
	nsSmall = 4 << 10
	nsUpper = "8m" // size of the upper tmpfs: room for big, once the filler is gone
)

var nsLowerFiles = map[string]int{
	"big": nsBig, "small": nsSmall, "victim": nsSmall, "xa": nsSmall, "chm": nsSmall,
	"dir/x": nsSmall, "dir/sub/y": nsSmall, "deep/a/b/file": nsSmall,
}

// spaceOp is one operation that needs upper space.
type spaceOp struct {
	name string
	// run does the operation on the union mounted at mnt.
	run func(mnt string) error
	// needsBlocks and needsInode say which exhausted resource must make it fail; where neither is exhausted it
	// may succeed.
	needsBlocks, needsInode bool
	// done checks the effect of a successful run; undone checks that a failed run changed nothing.
	done, undone func(t *testing.T, mnt string)
}

func appendTo(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err2 := f.Close(); err == nil {
		err = err2
	}
	return err
}

// wantLower checks that the union shows lower file p unchanged.
func wantLower(t *testing.T, mnt, p string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(mnt, p))
	if err != nil || !bytes.Equal(data, content(p, nsLowerFiles[p])) {
		t.Errorf("%s: %v, or not the lower file's content (%d bytes)", p, err, len(data))
	}
}

func wantAbsent(t *testing.T, mnt, p string) {
	t.Helper()
	if _, err := os.Lstat(filepath.Join(mnt, p)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s: %v, want ENOENT", p, err)
	}
}

var spaceOps = []spaceOp{
	{
		name: "copy-up", needsBlocks: true, needsInode: true,
		run: func(mnt string) error { return appendTo(mnt+"/big", []byte("tail")) },
		done: func(t *testing.T, mnt string) {
			data, _ := os.ReadFile(mnt + "/big")
			if !bytes.Equal(data, append(content("big", nsBig), "tail"...)) {
				t.Errorf("big after copy-up and append: %d bytes, wrong", len(data))
			}
		},
		undone: func(t *testing.T, mnt string) { wantLower(t, mnt, "big") },
	},
	{
		name: "copy-up-deep", needsInode: true,
		run: func(mnt string) error { return appendTo(mnt+"/deep/a/b/file", []byte("tail")) },
		done: func(t *testing.T, mnt string) {
			data, _ := os.ReadFile(mnt + "/deep/a/b/file")
			if !bytes.Equal(data, append(content("deep/a/b/file", nsSmall), "tail"...)) {
				t.Error("deep/a/b/file after copy-up: wrong content")
			}
		},
		undone: func(t *testing.T, mnt string) { wantLower(t, mnt, "deep/a/b/file") },
	},
	{
		name: "create", needsInode: true,
		run: func(mnt string) error {
			f, err := os.OpenFile(mnt+"/newfile", os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0644)
			if err == nil {
				f.Close()
			}
			return err
		},
		done:   func(t *testing.T, mnt string) {},
		undone: func(t *testing.T, mnt string) { wantAbsent(t, mnt, "newfile") },
	},
	{
		name: "write", needsBlocks: true,
		run: func(mnt string) error { return appendTo(mnt+"/kept", make([]byte, 4<<20)) },
		done: func(t *testing.T, mnt string) {
			data, err := os.ReadFile(mnt + "/kept")
			if err != nil || len(data) != len(keptData)+4<<20 || !bytes.HasPrefix(data, keptData) {
				t.Errorf("kept after appending 4 MiB: %v, %d bytes", err, len(data))
			}
		},
		undone: func(t *testing.T, mnt string) {
			data, err := os.ReadFile(mnt + "/kept")
			if err != nil || len(data) < len(keptData) || !bytes.Equal(data[:len(keptData)], keptData) {
				t.Errorf("kept after a failed append: %v, the data written before is not intact", err)
			}
		},
	},
	{
		name: "rename-dir", needsInode: true,
		run: func(mnt string) error { return os.Rename(mnt+"/dir", mnt+"/dir2") },
		done: func(t *testing.T, mnt string) {
			wantAbsent(t, mnt, "dir")
			for _, p := range []string{"dir/x", "dir/sub/y"} {
				data, err := os.ReadFile(filepath.Join(mnt, "dir2", p[len("dir/"):]))
				if err != nil || !bytes.Equal(data, content(p, nsSmall)) {
					t.Errorf("%s after rename: %v", p, err)
				}
			}
		},
		undone: func(t *testing.T, mnt string) {
			wantLower(t, mnt, "dir/x")
			wantLower(t, mnt, "dir/sub/y")
			wantAbsent(t, mnt, "dir2")
		},
	},
	{
		name: "unlink", needsInode: true,
		run:  func(mnt string) error { return os.Remove(mnt + "/victim") },
		done: func(t *testing.T, mnt string) { wantAbsent(t, mnt, "victim") },
		undone: func(t *testing.T, mnt string) {
			wantLower(t, mnt, "victim")
		},
	},
	{
		name: "mkdir", needsInode: true,
		run: func(mnt string) error { return os.Mkdir(mnt+"/newdir", 0755) },
		done: func(t *testing.T, mnt string) {
			if st, err := os.Stat(mnt + "/newdir"); err != nil || !st.IsDir() {
				t.Errorf("newdir: %v", err)
			}
		},
		undone: func(t *testing.T, mnt string) { wantAbsent(t, mnt, "newdir") },
	},
	{
		name: "setxattr", needsInode: true,
		run: func(mnt string) error { return unix.Setxattr(mnt+"/xa", "user.k", []byte("v"), 0) },
		done: func(t *testing.T, mnt string) {
			buf := make([]byte, 16)
			if n, err := unix.Getxattr(mnt+"/xa", "user.k", buf); err != nil || string(buf[:n]) != "v" {
				t.Errorf("xattr after setxattr: %v", err)
			}
		},
		undone: func(t *testing.T, mnt string) {
			wantLower(t, mnt, "xa")
			if _, err := unix.Getxattr(mnt+"/xa", "user.k", make([]byte, 16)); err != unix.ENODATA {
				t.Errorf("xattr after a failed setxattr: %v, want ENODATA", err)
			}
		},
	},
	{
		name: "chmod", needsInode: true,
		run: func(mnt string) error { return os.Chmod(mnt+"/chm", 0600) },
		done: func(t *testing.T, mnt string) {
			if st, err := os.Stat(mnt + "/chm"); err != nil || st.Mode().Perm() != 0600 {
				t.Errorf("chm after chmod: %v", err)
			}
		},
		undone: func(t *testing.T, mnt string) {
			wantLower(t, mnt, "chm")
			if st, err := os.Stat(mnt + "/chm"); err != nil || st.Mode().Perm() != 0644 {
				t.Errorf("chm after a failed chmod: %v %v", st.Mode(), err)
			}
		},
	},
}

// keptData is written through the union, and fsynced, before the upper layer fills up.
var keptData = content("kept", 256<<10)

// spaceUnion mounts a union whose upper layer is a fresh tmpfs mounted with opts. With zeroBlocks the lower
// layer is a faultfs mount that reports its files to use no blocks, so that the copy-up's free-space check
// passes and the copy runs out of space half way.
func spaceUnion(t *testing.T, opts string, zeroBlocks bool) *testUnion {
	t.Helper()
	testutil.RequireRoot(t)
	fill := func(dir string) {
		for p, size := range nsLowerFiles {
			writeFiles(t, dir, size, p)
		}
	}
	var u *testUnion
	if zeroBlocks {
		fu := newFaultUnionUnmounted(t, fill)
		fu.ffs.SetZeroBlocks(true)
		u = fu.testUnion
	} else {
		u = newTestUnion(t, 1)
		fill(u.lowers[0])
	}
	if err := unix.Mount("tmpfs", u.upper, "tmpfs", 0, opts); err != nil {
		t.Fatalf("mount tmpfs -o %s: %v", opts, err)
	}
	t.Cleanup(func() { testutil.Unmount(t, u.upper) })
	mnt := u.Mount(t)
	f, err := os.Create(mnt + "/kept")
	must(t, err)
	_, err = f.Write(keptData)
	must(t, err)
	must(t, f.Sync())
	must(t, f.Close())
	return u
}

// exhaust fills the upper layer behind the union's back: its blocks (a file written until ENOSPC) or its
// inodes (empty files created until ENOSPC, then leave of them removed). It returns a function that gives the
// space back.
func exhaust(t *testing.T, upper string, inodes bool, leave int) (free func()) {
	t.Helper()
	dir := filepath.Join(upper, "zz-filler")
	must(t, os.Mkdir(dir, 0755))
	if inodes {
		for i := 0; ; i++ {
			f, err := os.Create(fmt.Sprintf("%s/%d", dir, i))
			if err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("filling inodes: %v", err)
				}
				break
			}
			f.Close()
		}
		// Give back leave inodes: the operation gets that far before it runs out.
		for i := 0; i < leave; i++ {
			must(t, os.Remove(fmt.Sprintf("%s/%d", dir, i)))
		}
	} else {
		f, err := os.Create(dir + "/blob")
		must(t, err)
		buf := make([]byte, 64<<10)
		for {
			if _, err := f.Write(buf); err != nil {
				if !errors.Is(err, syscall.ENOSPC) {
					t.Fatalf("filling blocks: %v", err)
				}
				break
			}
		}
		f.Close()
	}
	return func() { must(t, os.RemoveAll(dir)) }
}

// checkNoTemp fails the test for any temporary object of the union left in the upper layer.
func checkNoTemp(t *testing.T, upper string) {
	t.Helper()
	filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err == nil && whiteout.IsTempName(d.Name()) {
			t.Errorf("temporary object left in the upper layer: %s", p)
		}
		return nil
	})
}

// spaceRun is a way of running the upper layer out of space.
type spaceRun struct {
	resource   string
	opts       string // tmpfs options of the upper layer
	inodes     bool   // exhaust inodes rather than blocks
	zeroBlocks bool   // a lower that says its files use no blocks: the copy-up runs out half way
}

// TestUpperNoSpace runs every operation that needs the upper layer with its blocks exhausted, with its inodes
// exhausted at every stage (0, 1, ... free inodes, up to what the operation needs), and a copy-up that runs out
// of space half way.
func TestUpperNoSpace(t *testing.T) {
	runs := []spaceRun{
		{"blocks", "size=" + nsUpper + ",mode=0755", false, false},
		{"inodes", "size=64m,nr_inodes=64,mode=0755", true, false},
		{"blocks-midcopy", "size=2m,mode=0755", false, true},
	}
	counts := map[string]map[string]int{}
	attempts := 0
	for _, r := range runs {
		counts[r.resource] = map[string]int{}
		for _, op := range spaceOps {
			if r.zeroBlocks && op.name != "copy-up" {
				continue
			}
			stages := 1
			if r.inodes {
				stages = inodesNeeded(t, r, op) + 1 // the last stage has enough: the operation must work
			}
			for leave := 0; leave < stages; leave++ {
				t.Run(fmt.Sprintf("%s/%s/free=%d", r.resource, op.name, leave), func(t *testing.T) {
					attempts++
					e := tryNoSpace(t, r, op, leave, leave == stages-1 && r.inodes)
					counts[r.resource][fmt.Sprint(e)]++
				})
			}
		}
	}
	t.Logf("ENOSPC: %d attempts of %d operation kinds under exhausted blocks, inodes at every stage and a mid-copy shortage; errnos %v",
		attempts, len(spaceOps), counts)
}

// inodesNeeded measures how many upper inodes op takes on a union with room.
func inodesNeeded(t *testing.T, r spaceRun, op spaceOp) int {
	var n int
	t.Run("measure/"+op.name, func(t *testing.T) {
		u := spaceUnion(t, r.opts, false)
		var before, after unix.Statfs_t
		must(t, unix.Statfs(u.upper, &before))
		if err := op.run(u.mnt); err != nil {
			t.Fatalf("%s with room: %v", op.name, err)
		}
		must(t, unix.Statfs(u.upper, &after))
		n = int(before.Ffree - after.Ffree)
	})
	return n
}

// tryNoSpace runs op on a fresh union whose upper layer is out of the resource of r but for leave inodes, and
// checks the outcome: success (required when enough), or ENOSPC with nothing partial and nothing lost.
func tryNoSpace(t *testing.T, r spaceRun, op spaceOp, leave int, enough bool) syscall.Errno {
	u := spaceUnion(t, r.opts, r.zeroBlocks)
	mnt := u.mnt
	// With zeroBlocks the upper layer has room for the copy's space check (the lower says its files use no
	// blocks) but not for the data: the copy fails half way.
	var free func()
	if !r.zeroBlocks {
		free = exhaust(t, u.upper, r.inodes, leave)
	}
	var before unix.Statfs_t
	must(t, unix.Statfs(u.upper, &before))
	objsBefore := upperObjects(t, u.upper)
	err := op.run(mnt)
	e := errnoOf(err)
	needed := (op.needsBlocks && !r.inodes || op.needsInode && r.inodes) && !enough
	switch {
	case err == nil && needed:
		t.Errorf("%s with the upper layer's %s exhausted (%d left) succeeded", op.name, r.resource, leave)
	case err != nil && enough:
		t.Errorf("%s with %d free inodes, what it takes with room: %v", op.name, leave, err)
	case err != nil && e != syscall.ENOSPC:
		t.Errorf("%s: %v, want ENOSPC", op.name, err)
	}
	if err == nil {
		op.done(t, mnt)
	} else {
		op.undone(t, mnt)
	}
	checkNoTemp(t, u.upper)
	data, err2 := os.ReadFile(mnt + "/kept")
	if err2 != nil || !bytes.HasPrefix(data, keptData) {
		t.Errorf("kept, written before the upper layer filled up: %v, not intact", err2)
	}
	if err == nil {
		return 0
	}
	// A failed operation gives back what it took. Parent directories it copied up may stay (complete copies:
	// the view is the same, as in overlayfs); nothing else may.
	var after unix.Statfs_t
	must(t, unix.Statfs(u.upper, &after))
	if after.Bfree < before.Bfree {
		t.Errorf("%s failed but kept upper space: free blocks %d -> %d", op.name, before.Bfree, after.Bfree)
	}
	for p := range upperObjects(t, u.upper) {
		if !objsBefore[p] {
			t.Errorf("%s failed but left %s in the upper layer", op.name, p)
		}
	}
	if free == nil || op.name == "write" {
		return e
	}
	// With space back, the same operation works: the failure left no state behind.
	free()
	if err := op.run(mnt); err != nil {
		t.Errorf("%s once space is back: %v", op.name, err)
	} else {
		op.done(t, mnt)
	}
	checkNoTemp(t, u.upper)
	return e
}

// upperObjects returns the paths of the non-directories in the upper layer, outside the filler.
func upperObjects(t *testing.T, upper string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && d.Name() == "zz-filler" {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			out[p] = true
		}
		return nil
	})
	return out
}

// TestUpperQuota runs every operation that needs the upper layer against a quota that runs out at every stage:
// the upper layer is a faultfs mount (of a tmpfs directory) whose creations, writes and xattr writes fail with
// EDQUOT after the first N. This kernel has no filesystem quotas for tmpfs or ext4 (CONFIG_TMPFS_QUOTA,
// CONFIG_QFMT_V2 off), and a root daemon is exempt from hard limits anyway (CAP_SYS_RESOURCE), so EDQUOT reaches
// the union only from an upper layer on a network or FUSE filesystem that enforces quotas on the server: which
// this reproduces. faultfs has no O_TMPFILE, so copies are built under temporary names.
func TestUpperQuota(t *testing.T) {
	testutil.RequireRoot(t)
	quotaOps := faultfs.OpCreate | faultfs.OpWrite | faultfs.OpSetxattr
	counts := map[string]int{}
	attempts := 0
	for _, op := range spaceOps {
		// How many quota-charged operations op makes on the upper layer when nothing fails.
		var need int
		t.Run("measure/"+op.name, func(t *testing.T) {
			u, ffs := quotaUnion(t)
			ffs.AddRule(faultfs.Rule{Ops: quotaOps, Errno: syscall.EDQUOT, Skip: 1 << 30})
			if err := op.run(u.mnt); err != nil {
				t.Fatalf("%s with no quota: %v", op.name, err)
			}
			op.done(t, u.mnt)
			need = int(ffs.Hits())
		})
		for _, skip := range stages(need) {
			t.Run(fmt.Sprintf("%s/after=%d", op.name, skip), func(t *testing.T) {
				attempts++
				u, ffs := quotaUnion(t)
				ffs.AddRule(faultfs.Rule{Ops: quotaOps, Errno: syscall.EDQUOT, Skip: skip})
				err := op.run(u.mnt)
				e := errnoOf(err)
				counts[fmt.Sprint(e)]++
				switch {
				case skip == need && err != nil:
					t.Errorf("%s with quota for all it needs: %v", op.name, err)
				case err != nil && e != syscall.EDQUOT:
					t.Errorf("%s over quota: %v, want EDQUOT", op.name, err)
				}
				if err == nil {
					op.done(t, u.mnt)
				} else {
					// The view is unchanged. Complete copies made before the failing step (a copy-up
					// before a write that fails) may stay: they show what the lower layer shows.
					op.undone(t, u.mnt)
				}
				checkNoTemp(t, u.backing)
				if data, err := os.ReadFile(u.mnt + "/kept"); err != nil || !bytes.HasPrefix(data, keptData) {
					t.Errorf("kept, written before the quota ran out: %v, not intact", err)
				}
				if err != nil && op.name != "write" {
					// With quota back, the same operation works.
					ffs.ClearRules()
					if err := op.run(u.mnt); err != nil {
						t.Errorf("%s with quota back: %v", op.name, err)
					} else {
						op.done(t, u.mnt)
					}
					checkNoTemp(t, u.backing)
				}
			})
		}
	}
	t.Logf("EDQUOT: %d attempts of %d operation kinds, the quota running out at every stage; errnos %v",
		attempts, len(spaceOps), counts)
}

// quotaUnion is spaceUnion with a faultfs upper layer over a tmpfs directory; the union's mount point is u.mnt
// and the upper layer's real content is under fu.backing.
func quotaUnion(t *testing.T) (*faultUnion, *faultfs.FS) {
	t.Helper()
	testutil.RequireFUSE(t)
	backing, fmnt := t.TempDir(), t.TempDir()
	if err := unix.Mount("tmpfs", backing, "tmpfs", 0, "size=64m,mode=0755"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { testutil.Unmount(t, backing) })
	ffs, err := faultfs.Mount(backing, fmnt)
	if err != nil {
		t.Fatalf("mounting faultfs: %v", err)
	}
	t.Cleanup(func() {
		if err := ffs.Unmount(); err != nil {
			t.Errorf("unmounting faultfs: %v", err)
		}
	})
	u := newTestUnion(t, 1)
	for p, size := range nsLowerFiles {
		writeFiles(t, u.lowers[0], size, p)
	}
	u.upper = fmnt
	mnt := u.Mount(t)
	f, err := os.Create(mnt + "/kept")
	must(t, err)
	_, err = f.Write(keptData)
	must(t, err)
	must(t, f.Sync())
	must(t, f.Close())
	return &faultUnion{testUnion: u, ffs: ffs, backing: backing}, ffs
}

// stages returns the points 0..need at which a quota runs out: all of them for short operations, the first and
// last few and some between for long ones (a copy-up makes a write per chunk).
func stages(need int) []int {
	var out []int
	for i := 0; i <= need; i++ {
		if need <= 12 || i < 4 || i > need-4 || i%(need/4) == 0 {
			out = append(out, i)
		}
	}
	return out
}
