package unionfs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// ioctls. The daemon implements no FUSE ioctl (see file.go): a forwarded ioctl would run with the daemon's
// privileges on a layer file, and the kernel would let any user who can open a file send one. So every ioctl the
// kernel hands to the daemon (FS_IOC_GETFLAGS/SETFLAGS, i.e. lsattr/chattr, FS_IOC_FSGETXATTR/FSSETXATTR,
// FS_IOC_GETVERSION/SETVERSION, and anything a driver or file system defines) fails with ENOTTY, for root too,
// on lower and upper files, on cached and passthrough opens. Those the VFS answers itself (FIGETBSZ, FIONREAD,
// FIOCLEX) work as anywhere. Kernel overlayfs instead copies a lower file up and sets the flags on the copy
// (chattr +i needs CAP_LINUX_IMMUTABLE there): a documented deviation; no flag ever reaches a lower file either
// way.

// ioctl numbers and flags of <linux/fs.h> that x/sys/unix lacks (amd64 and arm64 values).
const (
	fsImmutableFl    = 0x10
	fsAppendFl       = 0x20
	fsNodumpFl       = 0x40
	fsIocFsgetxattr  = 0x801c581f
	fsIocFssetxattr  = 0x401c5820
	fsIocGetversion  = 0x80087601
	fsIocSetversion  = 0x40087602
	figetbsz         = 2
	fionread         = 0x541b
	fsXflagImmutable = 0x8
)

// flagsOf reads the inode flags of the file at p directly (not through any union).
func flagsOf(t *testing.T, p string) uint32 {
	t.Helper()
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOATIME|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	v, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS)
	if err != nil {
		t.Fatalf("FS_IOC_GETFLAGS %s: %v", p, err)
	}
	return v
}

// clearFlags removes the immutable, append-only and nodump flags from p, so that the test's directories can go.
func clearFlags(p string) {
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return
	}
	defer unix.Close(fd)
	if v, err := unix.IoctlGetUint32(fd, unix.FS_IOC_GETFLAGS); err == nil {
		unix.IoctlSetPointerInt(fd, unix.FS_IOC_SETFLAGS, int(v&^(fsImmutableFl|fsAppendFl|fsNodumpFl)))
	}
}

// ioctlPtr is ioctl(fd, req, arg) with a pointer argument.
func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if e != 0 {
		return e
	}
	return nil
}

// fsxattr is struct fsxattr of <linux/fs.h>.
type fsxattr struct {
	xflags     uint32
	extsize    uint32
	nextents   uint32
	projid     uint32
	cowextsize uint32
	pad        [8]byte
}

// ioctlAttempt is one ioctl on an open file; forwarded says whether the kernel sends it to the daemon.
type ioctlAttempt struct {
	name      string
	forwarded bool
	fn        func(fd, other int) error
}

var ioctlAttempts = []ioctlAttempt{
	{"FS_IOC_GETFLAGS", true, func(fd, _ int) error {
		var v uint32
		return ioctlPtr(fd, unix.FS_IOC_GETFLAGS, unsafe.Pointer(&v))
	}},
	{"FS_IOC_SETFLAGS +i", true, func(fd, _ int) error {
		v := uint32(fsImmutableFl)
		return ioctlPtr(fd, unix.FS_IOC_SETFLAGS, unsafe.Pointer(&v))
	}},
	{"FS_IOC_SETFLAGS +a", true, func(fd, _ int) error {
		v := uint32(fsAppendFl)
		return ioctlPtr(fd, unix.FS_IOC_SETFLAGS, unsafe.Pointer(&v))
	}},
	{"FS_IOC_SETFLAGS +d", true, func(fd, _ int) error {
		v := uint32(fsNodumpFl)
		return ioctlPtr(fd, unix.FS_IOC_SETFLAGS, unsafe.Pointer(&v))
	}},
	{"FS_IOC_FSGETXATTR", true, func(fd, _ int) error {
		var x fsxattr
		return ioctlPtr(fd, fsIocFsgetxattr, unsafe.Pointer(&x))
	}},
	{"FS_IOC_FSSETXATTR immutable", true, func(fd, _ int) error {
		x := fsxattr{xflags: fsXflagImmutable}
		return ioctlPtr(fd, fsIocFssetxattr, unsafe.Pointer(&x))
	}},
	{"FS_IOC_GETVERSION", true, func(fd, _ int) error {
		var v uint32
		return ioctlPtr(fd, fsIocGetversion, unsafe.Pointer(&v))
	}},
	{"FS_IOC_SETVERSION", true, func(fd, _ int) error {
		v := uint32(42)
		return ioctlPtr(fd, fsIocSetversion, unsafe.Pointer(&v))
	}},
	{"TCGETS", true, func(fd, _ int) error {
		_, err := unix.IoctlGetTermios(fd, unix.TCGETS)
		return err
	}},
	{"driver-private ioctl", true, func(fd, _ int) error {
		var buf [64]byte
		return ioctlPtr(fd, 0xc0405a01, unsafe.Pointer(&buf[0]))
	}},
	{"FICLONE", false, func(fd, other int) error { return unix.IoctlFileClone(fd, other) }},
	{"FIGETBSZ", false, func(fd, _ int) error {
		var v int32
		return ioctlPtr(fd, figetbsz, unsafe.Pointer(&v))
	}},
	{"FIONREAD", false, func(fd, _ int) error {
		_, err := unix.IoctlGetInt(fd, fionread)
		return err
	}},
}

func TestSecurityIoctls(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	u.cfg.Passthrough = true
	reachable(t, u.dir)
	l := u.Lower(0)
	files := map[string]int{"rootfile": 0, "userfile": attacker, "bigfile": attacker, "other": other}
	for name, uid := range files {
		size := 100
		if name == "bigfile" {
			size = 2 << 20 // read through passthrough
		}
		p := filepath.Join(l, name)
		must(t, os.WriteFile(p, make([]byte, size), 0644))
		must(t, os.Chown(p, uid, uid))
	}
	must(t, os.Chmod(l, 0777))
	lowerFlags := map[string]uint32{}
	for name := range files {
		lowerFlags[name] = flagsOf(t, filepath.Join(l, name))
	}
	lowerBefore := mustSnapshot(t, l)
	t.Cleanup(func() {
		for _, d := range []string{l, u.Upper()} {
			names, _ := os.ReadDir(d)
			for _, e := range names {
				clearFlags(filepath.Join(d, e.Name()))
			}
		}
	})
	mnt := u.Mount(t)
	must(t, os.Chmod(mnt, 0777))
	// Files made through the union, by root and by the user.
	must(t, os.WriteFile(filepath.Join(mnt, "new-root"), []byte("new"), 0644))
	asUserThread(t, attacker, attacker, func() {
		if err := os.WriteFile(filepath.Join(mnt, "new-user"), []byte("new"), 0644); err != nil {
			t.Error(err)
		}
	})
	cloneSrc := filepath.Join(mnt, "new-root")
	tried := 0
	for _, who := range []int{0, attacker} {
		for _, name := range []string{"rootfile", "userfile", "bigfile", "other", "new-root", "new-user"} {
			for _, mode := range []int{unix.O_RDONLY, unix.O_RDWR} {
				run := func() {
					fd, err := unix.Open(filepath.Join(mnt, name), mode|unix.O_CLOEXEC, 0)
					if err != nil {
						if err != syscall.EACCES {
							t.Errorf("as %d: open %s: %v", who, name, err)
						}
						return
					}
					defer unix.Close(fd)
					src, err := unix.Open(cloneSrc, unix.O_RDONLY|unix.O_CLOEXEC, 0)
					if err != nil {
						t.Errorf("open %s: %v", cloneSrc, err)
						return
					}
					defer unix.Close(src)
					for _, at := range ioctlAttempts {
						tried++
						err := at.fn(fd, src)
						what := fmt.Sprintf("as %d: %s on %s (open %#x): %v", who, at.name, name, mode, err)
						switch {
						case at.forwarded && err == syscall.EPERM && who != 0 && strings.Contains(at.name, "SET"):
							// The kernel refuses flag changes to non-owners before it asks the daemon.
						case at.forwarded && err != syscall.ENOTTY:
							t.Errorf("%s, want ENOTTY (the daemon forwards no ioctl)", what)
						case at.name == "FICLONE" && err == nil:
							t.Errorf("%s: a clone through the union", what)
						case !at.forwarded && at.name != "FICLONE" && err != nil:
							t.Errorf("%s, want success (the VFS answers it)", what)
						}
					}
				}
				if who == 0 {
					run()
				} else {
					asUserThread(t, who, who, run)
				}
			}
		}
	}
	t.Logf("%d ioctls tried", tried)
	// No flag reached any layer file.
	for name, want := range lowerFlags {
		if got := flagsOf(t, filepath.Join(l, name)); got != want {
			t.Errorf("lower %s: flags %#x, were %#x", name, got, want)
		}
	}
	names, _ := os.ReadDir(u.Upper())
	for _, e := range names {
		if !e.Type().IsRegular() {
			continue
		}
		if f := flagsOf(t, filepath.Join(u.Upper(), e.Name())); f&(fsImmutableFl|fsAppendFl|fsNodumpFl) != 0 {
			t.Errorf("upper %s: flags %#x", e.Name(), f)
		}
	}
	u.Unmount(t)
	checkUnchanged(t, "the lower layer", l, lowerBefore)
}

// TestSecurityIoctlOverlayfsReference records what kernel overlayfs does with chattr on a lower file, the
// behaviour the union deliberately does not copy: it copies the file up and sets the flag on the copy; the lower
// file keeps its flags.
func TestSecurityIoctlOverlayfsReference(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	lower, upper, work, mnt := filepath.Join(dir, "l"), filepath.Join(dir, "u"), filepath.Join(dir, "w"), filepath.Join(dir, "m")
	for _, d := range []string{lower, upper, work, mnt} {
		must(t, os.Mkdir(d, 0755))
	}
	must(t, os.WriteFile(filepath.Join(lower, "f"), []byte("f"), 0644))
	t.Cleanup(func() { clearFlags(filepath.Join(upper, "f")) })
	testutil.MountOverlay(t, []string{lower}, upper, work, mnt)
	fd, err := unix.Open(filepath.Join(mnt, "f"), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, err)
	v := uint32(fsNodumpFl)
	err = ioctlPtr(fd, unix.FS_IOC_SETFLAGS, unsafe.Pointer(&v))
	unix.Close(fd)
	if err != nil {
		testutil.Unavailable(t, fmt.Sprintf("overlayfs here refuses FS_IOC_SETFLAGS: %v", err))
	}
	if f := flagsOf(t, filepath.Join(lower, "f")); f&fsNodumpFl != 0 {
		t.Errorf("overlayfs set the flag on the lower file")
	}
	if f := flagsOf(t, filepath.Join(upper, "f")); f&fsNodumpFl == 0 {
		t.Errorf("overlayfs did not copy the file up with the flag: %#x", f)
	}
}
