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

// Cases holds checks that every POSIX filesystem with xattrs passes. Each gets an empty directory.
var Cases = map[string]Case{
	"FileWriteRead":       FileWriteRead,
	"AppendWrite":         AppendWrite,
	"Truncate":            Truncate,
	"ExclusiveCreate":     ExclusiveCreate,
	"NameTooLong":         NameTooLong,
	"MkdirRmdir":          MkdirRmdir,
	"Unlink":              Unlink,
	"Rename":              Rename,
	"RenameDirectory":     RenameDirectory,
	"RenameNoReplace":     RenameNoReplace,
	"RenameExchange":      RenameExchange,
	"Symlink":             Symlink,
	"HardLink":            HardLink,
	"HardLinkedSymlink":   HardLinkedSymlink,
	"ChmodUtimes":         ChmodUtimes,
	"Chown":               Chown,
	"Xattr":               Xattr,
	"SpecialFiles":        SpecialFiles,
	"ReaddirSeek":         ReaddirSeek,
	"ReaddirInoMatches":   ReaddirInoMatches,
	"LargeDirectory":      LargeDirectory,
	"UnlinkedOpenFile":    UnlinkedOpenFile,
	"TruncateUnlinked":    TruncateUnlinked,
	"ChangeUnlinkedFile":  ChangeUnlinkedFile,
	"ChangeTmpfile":       ChangeTmpfile,
	"SparseSeekHoleData":  SparseSeekHoleData,
	"Fallocate":           Fallocate,
	"FallocateTruncate":   FallocateTruncate,
	"MmapSharedWrite":     MmapSharedWrite,
	"DirectoryMtime":      DirectoryMtime,
	"ExecutableRuns":      ExecutableRuns,
	"OpenDirectoryFsync":  OpenDirectoryFsync,
	"CopyFileRangeWithin": CopyFileRangeWithin,
}

// FileWriteRead writes files of several sizes and reads them back; read, stat and fstat agree on the size.
func FileWriteRead(t *testing.T, dir string) {
	for _, size := range []int{0, 1, 4095, 4096, 4097, 1 << 20, 3<<20 + 17} {
		p := filepath.Join(dir, fmt.Sprintf("f%d", size))
		content := strings.Repeat("0123456789abcdef", size/16+1)[:size]
		writeFile(t, p, content, 0644)
		wantContent(t, p, content)
	}
}

// AppendWrite checks that O_APPEND writes land at the end, also after another descriptor extended the file.
func AppendWrite(t *testing.T, dir string) {
	p := filepath.Join(dir, "log")
	writeFile(t, p, "one\n", 0644)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	other, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.WriteAt([]byte("two\n"), 4); err != nil {
		t.Fatal(err)
	}
	other.Close()
	if _, err := f.Write([]byte("three\n")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	wantContent(t, p, "one\ntwo\nthree\n")
}

// Truncate shrinks and grows files by path and by descriptor; growth reads as zeros.
func Truncate(t *testing.T, dir string) {
	p := filepath.Join(dir, "t")
	writeFile(t, p, "hello world", 0644)
	if err := os.Truncate(p, 5); err != nil {
		t.Fatal(err)
	}
	wantContent(t, p, "hello")
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(8); err != nil {
		t.Fatal(err)
	}
	f.Close()
	wantContent(t, p, "hello\x00\x00\x00")
	f, err = os.OpenFile(p, os.O_RDWR|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	wantContent(t, p, "")
}

// ExclusiveCreate checks O_CREAT|O_EXCL on an existing name: EEXIST, content untouched.
func ExclusiveCreate(t *testing.T, dir string) {
	p := filepath.Join(dir, "x")
	writeFile(t, p, "keep", 0644)
	_, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0644)
	wantErrno(t, "O_EXCL create of an existing file", err, syscall.EEXIST)
	wantContent(t, p, "keep")
}

// NameTooLong checks that a 255-byte name works and a 256-byte name fails with ENAMETOOLONG.
func NameTooLong(t *testing.T, dir string) {
	writeFile(t, filepath.Join(dir, strings.Repeat("a", 255)), "ok", 0644)
	err := os.WriteFile(filepath.Join(dir, strings.Repeat("b", 256)), nil, 0644)
	wantErrno(t, "create with a 256-byte name", err, syscall.ENAMETOOLONG)
}

// MkdirRmdir creates and removes directories; a non-empty one cannot be removed.
func MkdirRmdir(t *testing.T, dir string) {
	d := filepath.Join(dir, "d")
	if err := os.Mkdir(d, 0750); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, d); st.Mode != unix.S_IFDIR|0750 {
		t.Fatalf("mode %o, want %o", st.Mode, unix.S_IFDIR|0750)
	}
	wantErrno(t, "mkdir of an existing directory", os.Mkdir(d, 0755), syscall.EEXIST)
	writeFile(t, filepath.Join(d, "f"), "", 0644)
	wantErrno(t, "rmdir of a non-empty directory", unix.Rmdir(d), syscall.ENOTEMPTY)
	if err := os.Remove(filepath.Join(d, "f")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Rmdir(d); err != nil {
		t.Fatal(err)
	}
	wantAbsent(t, d)
	wantNames(t, dir)
}

// Unlink removes a file; a second unlink fails with ENOENT; unlink of a directory fails with EISDIR.
func Unlink(t *testing.T, dir string) {
	p := filepath.Join(dir, "f")
	writeFile(t, p, "x", 0644)
	if err := unix.Unlink(p); err != nil {
		t.Fatal(err)
	}
	wantAbsent(t, p)
	wantErrno(t, "second unlink", unix.Unlink(p), syscall.ENOENT)
	mkdirAll(t, filepath.Join(dir, "d"))
	wantErrno(t, "unlink of a directory", unix.Unlink(filepath.Join(dir, "d")), syscall.EISDIR)
}

// Rename moves files, replacing an existing target, and keeps the inode number.
func Rename(t *testing.T, dir string) {
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	writeFile(t, a, "content of a", 0644)
	writeFile(t, b, "content of b", 0644)
	ino := lstat(t, a).Ino
	if err := os.Rename(a, b); err != nil {
		t.Fatal(err)
	}
	wantAbsent(t, a)
	wantContent(t, b, "content of a")
	if got := lstat(t, b).Ino; got != ino {
		t.Errorf("inode changed by rename: %d, was %d", got, ino)
	}
	mkdirAll(t, filepath.Join(dir, "sub"))
	if err := os.Rename(b, filepath.Join(dir, "sub", "c")); err != nil {
		t.Fatal(err)
	}
	wantContent(t, filepath.Join(dir, "sub", "c"), "content of a")
	wantNames(t, dir, "sub")
}

// RenameDirectory moves a directory with content; a directory cannot replace a non-empty one or move into itself.
func RenameDirectory(t *testing.T, dir string) {
	mkdirAll(t, filepath.Join(dir, "d1", "inner"))
	writeFile(t, filepath.Join(dir, "d1", "inner", "f"), "deep", 0644)
	if err := os.Rename(filepath.Join(dir, "d1"), filepath.Join(dir, "d2")); err != nil {
		t.Fatal(err)
	}
	wantContent(t, filepath.Join(dir, "d2", "inner", "f"), "deep")
	mkdirAll(t, filepath.Join(dir, "full", "x"))
	wantErrno(t, "rename over a non-empty directory",
		unix.Rename(filepath.Join(dir, "d2"), filepath.Join(dir, "full")), syscall.ENOTEMPTY)
	wantErrno(t, "rename into itself",
		unix.Rename(filepath.Join(dir, "d2"), filepath.Join(dir, "d2", "inner", "self")), syscall.EINVAL)
	mkdirAll(t, filepath.Join(dir, "empty"))
	if err := unix.Rename(filepath.Join(dir, "d2"), filepath.Join(dir, "empty")); err != nil {
		t.Fatalf("rename over an empty directory: %v", err)
	}
	wantContent(t, filepath.Join(dir, "empty", "inner", "f"), "deep")
}

// RenameNoReplace checks RENAME_NOREPLACE: EEXIST on an existing target, success otherwise.
func RenameNoReplace(t *testing.T, dir string) {
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	writeFile(t, a, "a", 0644)
	writeFile(t, b, "b", 0644)
	wantErrno(t, "RENAME_NOREPLACE onto an existing name",
		unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_NOREPLACE), syscall.EEXIST)
	if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, c, unix.RENAME_NOREPLACE); err != nil {
		t.Fatal(err)
	}
	wantContent(t, b, "b")
	wantContent(t, c, "a")
}

// RenameExchange checks RENAME_EXCHANGE between a file and a directory.
func RenameExchange(t *testing.T, dir string) {
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	writeFile(t, a, "file", 0644)
	mkdirAll(t, b)
	writeFile(t, filepath.Join(b, "inside"), "in dir", 0644)
	if err := unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, b, unix.RENAME_EXCHANGE); err != nil {
		t.Fatal(err)
	}
	wantContent(t, b, "file")
	wantContent(t, filepath.Join(a, "inside"), "in dir")
	wantErrno(t, "RENAME_EXCHANGE with a missing name",
		unix.Renameat2(unix.AT_FDCWD, a, unix.AT_FDCWD, filepath.Join(dir, "missing"), unix.RENAME_EXCHANGE),
		syscall.ENOENT)
}

// Symlink creates relative, absolute and dangling symlinks and reads them back.
func Symlink(t *testing.T, dir string) {
	writeFile(t, filepath.Join(dir, "target"), "through the link", 0644)
	for name, target := range map[string]string{"rel": "target", "dangling": "no/such/thing", "abs": "/etc/hostname"} {
		p := filepath.Join(dir, name)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		if got, err := os.Readlink(p); err != nil || got != target {
			t.Fatalf("Readlink %s: %q, %v; want %q", p, got, err, target)
		}
		if st := lstat(t, p); st.Mode&unix.S_IFMT != unix.S_IFLNK || st.Size != int64(len(target)) {
			t.Fatalf("%s: mode %o size %d", p, st.Mode, st.Size)
		}
	}
	wantContent(t, filepath.Join(dir, "rel"), "through the link")
	_, err := os.Stat(filepath.Join(dir, "dangling"))
	wantErrno(t, "stat through a dangling link", err, syscall.ENOENT)
}

// HardLink links a file twice: the names share inode and content, the link count follows.
func HardLink(t *testing.T, dir string) {
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	writeFile(t, a, "shared", 0644)
	if err := os.Link(a, b); err != nil {
		t.Fatal(err)
	}
	sa, sb := lstat(t, a), lstat(t, b)
	if sa.Ino != sb.Ino || sa.Nlink != 2 || sb.Nlink != 2 {
		t.Fatalf("after link: ino %d/%d nlink %d/%d", sa.Ino, sb.Ino, sa.Nlink, sb.Nlink)
	}
	if err := os.WriteFile(b, []byte("changed"), 0); err != nil {
		t.Fatal(err)
	}
	wantContent(t, a, "changed")
	if err := os.Remove(a); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, b); st.Nlink != 1 {
		t.Fatalf("after unlink: nlink %d, want 1", st.Nlink)
	}
	wantContent(t, b, "changed")
}

// HardLinkedSymlink links a symlink and a FIFO (link(2) links the symlink itself), removes the first name of
// each, once by unlink and once by a rename over it: the other name still reads, stats and changes as before.
func HardLinkedSymlink(t *testing.T, dir string) {
	for _, how := range []string{"unlink", "rename over"} {
		s, h := filepath.Join(dir, "s"), filepath.Join(dir, "h")
		f, g := filepath.Join(dir, "f"), filepath.Join(dir, "g")
		if err := os.Symlink("the target", s); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mkfifo(f, 0644); err != nil {
			t.Fatal(err)
		}
		for _, l := range [][2]string{{s, h}, {f, g}} {
			if err := unix.Linkat(unix.AT_FDCWD, l[0], unix.AT_FDCWD, l[1], 0); err != nil {
				t.Fatal(err)
			}
			// The kernel knows the first name's node before it goes, as a program that just used it would.
			lstat(t, l[0])
			if how == "unlink" {
				if err := unix.Unlink(l[0]); err != nil {
					t.Fatal(err)
				}
			} else {
				writeFile(t, l[0]+".new", "replacement", 0644)
				if err := os.Rename(l[0]+".new", l[0]); err != nil {
					t.Fatal(err)
				}
			}
		}
		if got, err := os.Readlink(h); err != nil || got != "the target" {
			t.Fatalf("%s: readlink of the other name: %q, %v", how, got, err)
		}
		if st := lstat(t, h); st.Nlink != 1 || st.Mode&unix.S_IFMT != unix.S_IFLNK {
			t.Fatalf("%s: symlink's other name: nlink %d mode %o", how, st.Nlink, st.Mode)
		}
		if err := unix.Chmod(g, 0600); err != nil {
			t.Fatalf("%s: chmod of the FIFO's other name: %v", how, err)
		}
		if st := lstat(t, g); st.Nlink != 1 || st.Mode != unix.S_IFIFO|0600 {
			t.Fatalf("%s: FIFO's other name: nlink %d mode %o", how, st.Nlink, st.Mode)
		}
		if os.Geteuid() == 0 {
			if err := os.Lchown(h, 12, 34); err != nil {
				t.Fatalf("%s: lchown of the symlink's other name: %v", how, err)
			}
			if st := lstat(t, h); st.Uid != 12 || st.Gid != 34 {
				t.Fatalf("%s: owner after lchown: %d:%d", how, st.Uid, st.Gid)
			}
		}
		for _, p := range []string{s, h, f, g} {
			if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
	}
}

// ChmodUtimes changes modes (setuid and sticky included) and nanosecond times, UTIME_OMIT included.
func ChmodUtimes(t *testing.T, dir string) {
	p := filepath.Join(dir, "f")
	writeFile(t, p, "x", 0644)
	for _, mode := range []uint32{0, 0600, 04755, 02750, 01777} {
		if err := unix.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if st := lstat(t, p); st.Mode&07777 != mode {
			t.Fatalf("mode %o after chmod %o", st.Mode&07777, mode)
		}
	}
	ts := []unix.Timespec{{Sec: 1000000000, Nsec: 123456789}, {Sec: 1100000000, Nsec: 987654321}}
	if err := unix.UtimesNano(p, ts); err != nil {
		t.Fatal(err)
	}
	st := lstat(t, p)
	if st.Atim != ts[0] || st.Mtim != ts[1] {
		t.Fatalf("times %v %v, want %v %v", st.Atim, st.Mtim, ts[0], ts[1])
	}
	omit := []unix.Timespec{{Sec: 5, Nsec: 0}, {Nsec: unix.UTIME_OMIT}}
	if err := unix.UtimesNano(p, omit); err != nil {
		t.Fatal(err)
	}
	st = lstat(t, p)
	if st.Atim.Sec != 5 || st.Mtim != ts[1] {
		t.Fatalf("after UTIME_OMIT: atime %v mtime %v", st.Atim, st.Mtim)
	}
	l := filepath.Join(dir, "link")
	if err := os.Symlink("f", l); err != nil {
		t.Fatal(err)
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, l, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		t.Fatalf("lutimes: %v", err)
	}
	if st := lstat(t, l); st.Mtim != ts[1] {
		t.Fatalf("symlink mtime %v, want %v", st.Mtim, ts[1])
	}
}

// Chown changes owners of files, directories and symlinks (root only).
func Chown(t *testing.T, dir string) {
	requireRoot(t)
	p, d, l := filepath.Join(dir, "f"), filepath.Join(dir, "d"), filepath.Join(dir, "l")
	writeFile(t, p, "x", 0644)
	mkdirAll(t, d)
	if err := os.Symlink("f", l); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{p, d, l} {
		if err := os.Lchown(path, 1234, 5678); err != nil {
			t.Fatal(err)
		}
		if st := lstat(t, path); st.Uid != 1234 || st.Gid != 5678 {
			t.Fatalf("%s: owner %d:%d", path, st.Uid, st.Gid)
		}
	}
	if st := lstat(t, p); st.Uid != 1234 {
		t.Fatalf("lchown of the link changed its target too")
	}
}

// Xattr sets, reads, lists and removes user.* attributes on a file and a directory.
func Xattr(t *testing.T, dir string) {
	p := filepath.Join(dir, "f")
	writeFile(t, p, "x", 0644)
	for _, path := range []string{p, dir} {
		if err := unix.Lsetxattr(path, "user.k", []byte("v1"), 0); err != nil {
			t.Fatalf("Lsetxattr %s: %v", path, err)
		}
		wantErrno(t, "XATTR_CREATE of an existing attribute",
			unix.Lsetxattr(path, "user.k", []byte("v2"), unix.XATTR_CREATE), syscall.EEXIST)
		buf := make([]byte, 100)
		n, err := unix.Lgetxattr(path, "user.k", buf)
		if err != nil || string(buf[:n]) != "v1" {
			t.Fatalf("Lgetxattr: %q %v", buf[:n], err)
		}
		n, err = unix.Lgetxattr(path, "user.k", nil)
		if err != nil || n != 2 {
			t.Fatalf("Lgetxattr size query: %d %v", n, err)
		}
		_, err = unix.Lgetxattr(path, "user.k", make([]byte, 1))
		wantErrno(t, "Lgetxattr into a small buffer", err, syscall.ERANGE)
		n, err = unix.Llistxattr(path, buf)
		if err != nil || !bytes.Contains(buf[:n], []byte("user.k\x00")) {
			t.Fatalf("Llistxattr: %q %v", buf[:n], err)
		}
		if err := unix.Lremovexattr(path, "user.k"); err != nil {
			t.Fatal(err)
		}
		_, err = unix.Lgetxattr(path, "user.k", buf)
		wantErrno(t, "Lgetxattr of a removed attribute", err, syscall.ENODATA)
	}
}

// SpecialFiles creates a FIFO, a socket and (as root) devices, and checks their types and device numbers.
func SpecialFiles(t *testing.T, dir string) {
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0640); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, fifo); st.Mode != unix.S_IFIFO|0640 {
		t.Fatalf("fifo mode %o", st.Mode)
	}
	sock := filepath.Join(dir, "sock")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := bindSocket(fd, sock); err != nil {
		t.Fatalf("bind: %v", err)
	}
	if st := lstat(t, sock); st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		t.Fatalf("socket mode %o", st.Mode)
	}
	if os.Geteuid() != 0 {
		return
	}
	dev := filepath.Join(dir, "null")
	if err := unix.Mknod(dev, unix.S_IFCHR|0666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, dev); st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != unix.Mkdev(1, 3) {
		t.Fatalf("char device: mode %o rdev %x", st.Mode, st.Rdev)
	}
	blk := filepath.Join(dir, "blk")
	if err := unix.Mknod(blk, unix.S_IFBLK|0600, int(unix.Mkdev(259, 70000))); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, blk); st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != unix.Mkdev(259, 70000) {
		t.Fatalf("block device: mode %o rdev %x", st.Mode, st.Rdev)
	}
	f, err := os.OpenFile(dev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("open char device: %v", err)
	}
	if _, err := f.Write([]byte("into the void")); err != nil {
		t.Fatalf("write to /dev/null copy: %v", err)
	}
	f.Close()
}

// ReaddirSeek lists a directory in pieces, seeking back to remembered offsets (telldir/seekdir): every name comes
// back at the same position, and the whole listing holds each name once.
func ReaddirSeek(t *testing.T, dir string) {
	for i := 0; i < 200; i++ {
		writeFile(t, filepath.Join(dir, fmt.Sprintf("entry%03d", i)), "", 0644)
	}
	full := readDirRaw(t, dir)
	if got := len(names(full)); got != 200 {
		t.Fatalf("listed %d names, want 200", got)
	}
	seen := map[string]bool{}
	for _, e := range full {
		if seen[e.name] {
			t.Fatalf("%s listed twice", e.name)
		}
		seen[e.name] = true
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	for _, at := range []int{150, 3, 77, 0, 199} {
		var off int64
		if at > 0 {
			off = full[at-1].off
		}
		if _, err := unix.Seek(fd, off, 0); err != nil {
			t.Fatalf("seekdir to entry %d: %v", at, err)
		}
		got := readDirents(t, fd, 1)
		if len(got) != 1 || got[0].name != full[at].name {
			t.Fatalf("after seekdir to entry %d got %v, want %s", at, got, full[at].name)
		}
	}
}

// ReaddirInoMatches checks that readdir's d_ino and d_type agree with stat for every kind of entry.
func ReaddirInoMatches(t *testing.T, dir string) {
	writeFile(t, filepath.Join(dir, "f"), "", 0644)
	mkdirAll(t, filepath.Join(dir, "d"))
	if err := os.Symlink("f", filepath.Join(dir, "l")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(dir, "p"), 0644); err != nil {
		t.Fatal(err)
	}
	checkDinoMatchesStat(t, dir)
}

// LargeDirectory creates 10000 files and lists them all exactly once.
func LargeDirectory(t *testing.T, dir string) {
	const n = 10000
	for i := 0; i < n; i++ {
		fd, err := unix.Open(filepath.Join(dir, fmt.Sprintf("file-with-a-longish-name-%05d", i)),
			unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_CLOEXEC, 0644)
		if err != nil {
			t.Fatal(err)
		}
		unix.Close(fd)
	}
	got := listNames(t, dir)
	if len(got) != n {
		t.Fatalf("listed %d names, want %d", len(got), n)
	}
	for i, name := range got {
		if want := fmt.Sprintf("file-with-a-longish-name-%05d", i); name != want {
			t.Fatalf("entry %d is %s, want %s", i, name, want)
		}
	}
}

// UnlinkedOpenFile keeps using a file through its descriptor after its name is gone.
func UnlinkedOpenFile(t *testing.T, dir string) {
	p := filepath.Join(dir, "f")
	writeFile(t, p, "before", 0644)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("after!"), 0); err != nil {
		t.Fatalf("write to an unlinked file: %v", err)
	}
	buf := make([]byte, 6)
	if _, err := f.ReadAt(buf, 0); err != nil || string(buf) != "after!" {
		t.Fatalf("read of an unlinked file: %q %v", buf, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatalf("fstat of an unlinked file: %v", err)
	}
	if st.Nlink != 0 {
		t.Errorf("nlink of an unlinked file: %d", st.Nlink)
	}
	wantNames(t, dir)
}

// TruncateUnlinked: programs that keep unlinked temporary files truncate them through the descriptor they still
// hold (create, write, unlink, ftruncate); every Linux filesystem does it, and fstat shows the new size.
func TruncateUnlinked(t *testing.T, dir string) {
	for _, size := range []int64{0, 3, 1 << 20} {
		p := filepath.Join(dir, "tmp")
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0600)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write([]byte(strings.Repeat("data", 1000))); err != nil {
			t.Fatal(err)
		}
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Errorf("ftruncate(%d) of an unlinked file: %v", size, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Size != size {
			t.Errorf("fstat after ftruncate(%d) of an unlinked file: size %d, %v", size, st.Size, err)
		}
		if _, err := f.WriteAt([]byte("x"), 10); err != nil {
			t.Errorf("write after ftruncate of an unlinked file: %v", err)
		}
		f.Close()
	}
	wantNames(t, dir)
}

// changeThroughFd changes a file only through its descriptor fd (open read-write), as programs do with files
// that have no name: mode, owner, times, size, an xattr, preallocation. Each change must show in fstat.
func changeThroughFd(t *testing.T, what string, fd int) {
	t.Helper()
	check := func(op string, err error) {
		t.Helper()
		if err != nil {
			t.Errorf("%s of %s: %v", op, what, err)
		}
	}
	check("fchmod", unix.Fchmod(fd, 0640))
	if os.Geteuid() == 0 {
		check("fchown", unix.Fchown(fd, 123, 456))
	}
	check("ftruncate", unix.Ftruncate(fd, 7))
	if err := unix.Fsetxattr(fd, "user.k", []byte("v"), 0); err != nil && !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("fsetxattr of %s: %v", what, err)
	} else if err == nil {
		buf := make([]byte, 8)
		if n, err := unix.Fgetxattr(fd, "user.k", buf); err != nil || string(buf[:n]) != "v" {
			t.Errorf("fgetxattr of %s: %q, %v", what, buf[:n], err)
		}
	}
	check("fallocate", unix.Fallocate(fd, unix.FALLOC_FL_KEEP_SIZE, 0, 8192))
	ts := []unix.Timespec{{Sec: 1000000000}, {Sec: 1000000000}} // last: the changes above move mtime
	check("futimens", unix.UtimesNanoAt(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), ts, 0))
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		t.Fatalf("fstat of %s: %v", what, err)
	}
	if st.Mode&07777 != 0640 || st.Size != 7 || st.Mtim.Sec != 1000000000 {
		t.Errorf("%s after the changes: mode %o size %d mtime %d, want 640, 7, 1000000000", what, st.Mode&07777,
			st.Size, st.Mtim.Sec)
	}
	if os.Geteuid() == 0 && (st.Uid != 123 || st.Gid != 456) {
		t.Errorf("%s after fchown: owner %d:%d", what, st.Uid, st.Gid)
	}
}

// ChangeUnlinkedFile: a file deleted while open (by this process, and through an O_PATH descriptor of another)
// is still a file: every change through the descriptor works and shows in fstat, and fstat of an O_PATH
// descriptor works too.
func ChangeUnlinkedFile(t *testing.T, dir string) {
	p := filepath.Join(dir, "f")
	writeFile(t, p, "some data", 0644)
	fd, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	pathFd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(pathFd)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	changeThroughFd(t, "an unlinked file", fd)

	// The same for a file another is renamed over (an atomic replace, as editors and package managers do).
	writeFile(t, p, "old content", 0644)
	old, err := unix.Open(p, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(old)
	writeFile(t, p+".new", "new content", 0644)
	if err := os.Rename(p+".new", p); err != nil {
		t.Fatal(err)
	}
	changeThroughFd(t, "a file renamed over", old)
	wantContent(t, p, "new content")
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}

	var st unix.Stat_t
	if err := unix.Fstat(pathFd, &st); err != nil || st.Size != 7 || st.Nlink != 0 {
		t.Errorf("fstat of an O_PATH descriptor of the unlinked file: size %d nlink %d, %v", st.Size, st.Nlink, err)
	}
	wantNames(t, dir)
}

// ChangeTmpfile: a file made with O_TMPFILE, which has no name, takes every change through its descriptor,
// and keeps them when it is given a name.
func ChangeTmpfile(t *testing.T, dir string) {
	fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0600)
	if err != nil {
		if errors.Is(err, syscall.EOPNOTSUPP) || errors.Is(err, syscall.EISDIR) {
			t.Skipf("no O_TMPFILE here: %v", err)
		}
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if _, err := unix.Write(fd, []byte("tmpfile data")); err != nil {
		t.Fatal(err)
	}
	changeThroughFd(t, "an O_TMPFILE file", fd)
	p := filepath.Join(dir, "named")
	if err := unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD, p,
		unix.AT_SYMLINK_FOLLOW); err != nil {
		t.Fatalf("linking the O_TMPFILE file: %v", err)
	}
	st := lstat(t, p)
	if st.Mode&07777 != 0640 || st.Size != 7 {
		t.Errorf("the named O_TMPFILE file: mode %o size %d, want 640 and 7", st.Mode&07777, st.Size)
	}
	wantContent(t, p, "tmpfile")
}

// FallocateTruncate: a file grown with fallocate and truncated again through the same descriptor reports the
// new size, by stat and by fstat.
func FallocateTruncate(t *testing.T, dir string) {
	p := filepath.Join(dir, "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const big = 1 << 30
	if err := unix.Fallocate(int(f.Fd()), 0, 0, big); err != nil {
		if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EOPNOTSUPP) {
			t.Skipf("fallocate of 1 GiB: %v", err)
		}
		t.Fatalf("fallocate: %v", err)
	}
	if st := lstat(t, p); st.Size != big {
		t.Fatalf("size %d after fallocate", st.Size)
	}
	for _, size := range []int64{0, 4096} {
		if err := f.Truncate(size); err != nil {
			t.Fatalf("ftruncate(%d) after fallocate: %v", size, err)
		}
		var st unix.Stat_t
		if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Size != size {
			t.Errorf("fstat after ftruncate(%d): size %d, %v", size, st.Size, err)
		}
		if st := lstat(t, p); st.Size != size {
			t.Errorf("stat after ftruncate(%d): size %d", size, st.Size)
		}
	}
}

// SparseSeekHoleData writes a file with a hole and finds data and hole with SEEK_DATA and SEEK_HOLE.
func SparseSeekHoleData(t *testing.T, dir string) {
	p := filepath.Join(dir, "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	const mb = 1 << 20
	if _, err := f.WriteAt([]byte("end"), 4*mb); err != nil {
		t.Fatal(err)
	}
	data, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_DATA)
	if err != nil {
		t.Fatalf("SEEK_DATA: %v", err)
	}
	if data < mb {
		t.Errorf("SEEK_DATA from 0 found data at %d, inside the hole", data)
	}
	hole, err := unix.Seek(int(f.Fd()), 0, unix.SEEK_HOLE)
	if err != nil || hole != 0 {
		t.Errorf("SEEK_HOLE from 0: %d %v, want 0", hole, err)
	}
	var st unix.Stat_t
	unix.Fstat(int(f.Fd()), &st)
	if st.Blocks*512 >= 4*mb {
		t.Errorf("sparse file uses %d bytes", st.Blocks*512)
	}
}

// Fallocate reserves space, keeping or growing the size.
func Fallocate(t *testing.T, dir string) {
	p := filepath.Join(dir, "f")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), 0, 0, 1<<16); err != nil {
		t.Fatalf("fallocate: %v", err)
	}
	if st := lstat(t, p); st.Size != 1<<16 {
		t.Fatalf("size %d after fallocate", st.Size)
	}
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 1<<16, 1<<16); err != nil {
		t.Fatalf("fallocate KEEP_SIZE: %v", err)
	}
	if st := lstat(t, p); st.Size != 1<<16 {
		t.Fatalf("size %d after fallocate KEEP_SIZE", st.Size)
	}
}

// MmapSharedWrite writes through a shared mapping and reads the result with read(2) after msync.
func MmapSharedWrite(t *testing.T, dir string) {
	p := filepath.Join(dir, "m")
	writeFile(t, p, strings.Repeat("-", 8192), 0644)
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	copy(m[4096:], "mapped")
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		t.Fatalf("msync: %v", err)
	}
	unix.Munmap(m)
	f.Close()
	wantContent(t, p, strings.Repeat("-", 4096)+"mapped"+strings.Repeat("-", 4090))
}

// DirectoryMtime checks that creating and removing names updates the directory's mtime.
func DirectoryMtime(t *testing.T, dir string) {
	d := filepath.Join(dir, "d")
	mkdirAll(t, d)
	old := unix.Timespec{Sec: 1000}
	if err := unix.UtimesNano(d, []unix.Timespec{old, old}); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(d, "new"), "", 0644)
	if st := lstat(t, d); st.Mtim.Sec == 1000 {
		t.Fatal("creating a file left the directory mtime unchanged")
	}
	if err := unix.UtimesNano(d, []unix.Timespec{old, old}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(d, "new")); err != nil {
		t.Fatal(err)
	}
	if st := lstat(t, d); st.Mtim.Sec == 1000 {
		t.Fatal("removing a file left the directory mtime unchanged")
	}
}

// ExecutableRuns writes a shell script and executes it.
func ExecutableRuns(t *testing.T, dir string) {
	p := filepath.Join(dir, "script")
	writeFile(t, p, "#!/bin/sh\necho ran from $0\n", 0755)
	out, err := runCommand("/bin/sh", "-c", p)
	if err != nil || !strings.Contains(out, "ran from") {
		t.Fatalf("running %s: %v: %s", p, err, out)
	}
}

// OpenDirectoryFsync fsyncs files and directories.
func OpenDirectoryFsync(t *testing.T, dir string) {
	p := filepath.Join(dir, "f")
	writeFile(t, p, "data", 0644)
	for _, path := range []string{p, dir} {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatalf("fsync %s: %v", path, err)
		}
		f.Close()
	}
}

// CopyFileRangeWithin copies between two files of the filesystem with copy_file_range(2).
func CopyFileRangeWithin(t *testing.T, dir string) {
	src, dst := filepath.Join(dir, "src"), filepath.Join(dir, "dst")
	content := strings.Repeat("copy me ", 10000)
	writeFile(t, src, content, 0644)
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	total := 0
	for total < len(content) {
		n, err := unix.CopyFileRange(int(in.Fd()), nil, int(out.Fd()), nil, len(content)-total, 0)
		if err != nil {
			t.Fatalf("copy_file_range: %v", err)
		}
		if n == 0 {
			break
		}
		total += n
	}
	out.Close()
	wantContent(t, dst, content)
}
