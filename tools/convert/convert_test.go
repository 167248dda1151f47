package convert

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/inuse"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/tools/check"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// overlayUpper writes, as kernel overlayfs would, an overlay-format upper over a small lower: a whiteout, an
// opaque directory, a directory renamed with a redirect (with a whiteout and a new file inside), and a
// metadata-only copy.
func overlayUpper(t *testing.T) (lower, upper string) {
	t.Helper()
	testutil.RequireRoot(t)
	d := t.TempDir()
	lower, upper = filepath.Join(d, "lower"), filepath.Join(d, "upper")
	for _, p := range []string{lower + "/d/sub", lower + "/o", upper + "/moved/sub", upper + "/o"} {
		must(t, os.MkdirAll(p, 0755))
	}
	for _, f := range []string{"gone", "meta", "d/x", "d/y", "d/sub/z", "o/hidden"} {
		must(t, os.WriteFile(filepath.Join(lower, f), []byte("lower "+f+"\n"), 0644))
	}
	must(t, unix.Mknod(upper+"/gone", unix.S_IFCHR, 0))
	must(t, unix.Mknod(upper+"/d", unix.S_IFCHR, 0))
	must(t, unix.Lsetxattr(upper+"/o", whiteout.OverlayOpaqueXattr, []byte("y"), 0))
	must(t, unix.Lsetxattr(upper+"/moved", whiteout.OverlayRedirectXattr, []byte("/d"), 0))
	must(t, unix.Mknod(upper+"/moved/y", unix.S_IFCHR, 0))
	must(t, os.WriteFile(upper+"/moved/sub/new", []byte("new\n"), 0644))
	must(t, os.WriteFile(upper+"/meta", nil, 0600))
	must(t, os.Truncate(upper+"/meta", int64(len("lower meta\n"))))
	must(t, unix.Lsetxattr(upper+"/meta", "trusted.overlay.metacopy", nil, 0))
	return lower, upper
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestConvertAPI converts an overlay upper to aufs through the library: it refuses without lowers (naming the
// redirect or the metadata-only copy, changing nothing), then materialises the redirect, completes the
// metadata-only copy, reports progress and leaves an upper that checks clean in the aufs format only.
func TestConvertAPI(t *testing.T) {
	lower, upper := overlayUpper(t)
	_, err := Convert(upper, Options{To: "aufs"})
	var ne *NeedLowersError
	if !errors.As(err, &ne) || (ne.Path != "/moved" && ne.Path != "/meta") {
		t.Fatalf("without lowers: %v, want a NeedLowersError for /moved or /meta", err)
	}
	if _, err := os.Lstat(upper + "/.wh..wh.aufs"); err == nil {
		t.Errorf("a refused conversion wrote the aufs base marker")
	}
	seen := 0
	res, err := Convert(upper, Options{To: "aufs", Lowers: []string{lower}, Progress: func(n int) { seen += n }})
	must(t, err)
	if seen != res.Objects || seen == 0 {
		t.Errorf("progress reported %d objects, the result %d", seen, res.Objects)
	}
	if res.Materialised != 1 || res.Filled != 1 || res.CopiedUp != 2 {
		t.Errorf("result %+v: want 1 directory materialised (x and sub/z copied up), 1 metadata-only copy filled", res)
	}
	want := map[string]string{"moved/x": "lower d/x\n", "moved/sub/z": "lower d/sub/z\n", "moved/sub/new": "new\n",
		"meta": "lower meta\n"}
	for p, content := range want {
		if b, err := os.ReadFile(filepath.Join(upper, p)); err != nil || string(b) != content {
			t.Errorf("%s: %q, %v; want %q", p, b, err, content)
		}
	}
	for _, p := range []string{".wh.gone", ".wh.d", "o/.wh..wh..opq", "moved/.wh..wh..opq", "moved/sub/.wh..wh..opq"} {
		if _, err := os.Lstat(filepath.Join(upper, p)); err != nil {
			t.Errorf("no aufs marker %s: %v", p, err)
		}
	}
	for _, p := range []string{"moved/y", "moved/.wh.y"} {
		if _, err := os.Lstat(filepath.Join(upper, p)); err == nil {
			t.Errorf("%s is still there: the materialised directory is opaque, it hides nothing", p)
		}
	}
	buf := make([]byte, 64)
	for _, p := range []string{"moved", "o"} {
		for _, attr := range []string{whiteout.OverlayRedirectXattr, whiteout.OverlayOpaqueXattr} {
			if _, err := unix.Lgetxattr(filepath.Join(upper, p), attr, buf); err == nil {
				t.Errorf("%s still has %s", p, attr)
			}
		}
	}
	rep, err := check.Check(upper, check.Options{Lowers: []string{lower}})
	must(t, err)
	if len(rep.Problems) != 0 || strings.Join(rep.Formats, ",") != "aufs" {
		t.Errorf("after the conversion: formats %v, problems %+v", rep.Formats, rep.Problems)
	}
}

// TestConvertRefusesMountedUpper: the upper of a live overlay mount is refused with a BusyError.
func TestConvertRefusesMountedUpper(t *testing.T) {
	lower, upper := overlayUpper(t)
	d := filepath.Dir(upper)
	work, mnt := d+"/work", d+"/mnt"
	must(t, os.Mkdir(work, 0755))
	must(t, os.Mkdir(mnt, 0755))
	testutil.MountOverlay(t, []string{lower}, upper, work, mnt, "redirect_dir=on", "metacopy=on")
	_, err := Convert(upper, Options{To: "overlay"})
	var be *inuse.BusyError
	if !errors.As(err, &be) {
		t.Errorf("converting a mounted upper: %v, want a BusyError", err)
	}
}
