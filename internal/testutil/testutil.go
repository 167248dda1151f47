// Package testutil holds helpers shared by the project's tests: FUSE and root requirements, mount bookkeeping,
// kernel overlayfs and tmpfs mounts, and the read-only fixture tree whose snapshot proves that lower layers are
// never modified.
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/mountinfo"
)

// Unavailable skips the test because the machine lacks what it needs (why says what, and how to get it), or
// fails it when LTSP_UNIONFS_REQUIRE_FUSE is set: CI sets it on a machine that has everything the tests need,
// where a skip would count as a pass.
func Unavailable(t testing.TB, why string) {
	t.Helper()
	if os.Getenv("LTSP_UNIONFS_REQUIRE_FUSE") != "" {
		t.Fatalf("%s, and LTSP_UNIONFS_REQUIRE_FUSE says this machine has what the tests need", why)
	}
	t.Skip(why)
}

// RequireFUSE skips the test when /dev/fuse cannot be opened, unless LTSP_UNIONFS_REQUIRE_FUSE is set (CI sets
// it), in which case the test fails: a missing FUSE device must never pass as a skip there.
func RequireFUSE(t testing.TB) {
	t.Helper()
	f, err := os.OpenFile("/dev/fuse", os.O_RDWR, 0)
	if err == nil {
		f.Close()
		return
	}
	Unavailable(t, fmt.Sprintf("no usable /dev/fuse (%v)", err))
}

// RequireRoot skips the test unless it runs as root, or fails it when LTSP_UNIONFS_REQUIRE_FUSE is set (CI runs
// as root).
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	Unavailable(t, "this test needs root")
}

// RequireTool skips the test when the program name is not installed, or fails it when LTSP_UNIONFS_REQUIRE_FUSE
// is set: CI installs every tool the tests use (pkg names the Debian package that has it).
func RequireTool(t testing.TB, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err == nil {
		return
	}
	Unavailable(t, fmt.Sprintf("%s is not installed (apt-get install %s; .ci/run does)", name, pkg))
}

// MountInfo is one line of /proc/self/mountinfo.
type MountInfo = mountinfo.Mount

// Mounts returns the mounts of this process's mount namespace.
func Mounts() ([]MountInfo, error) { return mountinfo.Read(mountinfo.Self) }

// MountAt returns the topmost mount at path, if any.
func MountAt(path string) (MountInfo, bool) {
	ms, err := Mounts()
	if err != nil {
		return MountInfo{}, false
	}
	var found MountInfo
	ok := false
	for _, m := range ms {
		if m.MountPoint == path {
			found, ok = m, true
		}
	}
	return found, ok
}

// UnionMounts returns the mount points of the ltsp-unionfs mounts under dir (all of them for "/"). Test packages
// run in parallel, so each checks only below its own temporary directory (see PackageTempDir).
func UnionMounts(dir string) []string {
	ms, _ := Mounts()
	var out []string
	prefix := strings.TrimSuffix(dir, "/") + "/"
	for _, m := range ms {
		if m.FSType == "fuse.ltsp-unionfs" && strings.HasPrefix(m.MountPoint+"/", prefix) {
			out = append(out, m.MountPoint)
		}
	}
	return out
}

// PackageTempDir makes a temporary directory for one test package and points TMPDIR at it, so that every
// t.TempDir() of the package lies below it and leftover mounts can be attributed to the package.
func PackageTempDir(pkg string) (string, error) {
	dir, err := os.MkdirTemp("", "ltsp-unionfs-"+pkg+"-")
	if err != nil {
		return "", err
	}
	// Tests run some commands as an unprivileged user, who must be able to reach their directories.
	if err := os.Chmod(dir, 0755); err != nil {
		return "", err
	}
	return dir, os.Setenv("TMPDIR", dir)
}

// Unmount unmounts path, lazily if it is busy, and fails the test if it cannot.
func Unmount(t testing.TB, path string) {
	t.Helper()
	if err := unix.Unmount(path, 0); err != nil {
		if err2 := unix.Unmount(path, unix.MNT_DETACH); err2 != nil {
			t.Errorf("unmount %s: %v; lazy unmount: %v", path, err, err2)
		}
	}
}

// MountTmpfs mounts a tmpfs of the given size (e.g. "64m") on dir and unmounts it when the test ends.
func MountTmpfs(t testing.TB, dir, size string) {
	t.Helper()
	RequireRoot(t)
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0755"); err != nil {
		t.Fatalf("mount tmpfs on %s: %v", dir, err)
	}
	t.Cleanup(func() { Unmount(t, dir) })
}

// MountExt4 makes an ext4 filesystem of the given size (e.g. "64M") in an image file beside dir and mounts it on
// dir through a loop device, until the test ends: a filesystem of another type than tmpfs, for copies the
// kernel refuses across filesystem types.
func MountExt4(t testing.TB, dir, size string) {
	t.Helper()
	RequireRoot(t)
	RequireTool(t, "mkfs.ext4", "e2fsprogs")
	img := dir + ".ext4"
	Run(t, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", img, size)
	Run(t, "mount", "-o", "loop", img, dir)
	t.Cleanup(func() {
		Unmount(t, dir) // the loop device goes with the last unmount (autoclear)
		os.Remove(img)
	})
}

// MountOverlay mounts kernel overlayfs on mnt with the given lowers (topmost first), upper and work directories
// and extra options, and unmounts it when the test ends.
func MountOverlay(t testing.TB, lowers []string, upper, work, mnt string, extra ...string) {
	t.Helper()
	RequireRoot(t)
	opts := "lowerdir=" + strings.Join(lowers, ":")
	if upper != "" {
		opts += ",upperdir=" + upper + ",workdir=" + work
	}
	for _, e := range extra {
		opts += "," + e
	}
	out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", opts, mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("mount -t overlay -o %s %s: %v: %s", opts, mnt, err, out)
	}
	t.Cleanup(func() {
		if m, ok := MountAt(mnt); ok && m.FSType == "overlay" {
			Unmount(t, mnt)
		}
	})
}

// Run runs a command and fails the test, showing its output, if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
