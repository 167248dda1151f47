package fstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestPlain validates Cases on a plain directory of the machine's filesystem.
func TestPlain(t *testing.T) {
	Run(t, Cases, func(t *testing.T) string { return t.TempDir() }, Config{})
}

// TestKernelOverlay validates UnionCases on kernel overlayfs, the reference the union is measured against.
func TestKernelOverlay(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("LTSP_UNIONFS_REQUIRE_FUSE") != "" {
			t.Fatal("mounting overlayfs needs root")
		}
		t.Skip("mounting overlayfs needs root")
	}
	RunUnion(t, UnionCases, newOverlayUnion, Config{Skip: map[string]string{
		"MergedDinoMatchesStat": "overlayfs without xino reports the upper d_ino of a merged subdirectory " +
			"while stat reports the lower st_ino; ltsp-unionfs keeps them equal",
	}})
}

// TestKernelOverlayCow validates CowCases on kernel overlayfs with redirect_dir=on, the mode that renames lower
// directories without EXDEV (the union always does).
func TestKernelOverlayCow(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("LTSP_UNIONFS_REQUIRE_FUSE") != "" {
			t.Fatal("mounting overlayfs needs root")
		}
		t.Skip("mounting overlayfs needs root")
	}
	RunUnion(t, CowCases, func(t *testing.T) Union {
		u := newOverlayUnion(t).(*overlayUnion)
		u.opts = ",redirect_dir=on"
		return u
	}, Config{})
}

// overlayUnion is kernel overlayfs as a Union.
type overlayUnion struct {
	dir, mnt string
	opts     string // extra mount options, with a leading comma
	mounted  bool
}

func newOverlayUnion(t *testing.T) Union {
	u := &overlayUnion{dir: t.TempDir()}
	for _, d := range []string{"lower0", "lower1", "upper", "work", "mnt"} {
		if err := os.Mkdir(filepath.Join(u.dir, d), 0755); err != nil {
			t.Fatal(err)
		}
	}
	u.mnt = filepath.Join(u.dir, "mnt")
	t.Cleanup(func() {
		if u.mounted {
			u.Unmount(t)
		}
	})
	return u
}

func (u *overlayUnion) Lower(i int) string {
	return filepath.Join(u.dir, []string{"lower0", "lower1"}[i])
}
func (u *overlayUnion) Upper() string { return filepath.Join(u.dir, "upper") }

func (u *overlayUnion) Mount(t *testing.T) string {
	t.Helper()
	opts := "lowerdir=" + u.Lower(0) + ":" + u.Lower(1) + ",upperdir=" + u.Upper() + ",workdir=" +
		filepath.Join(u.dir, "work") + u.opts
	if out, err := exec.Command("mount", "-t", "overlay", "overlay", "-o", opts, u.mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount overlay: %v: %s", err, strings.TrimSpace(string(out)))
	}
	u.mounted = true
	return u.mnt
}

func (u *overlayUnion) Unmount(t *testing.T) {
	t.Helper()
	if err := unix.Unmount(u.mnt, 0); err != nil {
		t.Fatalf("unmount overlay: %v", err)
	}
	u.mounted = false
}
