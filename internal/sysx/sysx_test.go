package sysx

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The daemon runs as root on directories users can change: each call below must act on the object named in the
// directory and nothing else. A user can put a symlink (to a root-only file), a FIFO (to block the daemon) or a
// device node where a file was; these tests put them there.

func TestCheckName(t *testing.T) {
	for name, ok := range map[string]bool{
		"f": true, "a b": true, ".hidden": true, "...": true, "\xff": true,
		"": false, ".": false, "..": false, "a/b": false, "/": false, "a\x00b": false, "../x": false,
	} {
		if err := CheckName(name); (err == nil) != ok {
			t.Errorf("CheckName(%q) = %v", name, err)
		} else if err != nil && !errors.Is(err, syscall.EINVAL) {
			t.Errorf("CheckName(%q) = %v, want EINVAL", name, err)
		}
	}
}

// hostileDir makes a directory with a regular file "file" (content "data", mode 0644), "link" (a symlink to the
// file outside it, "target", also "data"), "dirlink" (a symlink to a directory outside it), "fifo", and, as root,
// "null" (a character device), and returns an O_PATH descriptor of it and the outside directory.
func hostileDir(t *testing.T) (int, string) {
	t.Helper()
	dir, outside := t.TempDir(), t.TempDir()
	for p, content := range map[string]string{filepath.Join(dir, "file"): "data",
		filepath.Join(outside, "target"): "data"} {
		if err := os.WriteFile(p, []byte(content), 0644); err != nil {
			t.Fatal(err)
		}
	}
	must(t, os.Symlink(filepath.Join(outside, "target"), filepath.Join(dir, "link")))
	must(t, os.Symlink(outside, filepath.Join(dir, "dirlink")))
	must(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0666))
	if os.Geteuid() == 0 {
		must(t, unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0666, int(unix.Mkdev(1, 3))))
	}
	return openPath(t, dir), outside
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// noBlock runs fn and fails the test if it has not returned within two seconds (an open of a FIFO without a
// writer blocks for ever).
func noBlock(t *testing.T, what string, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(2 * time.Second):
		t.Fatalf("%s blocked", what)
		return nil
	}
}

func TestOpenatNeverFollows(t *testing.T) {
	dirfd, _ := hostileDir(t)
	for name, want := range map[string]syscall.Errno{"link": syscall.ELOOP, "dirlink": syscall.ELOOP,
		"../x": syscall.EINVAL, "a/b": syscall.EINVAL, "..": syscall.EINVAL} {
		fd, err := Openat(dirfd, name, unix.O_RDONLY, 0)
		if err == nil {
			unix.Close(fd)
		}
		if !errors.Is(err, want) {
			t.Errorf("Openat(%q) = %v, want %v", name, err, want)
		}
	}
	fd, err := Openat(dirfd, "file", unix.O_RDONLY|unix.O_NOATIME, 0)
	if err != nil {
		t.Fatalf("Openat of a regular file: %v", err)
	}
	unix.Close(fd)
}

func TestOpenDirRefusesSymlinksAndMountPoints(t *testing.T) {
	for _, path := range []struct {
		name  string
		state int32
	}{{"openat2", 1}, {"openat", 2}} {
		t.Run(path.name, func(t *testing.T) {
			defer openat2State.Store(openat2State.Load())
			openat2State.Store(path.state)
			dirfd, _ := hostileDir(t)
			for _, name := range []string{"dirlink", "link", "file", "fifo"} {
				fd, err := OpenDir(dirfd, name)
				if err == nil {
					unix.Close(fd)
					t.Errorf("OpenDir(%q) opened it", name)
				} else if !errors.Is(err, syscall.ENOTDIR) && !errors.Is(err, syscall.ELOOP) {
					t.Errorf("OpenDir(%q) = %v, want ENOTDIR or ELOOP", name, err)
				}
			}
			if os.Geteuid() != 0 {
				return
			}
			sub := filepath.Join(t.TempDir(), "mnt")
			must(t, os.Mkdir(sub, 0755))
			must(t, unix.Mount("tmpfs", sub, "tmpfs", 0, "size=1m")) // not testutil's: it imports sysx
			t.Cleanup(func() { unix.Unmount(sub, unix.MNT_DETACH) })
			parent := openPath(t, filepath.Dir(sub))
			if fd, err := OpenDir(parent, "mnt"); !errors.Is(err, syscall.EXDEV) {
				if err == nil {
					unix.Close(fd)
				}
				t.Errorf("OpenDir of a mount point = %v, want EXDEV", err)
			}
		})
	}
}

func TestOpenObjectOnlyFilesAndDirectories(t *testing.T) {
	dirfd, _ := hostileDir(t)
	names := []string{"link", "dirlink", "fifo"}
	if os.Geteuid() == 0 {
		names = append(names, "null")
	}
	for _, name := range names {
		for _, flags := range []int{unix.O_RDONLY, unix.O_WRONLY, unix.O_RDWR} {
			err := noBlock(t, "OpenObject("+name+")", func() error {
				fd, err := OpenObject(dirfd, name, flags)
				if err == nil {
					unix.Close(fd)
				}
				return err
			})
			if !errors.Is(err, syscall.ESTALE) {
				t.Errorf("OpenObject(%q, %#o) = %v, want ESTALE (not a regular file or directory)", name, flags, err)
			}
		}
	}
	fd, err := OpenObject(dirfd, "file", unix.O_RDWR|unix.O_CREAT|unix.O_EXCL)
	if err != nil {
		t.Fatalf("OpenObject of a regular file, O_CREAT|O_EXCL dropped: %v", err)
	}
	unix.Close(fd)
}

func TestChangesStayOnTheName(t *testing.T) {
	dirfd, outside := hostileDir(t)
	target := filepath.Join(outside, "target")
	var before unix.Stat_t
	must(t, unix.Stat(target, &before))

	if err := Chmodat(dirfd, "link", 0600); !errors.Is(err, syscall.EOPNOTSUPP) {
		t.Errorf("Chmodat of a symlink = %v, want EOPNOTSUPP", err)
	}
	if os.Geteuid() == 0 {
		must(t, Chownat(dirfd, "link", 1234, 1234)) // changes the symlink itself
	}
	ts := [2]unix.Timespec{{Sec: 1000}, {Sec: 2000}}
	must(t, Utimensat(dirfd, "link", &ts))
	for _, name := range []string{"link", "fifo"} {
		err := noBlock(t, "Truncateat("+name+")", func() error { return Truncateat(dirfd, name, 0) })
		if err == nil {
			t.Errorf("Truncateat(%q) succeeded", name)
		}
	}
	if err := Setxattrat(dirfd, "link", "user.x", []byte("v"), 0); err == nil {
		t.Errorf("Setxattrat of a user xattr on a symlink succeeded")
	}

	var after unix.Stat_t
	must(t, unix.Stat(target, &after))
	if after.Mode != before.Mode || after.Uid != before.Uid || after.Size != before.Size ||
		after.Mtim != before.Mtim {
		t.Errorf("the symlink's target changed: mode %o->%o, uid %d->%d, size %d->%d, mtime %v->%v",
			before.Mode, after.Mode, before.Uid, after.Uid, before.Size, after.Size, before.Mtim, after.Mtim)
	}
	if _, err := unix.Getxattr(target, "user.x", nil); err == nil {
		t.Errorf("the symlink's target got the xattr")
	}

	must(t, Truncateat(dirfd, "file", 2))
	if got, err := os.ReadFile(filepath.Join(FdPath(dirfd), "file")); err != nil || string(got) != "da" {
		t.Errorf("after Truncateat(file, 2) the file holds %q, %v", got, err)
	}
}

func TestReadlinkatAndGetdents(t *testing.T) {
	dirfd, outside := hostileDir(t)
	got, err := Readlinkat(dirfd, "link")
	if err != nil || string(got) != filepath.Join(outside, "target") {
		t.Errorf("Readlinkat = %q, %v", got, err)
	}
	long := outside
	for len(long) < 1000 {
		long += "/component"
	}
	dir := FdPath(dirfd)
	must(t, os.Symlink(long, filepath.Join(dir, "long")))
	if got, err := Readlinkat(dirfd, "long"); err != nil || string(got) != long {
		t.Errorf("Readlinkat of a %d-byte target = %d bytes, %v", len(long), len(got), err)
	}
	if _, err := Readlinkat(dirfd, "file"); !errors.Is(err, syscall.EINVAL) {
		t.Errorf("Readlinkat of a regular file = %v, want EINVAL", err)
	}

	fd, err := Openat(dirfd, "", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	types := map[string]uint8{}
	must(t, Getdents(fd, func(name string, ino uint64, typ uint8) { types[name] = typ }))
	want := map[string]uint8{".": unix.DT_DIR, "..": unix.DT_DIR, "file": unix.DT_REG, "link": unix.DT_LNK,
		"dirlink": unix.DT_LNK, "fifo": unix.DT_FIFO, "long": unix.DT_LNK}
	if os.Geteuid() == 0 {
		want["null"] = unix.DT_CHR
	}
	for name, typ := range want {
		if got, ok := types[name]; !ok || got != typ {
			t.Errorf("Getdents: %q has type %d (listed %v), want %d", name, got, ok, typ)
		}
	}
	if len(types) != len(want) {
		t.Errorf("Getdents listed %v", types)
	}
}
