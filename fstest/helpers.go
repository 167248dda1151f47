package fstest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// writeFile writes content to path with mode, failing the test on error.
func writeFile(t *testing.T, path string, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatalf("WriteFile %s: %v", path, err)
	}
}

// mkdirAll creates path and its parents, failing the test on error.
func mkdirAll(t *testing.T, path string) {
	t.Helper()
	if err := os.MkdirAll(path, 0755); err != nil {
		t.Fatalf("MkdirAll %s: %v", path, err)
	}
}

// wantContent checks that path reads as want, and that read, stat and fstat agree on the size.
func wantContent(t *testing.T, path, want string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("Open %s: %v", path, err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(f); err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if got := buf.String(); got != want {
		t.Fatalf("%s reads %q, want %q", path, trunc(got), trunc(want))
	}
	var st, fst unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("Stat %s: %v", path, err)
	}
	if err := unix.Fstat(int(f.Fd()), &fst); err != nil {
		t.Fatalf("Fstat %s: %v", path, err)
	}
	if st.Size != int64(len(want)) || fst.Size != int64(len(want)) {
		t.Fatalf("%s: stat size %d, fstat size %d, read %d bytes", path, st.Size, fst.Size, len(want))
	}
}

func trunc(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}

// wantErrno checks that err is the errno want.
func wantErrno(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: got %v, want %v", what, err, want)
	}
}

// wantAbsent checks that path does not exist: ENOENT, or ENOTDIR when a parent is not a directory.
func wantAbsent(t *testing.T, path string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ENOTDIR) {
		t.Fatalf("Lstat %s: got %v, want ENOENT", path, err)
	}
}

// lstat stats path, failing the test on error.
// bindSocket binds the Unix socket fd to path, which may be longer than a socket address allows (108 bytes): it is
// reached through a /proc/self/fd path of its directory.
func bindSocket(fd int, path string) error {
	dir, err := unix.Open(filepath.Dir(path), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(dir)
	return unix.Bind(fd, &unix.SockaddrUnix{Name: fmt.Sprintf("/proc/self/fd/%d/%s", dir, filepath.Base(path))})
}

func lstat(t *testing.T, path string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatalf("Lstat %s: %v", path, err)
	}
	return st
}

// dirent is one entry of a raw directory listing.
type dirent struct {
	name string
	ino  uint64
	typ  uint8
	off  int64 // d_off: the offset to seek to for the entry after this one
}

// readDirRaw lists a directory with getdents64, keeping d_ino, d_type and d_off, "." and ".." included.
func readDirRaw(t *testing.T, dir string) []dirent {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("Open %s: %v", dir, err)
	}
	defer unix.Close(fd)
	return readDirents(t, fd, -1)
}

// readDirents reads up to max entries (all if max < 0) from an open directory.
func readDirents(t *testing.T, fd int, max int) []dirent {
	t.Helper()
	var out []dirent
	buf := make([]byte, 4096)
	for max < 0 || len(out) < max {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			t.Fatalf("Getdents: %v", err)
		}
		if n == 0 {
			break
		}
		for off := 0; off < n; {
			ino := le64(buf[off:])
			doff := int64(le64(buf[off+8:]))
			reclen := int(buf[off+16]) | int(buf[off+17])<<8
			typ := buf[off+18]
			name := buf[off+19 : off+reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			out = append(out, dirent{name: string(name), ino: ino, typ: typ, off: doff})
			off += reclen
			if max >= 0 && len(out) == max {
				// Position the directory right after the last returned entry.
				if _, err := unix.Seek(fd, doff, 0); err != nil {
					t.Fatalf("Seek: %v", err)
				}
				return out
			}
		}
	}
	return out
}

func le64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// names returns the sorted names of a listing without "." and "..".
func names(ents []dirent) []string {
	var out []string
	for _, e := range ents {
		if e.name != "." && e.name != ".." {
			out = append(out, e.name)
		}
	}
	sort.Strings(out)
	return out
}

// listNames returns the sorted names in dir.
func listNames(t *testing.T, dir string) []string {
	t.Helper()
	return names(readDirRaw(t, dir))
}

// wantNames checks that dir holds exactly the names want.
func wantNames(t *testing.T, dir string, want ...string) {
	t.Helper()
	got := listNames(t, dir)
	sort.Strings(want)
	if len(want) == 0 {
		want = nil
	}
	if !equalStrings(got, want) {
		t.Fatalf("%s lists %q, want %q", dir, got, want)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// checkDinoMatchesStat checks that every entry's d_ino in dir equals the st_ino stat reports for it.
func checkDinoMatchesStat(t *testing.T, dir string) {
	t.Helper()
	for _, e := range readDirRaw(t, dir) {
		if e.name == ".." {
			continue
		}
		st := lstat(t, filepath.Join(dir, e.name))
		if st.Ino != e.ino {
			t.Errorf("%s/%s: d_ino %d, st_ino %d", dir, e.name, e.ino, st.Ino)
		}
		if e.name != "." && e.typ != unix.DT_UNKNOWN && uint32(e.typ)<<12 != st.Mode&unix.S_IFMT {
			t.Errorf("%s/%s: d_type %d, mode %o", dir, e.name, e.typ, st.Mode)
		}
	}
}

// runCommand runs a program and returns its combined output.
func runCommand(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}
