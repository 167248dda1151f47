package sysx

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The calls that take an empty name act on the object dirfd itself: a directory, or any object reached by an
// O_PATH descriptor (an unlinked file, an O_TMPFILE file), which is how the union reaches files without a name.

func openPath(t *testing.T, p string) int {
	t.Helper()
	fd, err := unix.Open(p, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func TestEmptyNameActsOnAnUnlinkedFile(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, []byte("0123456789"), 0644); err != nil {
		t.Fatal(err)
	}
	fd := openPath(t, p)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if err := Truncateat(fd, "", 3); err != nil {
		t.Errorf("Truncateat(fd, \"\"): %v", err)
	}
	if err := Chmodat(fd, "", 0600); err != nil {
		t.Errorf("Chmodat(fd, \"\"): %v", err)
	}
	ts := [2]unix.Timespec{{Sec: 1e9}, {Sec: 1e9}}
	if err := Utimensat(fd, "", &ts); err != nil {
		t.Errorf("Utimensat(fd, \"\"): %v", err)
	}
	var st unix.Stat_t
	if err := Fstat(fd, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 3 || st.Mode&07777 != 0600 || st.Mtim.Sec != 1e9 || st.Nlink != 0 {
		t.Errorf("after the calls: size %d mode %o mtime %d nlink %d", st.Size, st.Mode&07777, st.Mtim.Sec, st.Nlink)
	}
	if os.Geteuid() == 0 {
		if err := Chownat(fd, "", 12, 34); err != nil {
			t.Errorf("Chownat(fd, \"\"): %v", err)
		}
		if err := Fstat(fd, &st); err != nil || st.Uid != 12 || st.Gid != 34 {
			t.Errorf("owner after Chownat: %d:%d (%v)", st.Uid, st.Gid, err)
		}
	}
}

// TestReadlinkatEmptyName reads a symlink through an O_PATH descriptor, after the name it was opened by is gone
// and another hard link of it stays.
func TestReadlinkatEmptyName(t *testing.T) {
	dir := t.TempDir()
	p, other := filepath.Join(dir, "s"), filepath.Join(dir, "h")
	if err := os.Symlink("the target", p); err != nil {
		t.Fatal(err)
	}
	if err := unix.Linkat(unix.AT_FDCWD, p, unix.AT_FDCWD, other, 0); err != nil {
		t.Fatal(err)
	}
	fd := openPath(t, p)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if got, err := Readlinkat(fd, ""); err != nil || string(got) != "the target" {
		t.Errorf("Readlinkat(fd, \"\") = %q, %v; want the target", got, err)
	}
	f := filepath.Join(dir, "f")
	if err := os.WriteFile(f, nil, 0644); err != nil {
		t.Fatal(err)
	}
	// Linux answers an empty name that is no symlink with ENOENT (a non-empty one with EINVAL).
	if _, err := Readlinkat(openPath(t, f), ""); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("Readlinkat(fd of a regular file, \"\") = %v, want ENOENT", err)
	}
}

func TestWithFdEmptyName(t *testing.T) {
	dir := t.TempDir()
	file, fifo := filepath.Join(dir, "file"), filepath.Join(dir, "fifo")
	if err := os.WriteFile(file, []byte("x"), 0644); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(fifo, 0644); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path   string
		byFd   bool // fn gets an open descriptor (else pathFn gets a path)
		isType uint32
	}{
		{dir, true, unix.S_IFDIR},
		{file, true, unix.S_IFREG},
		{fifo, false, unix.S_IFIFO}, // never opened: that could block
	} {
		fd := openPath(t, c.path)
		var got uint32
		viaFd := false
		err := WithFd(fd, "", func(rfd int) error {
			viaFd = true
			var st unix.Stat_t
			err := Fstat(rfd, &st)
			got = st.Mode & unix.S_IFMT
			return err
		}, func(p string) error {
			var st unix.Stat_t
			err := unix.Stat(p, &st)
			got = st.Mode & unix.S_IFMT
			return err
		})
		if err != nil || viaFd != c.byFd || got != c.isType {
			t.Errorf("WithFd(%s, \"\"): %v, by descriptor %v, type %o; want by descriptor %v, type %o", c.path, err, viaFd,
				got, c.byFd, c.isType)
		}
	}
}

func TestReopen(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("data"), 0644); err != nil {
		t.Fatal(err)
	}
	fd := openPath(t, p)
	w, err := Reopen(fd, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_NOATIME)
	if err != nil {
		t.Fatalf("Reopen of an O_PATH descriptor for writing: %v", err)
	}
	defer unix.Close(w)
	if _, err := unix.Write(w, []byte("DA")); err != nil {
		t.Fatal(err)
	}
	if fl, err := unix.FcntlInt(uintptr(w), unix.F_GETFD, 0); err != nil || fl&unix.FD_CLOEXEC == 0 {
		t.Errorf("the reopened descriptor is not close-on-exec (%#x, %v)", fl, err)
	}
	b, _ := os.ReadFile(p)
	if string(b) != "DAta" {
		t.Errorf("the file reads %q after writing through the reopened descriptor", b)
	}
}
