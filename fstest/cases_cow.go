package fstest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// CowCases holds checks of a union's copy-on-write behaviour: every change to a lower object lands in the upper
// layer, the lowers never change, deletions stay deleted, and renames work without EXDEV. Each case checks the
// lower layers after unmounting.
var CowCases = map[string]UnionCase{
	"WriteCopiesUp":                WriteCopiesUp,
	"CopyUpKeepsMetadata":          CopyUpKeepsMetadata,
	"ChmodChownUtimesLower":        ChmodChownUtimesLower,
	"TruncateLower":                TruncateLower,
	"TruncateOnOpenLower":          TruncateOnOpenLower,
	"TruncateOnReadOnlyOpen":       TruncateOnReadOnlyOpen,
	"OpenFlagsMixedDescriptors":    OpenFlagsMixedDescriptors,
	"XattrsOnLower":                XattrsOnLower,
	"UnlinkLower":                  UnlinkLower,
	"UnlinkThenRecreate":           UnlinkThenRecreate,
	"RmdirLowerTree":               RmdirLowerTree,
	"RmdirMergedAfterEmptying":     RmdirMergedAfterEmptying,
	"MkdirOverWhiteoutIsOpaque":    MkdirOverWhiteoutIsOpaque,
	"SymlinkAndFifoOverWhiteout":   SymlinkAndFifoOverWhiteout,
	"CreateInLowerDirectory":       CreateInLowerDirectory,
	"RenameLowerFile":              RenameLowerFile,
	"RenameOverLowerFile":          RenameOverLowerFile,
	"RenameLowerDirectory":         RenameLowerDirectory,
	"RenameDirectoryTwice":         RenameDirectoryTwice,
	"RenameOverEmptyMergedDir":     RenameOverEmptyMergedDir,
	"RenameNoReplaceLower":         RenameNoReplaceLower,
	"RenameExchangeLower":          RenameExchangeLower,
	"HardLinkLower":                HardLinkLower,
	"LowerHardLinksSplit":          LowerHardLinksSplit,
	"InodeStableAcrossCopyUp":      InodeStableAcrossCopyUp,
	"OpenReaderSurvivesCopyUp":     OpenReaderSurvivesCopyUp,
	"SpecialFilesCopyUp":           SpecialFilesCopyUp,
	"CopyFileRangeFromLower":       CopyFileRangeFromLower,
	"FallocateLower":               FallocateLower,
	"TmpfileInLowerDirectory":      TmpfileInLowerDirectory,
	"SparseLowerFileCopyUp":        SparseLowerFileCopyUp,
	"ConcurrentWritersOneCopy":     ConcurrentWritersOneCopy,
	"DirectoryMtimeAfterCopyUp":    DirectoryMtimeAfterCopyUp,
	"DeepPathCopiesUpParents":      DeepPathCopiesUpParents,
	"RenameDirWithWhiteoutsInside": RenameDirWithWhiteoutsInside,
	"LeaseBlocksWriters":           LeaseBlocksWriters,
	"FanotifyWatchesFile":          FanotifyWatchesFile,
	"MappingBesideDescriptors":     MappingBesideDescriptors,
	"RlimitFsize":                  RlimitFsize,
}

// lowerSnapshot records the content of every regular file and the type of every object under a lower layer.
func lowerSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	snap := map[string]string{}
	filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			t.Fatalf("walk %s: %v", p, err)
		}
		rel, _ := filepath.Rel(dir, p)
		d := fmt.Sprintf("%o", uint32(info.Mode()))
		if info.Mode().IsRegular() {
			b, _ := os.ReadFile(p)
			d += " " + string(b)
		}
		snap[rel] = d
		return nil
	})
	return snap
}

// lowersUnchanged checks that the lowers hold exactly what the snapshots say.
func lowersUnchanged(t *testing.T, u Union, before ...map[string]string) {
	t.Helper()
	for i, snap := range before {
		after := lowerSnapshot(t, u.Lower(i))
		for k, v := range snap {
			if after[k] != v {
				t.Errorf("lower %d changed: %s was %q, is %q", i, k, trunc(v), trunc(after[k]))
			}
		}
		for k := range after {
			if _, ok := snap[k]; !ok {
				t.Errorf("lower %d gained %s", i, k)
			}
		}
	}
}

// snapLowers snapshots both lowers.
func snapLowers(t *testing.T, u Union) []map[string]string {
	return []map[string]string{lowerSnapshot(t, u.Lower(0)), lowerSnapshot(t, u.Lower(1))}
}

// WriteCopiesUp: writing a lower file copies it up; the union shows the write, the lower does not change.
func WriteCopiesUp(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(1), "f"), "lower content\n", 0644)
	before := snapLowers(t, u)
	mnt := u.Mount(t)
	f, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("appended\n"))
	f.Close()
	wantContent(t, filepath.Join(mnt, "f"), "lower content\nappended\n")
	u.Unmount(t)
	lowersUnchanged(t, u, before...)
	wantContent(t, filepath.Join(u.Upper(), "f"), "lower content\nappended\n")
	mnt = u.Mount(t)
	wantContent(t, filepath.Join(mnt, "f"), "lower content\nappended\n")
}

// CopyUpKeepsMetadata: a copy-up keeps mode (setuid too), owner, times and xattrs; opening for writing without
// writing changes nothing visible.
func CopyUpKeepsMetadata(t *testing.T, u Union) {
	p := filepath.Join(u.Lower(0), "tool")
	writeFile(t, p, "#!/bin/sh\n", 0)
	os.Chmod(p, 04755|os.ModeSetuid)
	unix.Chmod(p, 04755)
	unix.Lsetxattr(p, "user.note", []byte("kept"), 0)
	if os.Geteuid() == 0 {
		os.Lchown(p, 1234, 5678)
		unix.Lsetxattr(p, "security.capability", []byte("\x01\x00\x00\x02\x00\x20\x00\x00\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"), 0)
		unix.Chmod(p, 04755) // chown cleared setuid
	}
	ts := []unix.Timespec{{Sec: 1000000000, Nsec: 5}, {Sec: 1100000000, Nsec: 7}}
	unix.UtimesNano(p, ts)
	mnt := u.Mount(t)
	before, _ := Describe(filepath.Join(mnt), CompareOptions{IgnoreAtime: true, IgnoreDirSize: true, IgnoreDirNlink: true})
	f, err := os.OpenFile(filepath.Join(mnt, "tool"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	after, _ := Describe(filepath.Join(mnt), CompareOptions{IgnoreAtime: true, IgnoreDirSize: true, IgnoreDirNlink: true})
	if before["tool"] != after["tool"] {
		t.Errorf("copy-up changed the file:\n  before: %s\n  after:  %s", before["tool"], after["tool"])
	}
	u.Unmount(t)
	if _, err := os.Lstat(filepath.Join(u.Upper(), "tool")); err != nil {
		t.Errorf("no copy in the upper layer: %v", err)
	}
}

// ChmodChownUtimesLower: attribute changes on lower objects of every type show in the union and not below.
func ChmodChownUtimesLower(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "f"), strings.Repeat("data", 1000), 0644)
	mkdirAll(t, filepath.Join(u.Lower(1), "d"))
	os.Symlink("f", filepath.Join(u.Lower(1), "l"))
	before := snapLowers(t, u)
	mnt := u.Mount(t)
	if err := os.Chmod(filepath.Join(mnt, "f"), 0600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(mnt, "d"), 0700); err != nil {
		t.Fatal(err)
	}
	ts := []unix.Timespec{{Sec: 123, Nsec: 4}, {Sec: 567, Nsec: 8}}
	for _, n := range []string{"f", "d", "l"} {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(mnt, n), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatalf("utimes %s: %v", n, err)
		}
	}
	if os.Geteuid() == 0 {
		for _, n := range []string{"f", "d", "l"} {
			if err := os.Lchown(filepath.Join(mnt, n), 4321, 8765); err != nil {
				t.Fatalf("chown %s: %v", n, err)
			}
		}
	}
	check := func() {
		for n, mode := range map[string]uint32{"f": 0600, "d": 0700} {
			if st := lstat(t, filepath.Join(mnt, n)); st.Mode&07777 != mode {
				t.Errorf("%s: mode %o, want %o", n, st.Mode&07777, mode)
			}
		}
		for _, n := range []string{"f", "d", "l"} {
			st := lstat(t, filepath.Join(mnt, n))
			if st.Mtim != ts[1] {
				t.Errorf("%s: mtime %v, want %v", n, st.Mtim, ts[1])
			}
			if os.Geteuid() == 0 && (st.Uid != 4321 || st.Gid != 8765) {
				t.Errorf("%s: owner %d:%d", n, st.Uid, st.Gid)
			}
		}
		wantContent(t, filepath.Join(mnt, "f"), strings.Repeat("data", 1000))
	}
	check()
	u.Unmount(t)
	lowersUnchanged(t, u, before...)
	mnt = u.Mount(t)
	check()
}

// TruncateLower: truncating a lower file copies it up with the kept part of the data.
func TruncateLower(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "f"), "0123456789", 0644)
	before := snapLowers(t, u)
	mnt := u.Mount(t)
	if err := os.Truncate(filepath.Join(mnt, "f"), 4); err != nil {
		t.Fatal(err)
	}
	wantContent(t, filepath.Join(mnt, "f"), "0123")
	if err := os.Truncate(filepath.Join(mnt, "f"), 6); err != nil {
		t.Fatal(err)
	}
	wantContent(t, filepath.Join(mnt, "f"), "0123\x00\x00")
	u.Unmount(t)
	lowersUnchanged(t, u, before...)
}

// TruncateOnOpenLower: O_TRUNC on a lower file empties it in the union only.
func TruncateOnOpenLower(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "f"), strings.Repeat("x", 100000), 0640)
	before := snapLowers(t, u)
	mnt := u.Mount(t)
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("new"), 0); err != nil {
		t.Fatal(err)
	}
	wantContent(t, filepath.Join(mnt, "f"), "new")
	if st := lstat(t, filepath.Join(mnt, "f")); st.Mode&07777 != 0640 {
		t.Errorf("mode %o after truncating open", st.Mode&07777)
	}
	u.Unmount(t)
	lowersUnchanged(t, u, before...)
	mnt = u.Mount(t)
	wantContent(t, filepath.Join(mnt, "f"), "new")
}

// TruncateOnReadOnlyOpen: open(O_RDONLY|O_TRUNC), which Linux accepts and which truncates the file (the
// caller needs write permission), on a lower file, an upper file, a new name with O_CREAT, and through one and
// two symlinks. Each open succeeds, the file is empty and readable through the descriptor, and the lower files
// stay as they were.
func TruncateOnReadOnlyOpen(t *testing.T, u Union) {
	for _, name := range []string{"lower", "viaone", "viatwo"} {
		writeFile(t, filepath.Join(u.Lower(0), name), strings.Repeat("x", 5000), 0644)
	}
	for target, link := range map[string]string{"viaone": "link1", "link2b": "link2", "viatwo": "link2b"} {
		if err := os.Symlink(target, filepath.Join(u.Lower(1), link)); err != nil {
			t.Fatal(err)
		}
	}
	before := snapLowers(t, u)
	mnt := u.Mount(t)
	writeFile(t, filepath.Join(mnt, "upper"), "upper data", 0644)
	for _, c := range []struct {
		open, target string
		flags        int
	}{
		{"lower", "lower", unix.O_RDONLY | unix.O_TRUNC},
		{"upper", "upper", unix.O_RDONLY | unix.O_TRUNC},
		{"new", "new", unix.O_RDONLY | unix.O_TRUNC | unix.O_CREAT},
		{"link1", "viaone", unix.O_RDONLY | unix.O_TRUNC},
		{"link2", "viatwo", unix.O_RDONLY | unix.O_TRUNC | unix.O_CREAT},
	} {
		fd, err := unix.Open(filepath.Join(mnt, c.open), c.flags|unix.O_CLOEXEC, 0644)
		if err != nil {
			t.Errorf("open(%s, %#o): %v", c.open, c.flags, err)
			continue
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil || st.Size != 0 {
			t.Errorf("%s after open(O_RDONLY|O_TRUNC): size %d (%v), want 0", c.open, st.Size, err)
		}
		if n, err := unix.Read(fd, make([]byte, 10)); n != 0 || err != nil {
			t.Errorf("read from %s after the truncating open: %d bytes, %v", c.open, n, err)
		}
		if _, err := unix.Write(fd, []byte("x")); !errors.Is(err, syscall.EBADF) {
			t.Errorf("write to %s open read-only: %v, want EBADF", c.open, err)
		}
		unix.Close(fd)
		wantContent(t, filepath.Join(mnt, c.target), "")
	}
	u.Unmount(t)
	lowersUnchanged(t, u, before...)
	mnt = u.Mount(t)
	for _, name := range []string{"lower", "upper", "new", "viaone", "viatwo"} {
		wantContent(t, filepath.Join(mnt, name), "")
	}
}

// OpenFlagsMixedDescriptors opens a lower file and an upper file with the open flags Linux accepts for regular
// files (O_NOATIME, O_APPEND, O_PATH, O_DIRECT, O_SYNC, O_DSYNC, O_NONBLOCK) while a read-only descriptor of the
// same file stays open, and changes the file through them: appends, ftruncate, fallocate (extend, keep size,
// punch hole), sync_file_range, a reopen of the O_PATH descriptor for writing. Every call succeeds (O_DIRECT may
// be refused with EINVAL as a whole, as filesystems without direct I/O do), the read-only descriptor sees each
// change through fstat and pread, and an inotify watch reports the writes.
func OpenFlagsMixedDescriptors(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "lower"), "0123456789", 0644)
	mnt := u.Mount(t)
	writeFile(t, filepath.Join(mnt, "upper"), "0123456789", 0644)
	for _, name := range []string{"lower", "upper"} {
		path := filepath.Join(mnt, name)
		in, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.InotifyAddWatch(in, path, unix.IN_MODIFY); err != nil {
			t.Fatalf("inotify on %s: %v", name, err)
		}
		reader, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		want := "0123456789"
		check := func(step string) {
			t.Helper()
			var st unix.Stat_t
			if err := unix.Fstat(reader, &st); err != nil || st.Size != int64(len(want)) {
				t.Errorf("%s, %s: the read-only descriptor says size %d (%v), want %d", name, step, st.Size, err,
					len(want))
			}
			buf := make([]byte, len(want)+10)
			n, err := unix.Pread(reader, buf, 0)
			if err != nil || string(buf[:n]) != want {
				t.Errorf("%s, %s: the read-only descriptor reads %q (%v), want %q", name, step, buf[:n], err, want)
			}
		}
		do := func(step string, err error) {
			t.Helper()
			if err != nil {
				t.Errorf("%s, %s: %v", name, step, err)
			}
		}
		openFile := func(flags int) int {
			t.Helper()
			fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatalf("%s: open(%#o): %v", name, flags, err)
			}
			return fd
		}

		fd := openFile(unix.O_RDONLY | unix.O_NOATIME)
		buf := make([]byte, 10)
		if n, err := unix.Read(fd, buf); err != nil || string(buf[:n]) != want {
			t.Errorf("%s: read with O_NOATIME: %q, %v", name, buf[:n], err)
		}
		unix.Close(fd)

		fd = openFile(unix.O_WRONLY | unix.O_APPEND | unix.O_SYNC)
		_, err = unix.Write(fd, []byte("ab"))
		do("append with O_SYNC", err)
		unix.Close(fd)
		want += "ab"
		check("after an O_APPEND|O_SYNC write")

		fd = openFile(unix.O_RDWR | unix.O_APPEND | unix.O_DSYNC | unix.O_NONBLOCK)
		_, err = unix.Pwrite(fd, []byte("cd"), 0) // O_APPEND: Linux appends whatever the offset
		do("pwrite with O_APPEND", err)
		want += "cd"
		check("after a pwrite on an O_APPEND descriptor")
		do("ftruncate to 8", unix.Ftruncate(fd, 8))
		want = want[:8]
		check("after ftruncate")
		do("fallocate to 12", unix.Fallocate(fd, 0, 0, 12))
		want += "\x00\x00\x00\x00"
		check("after fallocate")
		do("fallocate keeping the size", unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, 0, 64))
		check("after fallocate with FALLOC_FL_KEEP_SIZE")
		do("punch a hole", unix.Fallocate(fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 2, 2))
		want = want[:2] + "\x00\x00" + want[4:]
		check("after punching a hole")
		do("sync_file_range", unix.SyncFileRange(fd, 0, 0, unix.SYNC_FILE_RANGE_WRITE|unix.SYNC_FILE_RANGE_WAIT_AFTER))
		unix.Close(fd)

		pfd := openFile(unix.O_PATH)
		if _, err := unix.Read(pfd, buf); !errors.Is(err, syscall.EBADF) {
			t.Errorf("%s: read from an O_PATH descriptor: %v, want EBADF", name, err)
		}
		var st unix.Stat_t
		do("fstat of an O_PATH descriptor", unix.Fstat(pfd, &st))
		wfd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), unix.O_WRONLY|unix.O_TRUNC|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Errorf("%s: reopening an O_PATH descriptor for writing: %v", name, err)
		} else {
			_, err = unix.Write(wfd, []byte("reopened"))
			do("write through the reopened descriptor", err)
			unix.Close(wfd)
			want = "reopened"
			check("after a write through a reopened O_PATH descriptor")
		}
		unix.Close(pfd)

		if fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0); err == nil {
			// Direct I/O wants aligned buffers: take one from an anonymous mapping.
			aligned, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
			if err != nil {
				t.Fatal(err)
			}
			if n, err := unix.Pread(fd, aligned, 0); err != nil && !errors.Is(err, syscall.EINVAL) {
				t.Errorf("%s: O_DIRECT read: %v", name, err)
			} else if err == nil && string(aligned[:n]) != want {
				t.Errorf("%s: O_DIRECT read %q, want %q", name, aligned[:n], want)
			}
			unix.Munmap(aligned)
			unix.Close(fd)
		} else if !errors.Is(err, syscall.EINVAL) {
			t.Errorf("%s: open(O_DIRECT): %v, want success or EINVAL", name, err)
		}

		ev := make([]byte, 4096)
		if n, err := unix.Read(in, ev); err != nil || n == 0 {
			t.Errorf("%s: inotify reported no IN_MODIFY for the writes (%v)", name, err)
		}
		unix.Close(in)
		unix.Close(reader)
		wantContent(t, path, want)
	}
}

// XattrsOnLower: setting and removing xattrs of lower files and directories.
func XattrsOnLower(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "f"), "x", 0644)
	mkdirAll(t, filepath.Join(u.Lower(1), "d"))
	if err := unix.Lsetxattr(filepath.Join(u.Lower(0), "f"), "user.old", []byte("1"), 0); err != nil {
		t.Skipf("no user xattrs on the lower filesystem: %v", err)
	}
	before := snapLowers(t, u)
	mnt := u.Mount(t)
	for _, n := range []string{"f", "d"} {
		if err := unix.Lsetxattr(filepath.Join(mnt, n), "user.new", []byte("2"), 0); err != nil {
			t.Fatalf("setxattr %s: %v", n, err)
		}
	}
	if err := unix.Lremovexattr(filepath.Join(mnt, "f"), "user.old"); err != nil {
		t.Fatal(err)
	}
	err := unix.Lremovexattr(filepath.Join(mnt, "d"), "user.absent")
	wantErrno(t, "removing an absent xattr", err, syscall.ENODATA)
	buf := make([]byte, 16)
	if _, err := unix.Lgetxattr(filepath.Join(mnt, "f"), "user.old", buf); !errors.Is(err, syscall.ENODATA) {
		t.Errorf("user.old after removal: %v", err)
	}
	for _, n := range []string{"f", "d"} {
		if k, err := unix.Lgetxattr(filepath.Join(mnt, n), "user.new", buf); err != nil || string(buf[:k]) != "2" {
			t.Errorf("%s user.new: %q %v", n, buf[:k], err)
		}
	}
	u.Unmount(t)
	lowersUnchanged(t, u, before...)
	if k, err := unix.Lgetxattr(filepath.Join(u.Lower(0), "f"), "user.old", buf); err != nil || string(buf[:k]) != "1" {
		t.Errorf("the lower file's xattr changed: %q %v", buf[:k], err)
	}
}

// UnlinkLower: deleting a lower file hides it in lookups and listings, for good.
func UnlinkLower(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "gone"), "x", 0644)
	writeFile(t, filepath.Join(u.Lower(1), "gone"), "deeper", 0644)
	writeFile(t, filepath.Join(u.Lower(1), "kept"), "y", 0644)
	before := snapLowers(t, u)
	mnt := u.Mount(t)
	if err := os.Remove(filepath.Join(mnt, "gone")); err != nil {
		t.Fatal(err)
	}
	wantAbsent(t, filepath.Join(mnt, "gone"))
	wantNames(t, mnt, "kept")
	wantErrno(t, "unlinking again", unix.Unlink(filepath.Join(mnt, "gone")), syscall.ENOENT)
	u.Unmount(t)
	lowersUnchanged(t, u, before...)
	mnt = u.Mount(t)
	wantAbsent(t, filepath.Join(mnt, "gone"))
	wantNames(t, mnt, "kept")
}

// UnlinkThenRecreate: a new file over a deleted lower name shows only the new content.
func UnlinkThenRecreate(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "f"), "old", 0644)
	mnt := u.Mount(t)
	os.Remove(filepath.Join(mnt, "f"))
	writeFile(t, filepath.Join(mnt, "f"), "new", 0600)
	wantContent(t, filepath.Join(mnt, "f"), "new")
	os.Remove(filepath.Join(mnt, "f"))
	wantAbsent(t, filepath.Join(mnt, "f"))
	writeFile(t, filepath.Join(mnt, "f"), "newer", 0600)
	u.Unmount(t)
	mnt = u.Mount(t)
	wantContent(t, filepath.Join(mnt, "f"), "newer")
}

// RmdirLowerTree: rm -r of a directory merged from both lowers removes it all.
func RmdirLowerTree(t *testing.T, u Union) {
	for i := 0; i < 2; i++ {
		mkdirAll(t, filepath.Join(u.Lower(i), "tree", "sub", fmt.Sprintf("deep%d", i)))
		writeFile(t, filepath.Join(u.Lower(i), "tree", fmt.Sprintf("f%d", i)), "", 0644)
		writeFile(t, filepath.Join(u.Lower(i), "tree", "sub", fmt.Sprintf("g%d", i)), "", 0644)
	}
	before := snapLowers(t, u)
	mnt := u.Mount(t)
	if err := os.RemoveAll(filepath.Join(mnt, "tree")); err != nil {
		t.Fatal(err)
	}
	wantAbsent(t, filepath.Join(mnt, "tree"))
	wantNames(t, mnt)
	u.Unmount(t)
	lowersUnchanged(t, u, before...)
	mnt = u.Mount(t)
	wantNames(t, mnt)
}

// RmdirMergedAfterEmptying: a merged directory whose names were all deleted (so its upper directory holds only
// whiteouts) can be removed.
func RmdirMergedAfterEmptying(t *testing.T, u Union) {
	mkdirAll(t, filepath.Join(u.Lower(0), "d"))
	writeFile(t, filepath.Join(u.Lower(0), "d", "a"), "", 0644)
	mkdirAll(t, filepath.Join(u.Lower(1), "d"))
	writeFile(t, filepath.Join(u.Lower(1), "d", "b"), "", 0644)
	mnt := u.Mount(t)
	wantErrno(t, "rmdir of a non-empty merged directory", unix.Rmdir(filepath.Join(mnt, "d")), syscall.ENOTEMPTY)
	for _, n := range []string{"a", "b"} {
		if err := os.Remove(filepath.Join(mnt, "d", n)); err != nil {
			t.Fatal(err)
		}
	}
	wantNames(t, filepath.Join(mnt, "d"))
	if err := unix.Rmdir(filepath.Join(mnt, "d")); err != nil {
		t.Fatalf("rmdir of a merged directory holding only whiteouts: %v", err)
	}
	wantAbsent(t, filepath.Join(mnt, "d"))
}

// MkdirOverWhiteoutIsOpaque: a directory made where a lower directory was deleted starts empty.
func MkdirOverWhiteoutIsOpaque(t *testing.T, u Union) {
	mkdirAll(t, filepath.Join(u.Lower(0), "d"))
	writeFile(t, filepath.Join(u.Lower(0), "d", "old"), "", 0644)
	mkdirAll(t, filepath.Join(u.Lower(1), "d"))
	writeFile(t, filepath.Join(u.Lower(1), "d", "older"), "", 0644)
	mnt := u.Mount(t)
	if err := os.RemoveAll(filepath.Join(mnt, "d")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(mnt, "d"), 0750); err != nil {
		t.Fatal(err)
	}
	wantNames(t, filepath.Join(mnt, "d"))
	writeFile(t, filepath.Join(mnt, "d", "new"), "", 0644)
	wantNames(t, filepath.Join(mnt, "d"), "new")
	u.Unmount(t)
	mnt = u.Mount(t)
	wantNames(t, filepath.Join(mnt, "d"), "new")
	if st := lstat(t, filepath.Join(mnt, "d")); st.Mode&07777 != 0750 {
		t.Errorf("mode %o", st.Mode&07777)
	}
}

// SymlinkAndFifoOverWhiteout: other types of new objects replace whiteouts too.
func SymlinkAndFifoOverWhiteout(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "l"), "was a file", 0644)
	mkdirAll(t, filepath.Join(u.Lower(0), "p"))
	mnt := u.Mount(t)
	os.Remove(filepath.Join(mnt, "l"))
	os.Remove(filepath.Join(mnt, "p"))
	if err := os.Symlink("target", filepath.Join(mnt, "l")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(mnt, "p"), 0600); err != nil {
		t.Fatal(err)
	}
	u.Unmount(t)
	mnt = u.Mount(t)
	if got, err := os.Readlink(filepath.Join(mnt, "l")); err != nil || got != "target" {
		t.Errorf("readlink: %q %v", got, err)
	}
	if st := lstat(t, filepath.Join(mnt, "p")); st.Mode&unix.S_IFMT != unix.S_IFIFO {
		t.Errorf("p: mode %o", st.Mode)
	}
}

// CreateInLowerDirectory: new names in a directory only a lower layer has: its parents are copied up.
func CreateInLowerDirectory(t *testing.T, u Union) {
	mkdirAll(t, filepath.Join(u.Lower(1), "a", "b"))
	os.Chmod(filepath.Join(u.Lower(1), "a"), 0751)
	writeFile(t, filepath.Join(u.Lower(1), "a", "b", "old"), "", 0644)
	before := snapLowers(t, u)
	mnt := u.Mount(t)
	writeFile(t, filepath.Join(mnt, "a", "b", "new"), "new", 0644)
	if err := os.Mkdir(filepath.Join(mnt, "a", "b", "newdir"), 0755); err != nil {
		t.Fatal(err)
	}
	wantNames(t, filepath.Join(mnt, "a", "b"), "new", "newdir", "old")
	if st := lstat(t, filepath.Join(mnt, "a")); st.Mode&07777 != 0751 {
		t.Errorf("copied-up parent: mode %o, want 0751", st.Mode&07777)
	}
	u.Unmount(t)
	lowersUnchanged(t, u, before...)
	wantNames(t, filepath.Join(u.Upper(), "a", "b"), "new", "newdir")
}

// RenameLowerFile: moving a lower file to another directory.
func RenameLowerFile(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(1), "f"), "content", 0640)
	mkdirAll(t, filepath.Join(u.Lower(0), "dir"))
	before := snapLowers(t, u)
	mnt := u.Mount(t)
	ino := lstat(t, filepath.Join(mnt, "f")).Ino
	if err := os.Rename(filepath.Join(mnt, "f"), filepath.Join(mnt, "dir", "g")); err != nil {
		t.Fatal(err)
	}
	wantAbsent(t, filepath.Join(mnt, "f"))
	wantContent(t, filepath.Join(mnt, "dir", "g"), "content")
	if got := lstat(t, filepath.Join(mnt, "dir", "g")).Ino; got != ino {
		t.Errorf("inode number changed by rename: %d, was %d", got, ino)
	}
	u.Unmount(t)
	lowersUnchanged(t, u, before...)
	mnt = u.Mount(t)
	wantAbsent(t, filepath.Join(mnt, "f"))
	wantContent(t, filepath.Join(mnt, "dir", "g"), "content")
}

// RenameOverLowerFile: replacing a lower file by renaming another file over it.
func RenameOverLowerFile(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "target"), "old target", 0644)
	writeFile(t, filepath.Join(u.Lower(1), "src"), "new content", 0644)
	mnt := u.Mount(t)
	if err := os.Rename(filepath.Join(mnt, "src"), filepath.Join(mnt, "target")); err != nil {
		t.Fatal(err)
	}
	wantContent(t, filepath.Join(mnt, "target"), "new content")
	wantNames(t, mnt, "target")
	u.Unmount(t)
	mnt = u.Mount(t)
	wantContent(t, filepath.Join(mnt, "target"), "new content")
	wantNames(t, mnt, "target")
}

// fillTree puts a small tree under dir/name in both lowers, with a name in each layer and one in both.
func fillTree(t *testing.T, u Union, name string) {
	for i := 0; i < 2; i++ {
		mkdirAll(t, filepath.Join(u.Lower(i), name, "sub"))
		writeFile(t, filepath.Join(u.Lower(i), name, fmt.Sprintf("f%d", i)), fmt.Sprintf("file %d", i), 0644)
		writeFile(t, filepath.Join(u.Lower(i), name, "sub", fmt.Sprintf("g%d", i)), fmt.Sprintf("deep %d", i), 0644)
		writeFile(t, filepath.Join(u.Lower(i), name, "both"), fmt.Sprintf("layer %d", i), 0644)
	}
}

// wantTree checks the tree fillTree made, seen at dir.
func wantTree(t *testing.T, dir string) {
	t.Helper()
	wantNames(t, dir, "both", "f0", "f1", "sub")
	wantNames(t, filepath.Join(dir, "sub"), "g0", "g1")
	wantContent(t, filepath.Join(dir, "both"), "layer 0")
	wantContent(t, filepath.Join(dir, "sub", "g1"), "deep 1")
}

// RenameLowerDirectory: mv of a directory merged from both lowers: no EXDEV, the whole content moves, the old
// name is gone, and a new directory of the old name starts empty.
func RenameLowerDirectory(t *testing.T, u Union) {
	fillTree(t, u, "tree")
	mkdirAll(t, filepath.Join(u.Lower(0), "dest"))
	before := snapLowers(t, u)
	mnt := u.Mount(t)
	if err := os.Rename(filepath.Join(mnt, "tree"), filepath.Join(mnt, "dest", "moved")); err != nil {
		t.Fatalf("rename of a lower directory: %v", err)
	}
	wantAbsent(t, filepath.Join(mnt, "tree"))
	wantTree(t, filepath.Join(mnt, "dest", "moved"))
	if err := os.Mkdir(filepath.Join(mnt, "tree"), 0755); err != nil {
		t.Fatal(err)
	}
	wantNames(t, filepath.Join(mnt, "tree"))
	writeFile(t, filepath.Join(mnt, "dest", "moved", "sub", "added"), "", 0644)
	u.Unmount(t)
	lowersUnchanged(t, u, before...)
	mnt = u.Mount(t)
	wantNames(t, filepath.Join(mnt, "tree"))
	wantNames(t, filepath.Join(mnt, "dest", "moved", "sub"), "added", "g0", "g1")
	wantContent(t, filepath.Join(mnt, "dest", "moved", "both"), "layer 0")
}

// RenameDirectoryTwice: a renamed lower directory renamed again, and a directory inside it renamed out.
func RenameDirectoryTwice(t *testing.T, u Union) {
	fillTree(t, u, "a")
	mnt := u.Mount(t)
	if err := os.Rename(filepath.Join(mnt, "a"), filepath.Join(mnt, "b")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(mnt, "b"), filepath.Join(mnt, "c")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(mnt, "c", "sub"), filepath.Join(mnt, "sub-out")); err != nil {
		t.Fatal(err)
	}
	wantNames(t, mnt, "c", "sub-out")
	wantNames(t, filepath.Join(mnt, "c"), "both", "f0", "f1")
	wantNames(t, filepath.Join(mnt, "sub-out"), "g0", "g1")
	u.Unmount(t)
	mnt = u.Mount(t)
	wantNames(t, mnt, "c", "sub-out")
	wantNames(t, filepath.Join(mnt, "c"), "both", "f0", "f1")
	wantNames(t, filepath.Join(mnt, "sub-out"), "g0", "g1")
}

// RenameOverEmptyMergedDir: a directory renamed over an empty merged directory shows only its own content.
func RenameOverEmptyMergedDir(t *testing.T, u Union) {
	mkdirAll(t, filepath.Join(u.Lower(0), "victim"))
	writeFile(t, filepath.Join(u.Lower(0), "victim", "was-here"), "", 0644)
	mkdirAll(t, filepath.Join(u.Lower(1), "victim"))
	mnt := u.Mount(t)
	os.Remove(filepath.Join(mnt, "victim", "was-here"))
	mkdirAll(t, filepath.Join(mnt, "src"))
	writeFile(t, filepath.Join(mnt, "src", "mine"), "", 0644)
	// unix.Rename: os.Rename refuses to rename onto an existing directory itself.
	if err := unix.Rename(filepath.Join(mnt, "src"), filepath.Join(mnt, "victim")); err != nil {
		t.Fatal(err)
	}
	wantNames(t, filepath.Join(mnt, "victim"), "mine")
	u.Unmount(t)
	mnt = u.Mount(t)
	wantNames(t, mnt, "victim")
	wantNames(t, filepath.Join(mnt, "victim"), "mine")
}

// RenameNoReplaceLower: RENAME_NOREPLACE onto a lower name fails with EEXIST and changes nothing.
func RenameNoReplaceLower(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "a"), "a", 0644)
	writeFile(t, filepath.Join(u.Lower(1), "b"), "b", 0644)
	mnt := u.Mount(t)
	err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(mnt, "a"), unix.AT_FDCWD, filepath.Join(mnt, "b"), unix.RENAME_NOREPLACE)
	wantErrno(t, "RENAME_NOREPLACE onto a lower file", err, syscall.EEXIST)
	wantContent(t, filepath.Join(mnt, "a"), "a")
	wantContent(t, filepath.Join(mnt, "b"), "b")
	err = unix.Renameat2(unix.AT_FDCWD, filepath.Join(mnt, "a"), unix.AT_FDCWD, filepath.Join(mnt, "c"), unix.RENAME_NOREPLACE)
	if err != nil {
		t.Fatal(err)
	}
	wantNames(t, mnt, "b", "c")
}

// RenameExchangeLower: RENAME_EXCHANGE between a lower file and a lower directory.
func RenameExchangeLower(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "file"), "i am a file", 0644)
	fillTree(t, u, "dir")
	mnt := u.Mount(t)
	err := unix.Renameat2(unix.AT_FDCWD, filepath.Join(mnt, "file"), unix.AT_FDCWD, filepath.Join(mnt, "dir"), unix.RENAME_EXCHANGE)
	if err != nil {
		t.Fatal(err) // EXDEV too: a union that renames lower directories (overlayfs with redirect_dir) exchanges them
	}
	wantContent(t, filepath.Join(mnt, "dir"), "i am a file")
	wantTree(t, filepath.Join(mnt, "file"))
	u.Unmount(t)
	mnt = u.Mount(t)
	wantContent(t, filepath.Join(mnt, "dir"), "i am a file")
	wantTree(t, filepath.Join(mnt, "file"))
}

// HardLinkLower: linking a lower file: both names share the copy.
func HardLinkLower(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "orig"), "shared", 0644)
	before := snapLowers(t, u)
	mnt := u.Mount(t)
	if err := os.Link(filepath.Join(mnt, "orig"), filepath.Join(mnt, "link")); err != nil {
		t.Fatal(err)
	}
	a, b := lstat(t, filepath.Join(mnt, "orig")), lstat(t, filepath.Join(mnt, "link"))
	if a.Ino != b.Ino || a.Nlink != 2 {
		t.Errorf("ino %d/%d nlink %d", a.Ino, b.Ino, a.Nlink)
	}
	f, _ := os.OpenFile(filepath.Join(mnt, "link"), os.O_WRONLY|os.O_APPEND, 0)
	f.Write([]byte(" data"))
	f.Close()
	wantContent(t, filepath.Join(mnt, "orig"), "shared data")
	u.Unmount(t)
	lowersUnchanged(t, u, before...)
	mnt = u.Mount(t)
	wantContent(t, filepath.Join(mnt, "orig"), "shared data")
	wantContent(t, filepath.Join(mnt, "link"), "shared data")
}

// LowerHardLinksSplit: writing one name of a hard-linked lower file leaves the other name's content alone (as in
// overlayfs without index=on).
func LowerHardLinksSplit(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "a"), "original", 0644)
	if err := os.Link(filepath.Join(u.Lower(0), "a"), filepath.Join(u.Lower(0), "b")); err != nil {
		t.Fatal(err)
	}
	mnt := u.Mount(t)
	wantContent(t, filepath.Join(mnt, "b"), "original")
	if err := os.WriteFile(filepath.Join(mnt, "a"), []byte("changed"), 0); err != nil {
		t.Fatal(err)
	}
	wantContent(t, filepath.Join(mnt, "a"), "changed")
	wantContent(t, filepath.Join(mnt, "b"), "original")
}

// InodeStableAcrossCopyUp: a file and a directory keep their inode numbers when copied up, also after the kernel
// forgot them and after a remount.
func InodeStableAcrossCopyUp(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "f"), "x", 0644)
	mkdirAll(t, filepath.Join(u.Lower(1), "d"))
	mnt := u.Mount(t)
	fino, dino := lstat(t, filepath.Join(mnt, "f")).Ino, lstat(t, filepath.Join(mnt, "d")).Ino
	os.Chmod(filepath.Join(mnt, "f"), 0600)
	writeFile(t, filepath.Join(mnt, "d", "new"), "", 0644)
	check := func(when string) {
		if got := lstat(t, filepath.Join(mnt, "f")).Ino; got != fino {
			t.Errorf("%s: file inode %d, was %d", when, got, fino)
		}
		if got := lstat(t, filepath.Join(mnt, "d")).Ino; got != dino {
			t.Errorf("%s: directory inode %d, was %d", when, got, dino)
		}
		checkDinoMatchesStat(t, mnt)
	}
	check("after copy-up")
	if os.Geteuid() == 0 {
		os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0)
		check("after the kernel forgot them")
	}
	u.Unmount(t)
	mnt = u.Mount(t)
	check("after a remount")
}

// OpenReaderSurvivesCopyUp: a descriptor opened for reading before another process copies the file up keeps
// working; it reads either the old or the new content, never an error or a mix.
func OpenReaderSurvivesCopyUp(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "f"), "AAAAAAAA", 0644)
	mnt := u.Mount(t)
	r, err := os.Open(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := os.WriteFile(filepath.Join(mnt, "f"), []byte("BBBBBBBB"), 0); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 8)
	if _, err := r.ReadAt(buf, 0); err != nil {
		t.Fatalf("reading through the old descriptor: %v", err)
	}
	if got := string(buf); got != "AAAAAAAA" && got != "BBBBBBBB" {
		t.Errorf("the old descriptor reads %q", got)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(r.Fd()), &st); err != nil {
		t.Errorf("fstat through the old descriptor: %v", err)
	}
	wantContent(t, filepath.Join(mnt, "f"), "BBBBBBBB")
}

// SpecialFilesCopyUp: FIFOs, sockets and (as root) devices of a lower layer can be changed.
func SpecialFilesCopyUp(t *testing.T, u Union) {
	unix.Mkfifo(filepath.Join(u.Lower(0), "fifo"), 0644)
	fd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	bindSocket(fd, filepath.Join(u.Lower(1), "sock"))
	unix.Close(fd)
	names := []string{"fifo", "sock"}
	if os.Geteuid() == 0 {
		unix.Mknod(filepath.Join(u.Lower(0), "null"), unix.S_IFCHR|0666, int(unix.Mkdev(1, 3)))
		names = append(names, "null")
	}
	mnt := u.Mount(t)
	for _, n := range names {
		before := lstat(t, filepath.Join(mnt, n))
		if err := unix.Chmod(filepath.Join(mnt, n), 0600); err != nil {
			t.Fatalf("chmod %s: %v", n, err)
		}
		after := lstat(t, filepath.Join(mnt, n))
		if after.Mode != before.Mode&unix.S_IFMT|0600 || after.Rdev != before.Rdev {
			t.Errorf("%s: mode %o rdev %x, was %o %x", n, after.Mode, after.Rdev, before.Mode, before.Rdev)
		}
	}
}

// CopyFileRangeFromLower: copy_file_range(2) from a lower file into a new one.
func CopyFileRangeFromLower(t *testing.T, u Union) {
	content := strings.Repeat("range ", 5000)
	writeFile(t, filepath.Join(u.Lower(0), "src"), content, 0644)
	mnt := u.Mount(t)
	in, err := os.Open(filepath.Join(mnt, "src"))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(filepath.Join(mnt, "dst"))
	if err != nil {
		t.Fatal(err)
	}
	for done := 0; done < len(content); {
		n, err := unix.CopyFileRange(int(in.Fd()), nil, int(out.Fd()), nil, len(content)-done, 0)
		if err != nil {
			t.Fatalf("copy_file_range: %v", err)
		}
		if n == 0 {
			break
		}
		done += n
	}
	out.Close()
	wantContent(t, filepath.Join(mnt, "dst"), content)
}

// FallocateLower: fallocate on a lower file copies it up and grows it.
func FallocateLower(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "f"), "abc", 0644)
	mnt := u.Mount(t)
	f, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 8192); err != nil {
		t.Fatal(err)
	}
	f.Close()
	wantContent(t, filepath.Join(mnt, "f"), "abc"+strings.Repeat("\x00", 8189))
}

// TmpfileInLowerDirectory: O_TMPFILE in a directory only a lower layer has, then linked into place.
func TmpfileInLowerDirectory(t *testing.T, u Union) {
	mkdirAll(t, filepath.Join(u.Lower(1), "dir"))
	mnt := u.Mount(t)
	fd, err := unix.Open(filepath.Join(mnt, "dir"), unix.O_TMPFILE|unix.O_RDWR, 0640)
	if err != nil {
		t.Fatalf("O_TMPFILE: %v", err)
	}
	defer unix.Close(fd)
	unix.Write(fd, []byte("anonymous"))
	wantNames(t, filepath.Join(mnt, "dir"))
	if err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD,
		filepath.Join(mnt, "dir", "named"), unix.AT_SYMLINK_FOLLOW); err != nil {
		t.Fatalf("linkat: %v", err)
	}
	wantContent(t, filepath.Join(mnt, "dir", "named"), "anonymous")
}

// SparseLowerFileCopyUp: a sparse lower file stays sparse when written.
func SparseLowerFileCopyUp(t *testing.T, u Union) {
	f, err := os.Create(filepath.Join(u.Lower(0), "sparse"))
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("start"), 0)
	f.Truncate(64 << 20)
	f.Close()
	mnt := u.Mount(t)
	g, err := os.OpenFile(filepath.Join(mnt, "sparse"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	g.WriteAt([]byte("end"), 64<<20-3)
	g.Close()
	st := lstat(t, filepath.Join(mnt, "sparse"))
	// overlayfs copies in 1 MiB chunks, skipping only whole holes: allow a few.
	if st.Size != 64<<20 || st.Blocks*512 > 4<<20 {
		t.Errorf("size %d, %d bytes allocated: the holes were filled", st.Size, st.Blocks*512)
	}
	b := make([]byte, 5)
	h, _ := os.Open(filepath.Join(mnt, "sparse"))
	h.ReadAt(b, 0)
	h.Close()
	if string(b) != "start" {
		t.Errorf("start reads %q", b)
	}
}

// ConcurrentWritersOneCopy: several writers open the same lower file at once; every write lands.
func ConcurrentWritersOneCopy(t *testing.T, u Union) {
	writeFile(t, filepath.Join(u.Lower(0), "shared"), strings.Repeat(".", 64), 0666)
	mnt := u.Mount(t)
	const writers = 8
	errs := make(chan error, writers)
	for i := 0; i < writers; i++ {
		go func(i int) {
			f, err := os.OpenFile(filepath.Join(mnt, "shared"), os.O_WRONLY, 0)
			if err != nil {
				errs <- err
				return
			}
			_, err = f.WriteAt([]byte{byte('0' + i)}, int64(i*8))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			errs <- err
		}(i)
	}
	for i := 0; i < writers; i++ {
		if err := <-errs; err != nil {
			t.Errorf("writer: %v", err)
		}
	}
	got, _ := os.ReadFile(filepath.Join(mnt, "shared"))
	for i := 0; i < writers; i++ {
		if got[i*8] != byte('0'+i) {
			t.Errorf("write %d was lost: %q", i, got)
		}
	}
}

// DirectoryMtimeAfterCopyUp: a directory copied up for a new name gets its mtime updated by the creation.
func DirectoryMtimeAfterCopyUp(t *testing.T, u Union) {
	mkdirAll(t, filepath.Join(u.Lower(0), "d"))
	old := unix.Timespec{Sec: 1000}
	unix.UtimesNano(filepath.Join(u.Lower(0), "d"), []unix.Timespec{old, old})
	mnt := u.Mount(t)
	if st := lstat(t, filepath.Join(mnt, "d")); st.Mtim.Sec != 1000 {
		t.Fatalf("mtime %v before", st.Mtim)
	}
	writeFile(t, filepath.Join(mnt, "d", "new"), "", 0644)
	if st := lstat(t, filepath.Join(mnt, "d")); st.Mtim.Sec == 1000 {
		t.Error("creating a file left the copied-up directory's mtime unchanged")
	}
}

// DeepPathCopiesUpParents: a change deep in a lower tree copies the whole chain of parents, with their modes.
func DeepPathCopiesUpParents(t *testing.T, u Union) {
	p := u.Lower(1)
	for i := 0; i < 8; i++ {
		p = filepath.Join(p, fmt.Sprintf("level%d", i))
		mkdirAll(t, p)
		os.Chmod(p, os.FileMode(0700+i))
	}
	writeFile(t, filepath.Join(p, "leaf"), "leaf", 0644)
	mnt := u.Mount(t)
	mp := mnt
	for i := 0; i < 8; i++ {
		mp = filepath.Join(mp, fmt.Sprintf("level%d", i))
	}
	if err := os.WriteFile(filepath.Join(mp, "leaf"), []byte("changed"), 0); err != nil {
		t.Fatal(err)
	}
	u.Unmount(t)
	up := u.Upper()
	for i := 0; i < 8; i++ {
		up = filepath.Join(up, fmt.Sprintf("level%d", i))
		if st := lstat(t, up); st.Mode&07777 != uint32(0700+i) {
			t.Errorf("copied-up level%d: mode %o", i, st.Mode&07777)
		}
	}
	wantContent(t, filepath.Join(up, "leaf"), "changed")
}

// RenameDirWithWhiteoutsInside: a lower directory with deleted names renamed: the names stay deleted.
func RenameDirWithWhiteoutsInside(t *testing.T, u Union) {
	fillTree(t, u, "d")
	mnt := u.Mount(t)
	os.Remove(filepath.Join(mnt, "d", "f1"))
	os.Remove(filepath.Join(mnt, "d", "sub", "g0"))
	if err := os.Rename(filepath.Join(mnt, "d"), filepath.Join(mnt, "e")); err != nil {
		t.Fatal(err)
	}
	check := func() {
		wantNames(t, filepath.Join(mnt, "e"), "both", "f0", "sub")
		wantNames(t, filepath.Join(mnt, "e", "sub"), "g1")
		wantAbsent(t, filepath.Join(mnt, "d"))
	}
	check()
	u.Unmount(t)
	mnt = u.Mount(t)
	check()
	if got, _ := os.ReadFile(filepath.Join(mnt, "e", "both")); !bytes.Equal(got, []byte("layer 0")) {
		t.Errorf("e/both reads %q", got)
	}
}
