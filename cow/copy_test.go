package cow

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// copyAll copies every entry of src's root into dst with Build and Publish, and returns the number copied.
func copyAll(t *testing.T, src, dst string, opt Options) int {
	t.Helper()
	sfd, err := unix.Open(src, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(sfd)
	dfd, err := unix.Open(dst, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dfd)
	ents, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(src, e.Name()), &st); err != nil {
			t.Fatal(err)
		}
		s, err := Build(Source{Dirfd: sfd, Name: e.Name(), Stat: st}, dfd, opt)
		if err != nil {
			t.Fatalf("Build %s: %v", e.Name(), err)
		}
		if err := s.Publish(e.Name()); err != nil {
			t.Fatalf("Publish %s: %v", e.Name(), err)
		}
		s.Close()
	}
	return len(ents)
}

// TestBuildCopiesEverything copies every kind of object of the fixture and compares the copies attribute by
// attribute: type, mode with setuid, owner, size, device numbers, times, symlink targets, content and xattrs
// (capabilities and ACLs included). Directories are copied empty, as copy-up does.
func TestBuildCopiesEverything(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	if err := testutil.BuildFixture(src); err != nil {
		t.Fatal(err)
	}
	n := copyAll(t, src, dst, Options{})
	if n < 15 {
		t.Fatalf("copied only %d objects", n)
	}
	// Reading a symlink of the source updates its atime (this test reads the source directly, not through a
	// noatime clone as the union does), so atimes are compared in TestBuildCopiesTimes instead.
	opts := fstest.CompareOptions{IgnoreDirSize: true, IgnoreDirNlink: true, IgnoreAtime: true}
	want, err := fstest.Describe(src, opts)
	if err != nil {
		t.Fatal(err)
	}
	got, err := fstest.Describe(dst, opts)
	if err != nil {
		t.Fatal(err)
	}
	for name, g := range got {
		if name == "." || strings.Contains(name, "/") {
			continue
		}
		w := want[name]
		if name == "hard1" || name == "hard2" {
			// Copies of hard links are separate files.
			w = strings.Replace(w, "nlink=2", "nlink=1", 1)
		}
		if g != w {
			t.Errorf("%s:\n  source: %s\n  copy:   %s", name, w, g)
		}
	}
	leftovers, _ := filepath.Glob(filepath.Join(dst, whiteout.TempPrefix+"*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary objects left: %v", leftovers)
	}
}

// TestBuildCopiesTimes checks that atime and mtime are copied to the nanosecond, for every type.
func TestBuildCopiesTimes(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	testutil.WriteFile(t, filepath.Join(src, "f"), []byte("x"), 0644)
	testutil.Mkdirs(t, filepath.Join(src, "d"))
	testutil.Symlink(t, "f", filepath.Join(src, "l"))
	unix.Mkfifo(filepath.Join(src, "p"), 0644)
	ts := []unix.Timespec{{Sec: 1000000001, Nsec: 11}, {Sec: 2000000002, Nsec: 22}}
	for _, n := range []string{"f", "d", "l", "p"} {
		unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(src, n), ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	copyAll(t, src, dst, Options{})
	for _, n := range []string{"f", "d", "l", "p"} {
		var st unix.Stat_t
		unix.Lstat(filepath.Join(dst, n), &st)
		if st.Atim != ts[0] || st.Mtim != ts[1] {
			t.Errorf("%s: atime %v mtime %v, want %v %v", n, st.Atim, st.Mtim, ts[0], ts[1])
		}
	}
}

// TestBuildKeepsHoles copies a 64 MiB file with 8 KiB of data: the copy uses about as many blocks as the source.
func TestBuildKeepsHoles(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	f, err := os.Create(filepath.Join(src, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte("a"), 4096), 0)
	f.WriteAt(bytes.Repeat([]byte("b"), 4096), 32<<20)
	f.Truncate(64 << 20)
	f.Close()
	copyAll(t, src, dst, Options{})
	var s, d unix.Stat_t
	unix.Stat(filepath.Join(src, "sparse"), &s)
	unix.Stat(filepath.Join(dst, "sparse"), &d)
	if d.Size != s.Size || d.Blocks > s.Blocks+16 {
		t.Errorf("copy: size %d blocks %d; source size %d blocks %d", d.Size, d.Blocks, s.Size, s.Blocks)
	}
	a, _ := os.ReadFile(filepath.Join(src, "sparse"))
	b, _ := os.ReadFile(filepath.Join(dst, "sparse"))
	if !bytes.Equal(a, b) {
		t.Error("content differs")
	}
}

// TestBuildMetadataOnly makes a metadata-only copy: attributes and xattrs, the size, no data blocks; CopyData
// fills the data in later.
func TestBuildMetadataOnly(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	content := bytes.Repeat([]byte("data"), 1<<18)
	testutil.WriteFile(t, filepath.Join(src, "f"), content, 0640)
	unix.Lsetxattr(filepath.Join(src, "f"), "user.k", []byte("v"), 0)
	copyAll(t, src, dst, Options{MetadataOnly: true, Extra: map[string][]byte{"user.marker": nil}})
	var st unix.Stat_t
	unix.Stat(filepath.Join(dst, "f"), &st)
	if st.Size != int64(len(content)) || st.Blocks != 0 || st.Mode&07777 != 0640 {
		t.Fatalf("metadata copy: size %d blocks %d mode %o", st.Size, st.Blocks, st.Mode)
	}
	buf := make([]byte, 16)
	if n, err := unix.Lgetxattr(filepath.Join(dst, "f"), "user.k", buf); err != nil || string(buf[:n]) != "v" {
		t.Errorf("xattr: %q %v", buf[:n], err)
	}
	if _, err := unix.Lgetxattr(filepath.Join(dst, "f"), "user.marker", buf); err != nil {
		t.Errorf("extra xattr: %v", err)
	}
	sfd, _ := unix.Open(src, unix.O_PATH|unix.O_DIRECTORY, 0)
	defer unix.Close(sfd)
	var sst unix.Stat_t
	unix.Stat(filepath.Join(src, "f"), &sst)
	out, _ := unix.Open(filepath.Join(dst, "f"), unix.O_RDWR, 0)
	if err := CopyData(Source{Dirfd: sfd, Name: "f", Stat: sst}, out); err != nil {
		t.Fatal(err)
	}
	unix.Close(out)
	if got, _ := os.ReadFile(filepath.Join(dst, "f")); !bytes.Equal(got, content) {
		t.Error("CopyData did not fill the data in")
	}
}

// TestBuildRefusesStaleSource fails with ESTALE when the name no longer holds the object that was looked up.
func TestBuildRefusesStaleSource(t *testing.T) {
	src, dst := t.TempDir(), t.TempDir()
	testutil.WriteFile(t, filepath.Join(src, "f"), []byte("one"), 0644)
	var st unix.Stat_t
	unix.Stat(filepath.Join(src, "f"), &st)
	os.Rename(filepath.Join(src, "f"), filepath.Join(src, "old")) // keeps the inode, so "f" gets a new one
	testutil.WriteFile(t, filepath.Join(src, "f"), []byte("two"), 0644)
	sfd, _ := unix.Open(src, unix.O_PATH|unix.O_DIRECTORY, 0)
	dfd, _ := unix.Open(dst, unix.O_PATH|unix.O_DIRECTORY, 0)
	defer unix.Close(sfd)
	defer unix.Close(dfd)
	if _, err := Build(Source{Dirfd: sfd, Name: "f", Stat: st}, dfd, Options{}); !errors.Is(err, syscall.ESTALE) {
		t.Fatalf("Build of a replaced source: %v, want ESTALE", err)
	}
	if ents, _ := os.ReadDir(dst); len(ents) != 0 {
		t.Errorf("a failed copy left %v", ents)
	}
}

// TestBuildENOSPC copies a file bigger than the free space of a small tmpfs: ENOSPC at once, nothing left, the
// free space unchanged.
func TestBuildENOSPC(t *testing.T) {
	testutil.RequireRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	testutil.MountTmpfs(t, dst, "1m")
	testutil.WriteFile(t, filepath.Join(src, "big"), bytes.Repeat([]byte("x"), 2<<20), 0644)
	var before, after unix.Statfs_t
	unix.Statfs(dst, &before)
	sfd, _ := unix.Open(src, unix.O_PATH|unix.O_DIRECTORY, 0)
	dfd, _ := unix.Open(dst, unix.O_PATH|unix.O_DIRECTORY, 0)
	defer unix.Close(sfd)
	defer unix.Close(dfd)
	var st unix.Stat_t
	unix.Stat(filepath.Join(src, "big"), &st)
	if _, err := Build(Source{Dirfd: sfd, Name: "big", Stat: st}, dfd, Options{}); !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("Build: %v, want ENOSPC", err)
	}
	unix.Statfs(dst, &after)
	if ents, _ := os.ReadDir(dst); len(ents) != 0 || after.Bfree != before.Bfree {
		t.Errorf("after ENOSPC: entries %v, free blocks %d (was %d)", ents, after.Bfree, before.Bfree)
	}
}

// TestBuildAcrossFilesystems copies from ext4 to tmpfs, where copy_file_range(2) refuses (EXDEV: the kernel
// copies only between filesystems of one type) and the data goes through sendfile(2): data segments at their
// offsets, holes kept, content equal.
func TestBuildAcrossFilesystems(t *testing.T) {
	testutil.RequireRoot(t)
	src, dst := t.TempDir(), t.TempDir()
	testutil.MountExt4(t, src, "96M")
	testutil.MountTmpfs(t, dst, "64m")
	data := make([]byte, 3<<20+123)
	for i := range data {
		data[i] = byte(i * 7 % 251)
	}
	f, err := os.Create(filepath.Join(src, "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(data, 4096)
	f.WriteAt(data[:5000], 40<<20)
	f.Truncate(48 << 20)
	f.Close()
	o1, o2 := int64(0), int64(0)
	in, _ := unix.Open(filepath.Join(src, "sparse"), unix.O_RDONLY, 0)
	out, _ := unix.Open(filepath.Join(dst, "probe"), unix.O_RDWR|unix.O_CREAT, 0644)
	if _, err := unix.CopyFileRange(in, &o1, out, &o2, 10, 0); !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("copy_file_range from ext4 to tmpfs gives %v, not EXDEV: the test cannot exercise the sendfile path", err)
	}
	unix.Close(in)
	unix.Close(out)
	os.Remove(filepath.Join(dst, "probe"))
	copyAll(t, src, dst, Options{})
	a, _ := os.ReadFile(filepath.Join(src, "sparse"))
	b, _ := os.ReadFile(filepath.Join(dst, "sparse"))
	if !bytes.Equal(a, b) {
		t.Fatal("content differs")
	}
	var s, d unix.Stat_t
	unix.Stat(filepath.Join(src, "sparse"), &s)
	unix.Stat(filepath.Join(dst, "sparse"), &d)
	if d.Blocks > s.Blocks+16 {
		t.Errorf("copy has %d blocks, source %d: holes were filled", d.Blocks, s.Blocks)
	}
}

// TestPreadPwrite checks the last-resort copy loop on its own: it copies at the given offset and stops at the
// end of the source.
func TestPreadPwrite(t *testing.T) {
	dir := t.TempDir()
	testutil.WriteFile(t, filepath.Join(dir, "in"), []byte("0123456789"), 0644)
	in, _ := unix.Open(filepath.Join(dir, "in"), unix.O_RDONLY, 0)
	defer unix.Close(in)
	out, _ := unix.Open(filepath.Join(dir, "out"), unix.O_RDWR|unix.O_CREAT, 0644)
	defer unix.Close(out)
	if n, err := preadPwrite(in, out, 4, 100); err != nil || n != 6 {
		t.Fatalf("copied %d, %v; want 6", n, err)
	}
	if n, err := preadPwrite(in, out, 10, 100); err != nil || n != 0 {
		t.Fatalf("at the end: copied %d, %v; want 0", n, err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "out"))
	if string(got) != "\x00\x00\x00\x00456789" {
		t.Errorf("out holds %q", got)
	}
}
