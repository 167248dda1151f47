package unionfs

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// Layers that go away behind the daemon's back.

// TestLayersUnmountedLazily unmounts the upper and the lower filesystems (umount -l) under a mounted union. As
// root the union reaches each layer through a private clone of its mount (see Layer), so, like overlayfs, it
// keeps serving both: reads, copy-ups and new files all work, and the union unmounts cleanly.
func TestLayersUnmountedLazily(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	for _, d := range []string{u.lowers[0], u.upper} {
		if err := unix.Mount("tmpfs", d, "tmpfs", 0, "size=64m,mode=0755"); err != nil {
			t.Fatal(err)
		}
		mounted := d
		t.Cleanup(func() {
			if _, ok := testutil.MountAt(mounted); ok {
				testutil.Unmount(t, mounted)
			}
		})
	}
	writeFiles(t, u.lowers[0], 64<<10, "a", "b", "dir/c", "dir/d")
	mnt := u.Mount(t)
	for _, l := range u.root.layers.all {
		if !l.private {
			t.Fatalf("%s is not reached through a private clone", l)
		}
	}
	must(t, os.WriteFile(mnt+"/early", []byte("early"), 0644))
	for _, d := range []string{u.lowers[0], u.upper} {
		if err := unix.Unmount(d, unix.MNT_DETACH); err != nil {
			t.Fatalf("umount -l %s: %v", d, err)
		}
	}
	ops := 0
	within(t, 10*time.Second, "operations after the layers were unmounted", func() {
		for _, f := range []string{"a", "dir/c"} {
			ops++
			if data, err := os.ReadFile(filepath.Join(mnt, f)); err != nil || !bytes.Equal(data, content(f, 64<<10)) {
				t.Errorf("reading lower %s after umount -l: %v", f, err)
			}
		}
		ops += 4
		must(t, appendTo(mnt+"/b", []byte("tail")))                // copy-up
		must(t, os.WriteFile(mnt+"/dir/new", []byte("new"), 0644)) // directory copy-up and create
		must(t, os.Rename(mnt+"/dir", mnt+"/dir2"))                // redirect and whiteout
		if data, err := os.ReadFile(mnt + "/early"); err != nil || string(data) != "early" {
			t.Errorf("upper file after umount -l: %q %v", data, err)
		}
		if got := names(t, mnt+"/dir2"); fmt.Sprint(got) != "[c d new]" {
			t.Errorf("dir2: %v", got)
		}
	})
	t.Logf("layers unmounted lazily: %d operations after the umount -l, all served from the private clones", ops)
	within(t, 10*time.Second, "unmounting the union", func() { u.Unmount(t) })
}

// TestLowerServerGone cuts the connection of a FUSE lower layer (its server dies, as an NFS server may go away
// for good; the faultfs mount point is also unmounted lazily first): every operation that needs the lower
// layer fails promptly with an error, operations on upper-only files still work, and the union unmounts
// cleanly.
func TestLowerServerGone(t *testing.T) {
	u := newFaultUnion(t, func(dir string) {
		writeFiles(t, dir, 64<<10, "a", "b", "c", "dir/x", "dir/y", "dir/sub/z")
	})
	mnt := u.mnt
	must(t, os.Mkdir(mnt+"/updir", 0755))
	must(t, os.WriteFile(mnt+"/updir/f", []byte("upper"), 0644))
	if data, err := os.ReadFile(mnt + "/a"); err != nil || !bytes.Equal(data, content("a", 64<<10)) {
		t.Fatalf("reading a: %v", err)
	}
	// umount -l of the lower's mount point: the union has its own clone of the mount, and keeps reading.
	must(t, unix.Unmount(u.lowers[0], unix.MNT_DETACH))
	if data, err := os.ReadFile(mnt + "/b"); err != nil || !bytes.Equal(data, content("b", 64<<10)) {
		t.Errorf("reading b after umount -l of the lower: %v", err)
	}
	u.ffs.Abort()

	seen := map[syscall.Errno]int{}
	attempts := 0
	try := func(what string, fn func() error) {
		attempts++
		var err error
		within(t, 5*time.Second, what+" with the lower layer's server gone", func() { err = fn() })
		seen[errnoOf(err)]++
		if err == nil {
			t.Errorf("%s with the lower layer's server gone succeeded", what)
		}
	}
	try("read c", func() error { _, err := os.ReadFile(mnt + "/c"); return err })
	try("stat dir/x", func() error { _, err := os.Stat(mnt + "/dir/x"); return err })
	try("list dir/sub", func() error { _, err := os.ReadDir(mnt + "/dir/sub"); return err })
	try("copy-up c", func() error { return appendTo(mnt+"/c", []byte("x")) })
	try("rename dir", func() error { return os.Rename(mnt+"/dir", mnt+"/dir2") })
	try("unlink dir/y", func() error { return os.Remove(mnt + "/dir/y") })
	try("create in dir", func() error { return os.WriteFile(mnt+"/dir/new", nil, 0644) })
	// What only the upper layer holds is still served.
	within(t, 5*time.Second, "upper-only operations", func() {
		if data, err := os.ReadFile(mnt + "/updir/f"); err != nil || string(data) != "upper" {
			t.Errorf("upper-only file with the lower gone: %q %v", data, err)
		}
		if err := os.WriteFile(mnt+"/updir/g", []byte("g"), 0644); err != nil {
			t.Errorf("creating an upper-only file with the lower gone: %v", err)
		}
		if err := os.Remove(mnt + "/updir/f"); err != nil {
			t.Errorf("removing an upper-only file with the lower gone: %v", err)
		}
	})
	t.Logf("lower server gone: %d operations needing the lower failed promptly, errnos %v; upper-only operations served",
		attempts, seen)
	within(t, 10*time.Second, "unmounting the union", func() { u.Unmount(t) })
}

// TestUpperServerGone cuts the connection of a FUSE upper layer (its server dies): every operation fails
// promptly with an error (even a lookup of a lower-only name must ask the upper layer whether it is whited out),
// nothing hangs, and the union unmounts cleanly.
func TestUpperServerGone(t *testing.T) {
	u, ffs := quotaUnion(t)
	mnt := u.mnt
	must(t, os.WriteFile(mnt+"/upfile", []byte("upper"), 0644))
	ffs.Abort()
	seen := map[syscall.Errno]int{}
	attempts := 0
	try := func(what string, fn func() error) {
		attempts++
		var err error
		within(t, 5*time.Second, what+" with the upper layer's server gone", func() { err = fn() })
		seen[errnoOf(err)]++
		if err == nil {
			t.Errorf("%s with the upper layer's server gone succeeded", what)
		}
	}
	try("read kept", func() error { _, err := os.ReadFile(mnt + "/kept"); return err })
	try("read upfile", func() error { _, err := os.ReadFile(mnt + "/upfile"); return err })
	try("create", func() error { return os.WriteFile(mnt+"/new", nil, 0644) })
	try("copy-up", func() error { return appendTo(mnt+"/small", []byte("x")) })
	try("mkdir", func() error { return os.Mkdir(mnt+"/newdir", 0755) })
	try("unlink", func() error { return os.Remove(mnt + "/victim") })
	try("rename", func() error { return os.Rename(mnt+"/dir", mnt+"/dir2") })
	try("read a lower-only file", func() error { _, err := os.ReadFile(mnt + "/dir/x"); return err })
	t.Logf("upper server gone: %d operations failed promptly, errnos %v",
		attempts, seen)
	within(t, 10*time.Second, "unmounting the union", func() { u.Unmount(t) })
}
