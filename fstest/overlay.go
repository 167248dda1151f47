package fstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// overlayUnion is kernel overlayfs as a Union.
type overlayUnion struct {
	dir, mnt string
	opts     string // extra mount options, with a leading comma
	mounted  bool
}

// NewKernelOverlay makes kernel overlayfs, the reference, as a Union (root only); opts are extra mount options.
func NewKernelOverlay(t *testing.T, opts ...string) Union {
	requireRoot(t)
	u := &overlayUnion{dir: t.TempDir()}
	for _, o := range opts {
		u.opts += "," + o
	}
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
