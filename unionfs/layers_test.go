package unionfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// TestOpenLayersRefuses checks every refusal of OpenLayers and the message it gives.
func TestOpenLayersRefuses(t *testing.T) {
	dir := t.TempDir()
	mk := func(p string) string {
		p = filepath.Join(dir, p)
		if err := os.MkdirAll(p, 0755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	lower, upper := mk("lower"), mk("upper")
	file := filepath.Join(dir, "file")
	testutil.WriteFile(t, file, nil, 0644)
	nested := mk("lower/inside")
	testutil.Symlink(t, lower, filepath.Join(dir, "link-to-lower"))

	cases := []struct {
		name   string
		upper  string
		lowers []string
		want   string
	}{
		{"missing lower", upper, []string{filepath.Join(dir, "nope")}, "lower layer " + dir + "/nope does not exist"},
		{"missing upper", filepath.Join(dir, "nope"), []string{lower}, "upper layer " + dir + "/nope does not exist"},
		{"lower is a file", upper, []string{file}, "lower layer " + file + " is not a directory"},
		{"upper is a file", file, []string{lower}, "upper layer " + file + " is not a directory"},
		{"same directory", lower, []string{lower}, "is the same directory as the upper layer"},
		{"same through a symlink", filepath.Join(dir, "link-to-lower"), []string{lower}, "is the same directory as the upper layer"},
		{"upper inside lower", nested, []string{lower}, "upper layer " + nested + " lies inside the lower layer " + lower},
		{"lower inside upper", lower, []string{nested}, "lower layer " + nested + " lies inside the upper layer " + lower},
		{"no lower", upper, nil, "lower layer is missing"},
		{"empty path", "", []string{lower}, "upper layer is missing"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ls, err := OpenLayers(c.upper, c.lowers)
			if err == nil {
				ls.Close()
				t.Fatal("OpenLayers accepted it")
			}
			var le *LayerError
			if !errors.As(err, &le) {
				t.Fatalf("error %v is not a *LayerError", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
		})
	}
}

// TestOpenLayersResolvesRelativePaths checks that relative layer paths are resolved, not refused.
func TestOpenLayersResolvesRelativePaths(t *testing.T) {
	dir := t.TempDir()
	testutil.Mkdirs(t, filepath.Join(dir, "lo"))
	testutil.Mkdirs(t, filepath.Join(dir, "up"))
	t.Chdir(dir)
	ls, err := OpenLayers("up", []string{"./lo"})
	if err != nil {
		t.Fatal(err)
	}
	defer ls.Close()
	if ls.Upper().Path != filepath.Join(dir, "up") || ls.Lowers()[0].Path != filepath.Join(dir, "lo") {
		t.Fatalf("paths %s %s", ls.Upper().Path, ls.Lowers()[0].Path)
	}
}

// TestAufsMarkersInLower reads a lower layer written in the aufs format: ".wh.NAME" hides NAME below,
// ".wh..wh..opq" makes a directory opaque, and no ".wh.*" name is ever visible or creatable.
func TestAufsMarkersInLower(t *testing.T) {
	u := newTestUnion(t, 2)
	l0, l1 := u.Lower(0), u.Lower(1)
	for _, p := range []string{"d", "keep"} {
		testutil.Mkdirs(t, filepath.Join(l1, p))
	}
	testutil.WriteFile(t, filepath.Join(l1, "gone"), []byte("hidden"), 0644)
	testutil.WriteFile(t, filepath.Join(l1, "d", "below"), nil, 0644)
	testutil.WriteFile(t, filepath.Join(l1, "keep", "below"), nil, 0644)
	testutil.Mkdirs(t, filepath.Join(l0, "d"))
	testutil.Mkdirs(t, filepath.Join(l0, "keep"))
	testutil.WriteFile(t, filepath.Join(l0, "d", "top"), nil, 0644)
	testutil.WriteFile(t, filepath.Join(l0, "d", ".wh..wh..opq"), nil, 0644)
	testutil.WriteFile(t, filepath.Join(l0, ".wh.gone"), nil, 0644)
	testutil.WriteFile(t, filepath.Join(l0, ".wh..wh.aufs"), nil, 0644)
	mnt := u.Mount(t)
	wantList(t, mnt, "d", "keep")
	wantList(t, filepath.Join(mnt, "d"), "top")
	wantList(t, filepath.Join(mnt, "keep"), "below")
	for _, p := range []string{"gone", ".wh.gone", ".wh..wh.aufs", "d/.wh..wh..opq"} {
		if _, err := os.Lstat(filepath.Join(mnt, p)); !errors.Is(err, syscall.ENOENT) {
			t.Errorf("Lstat %s: %v, want ENOENT", p, err)
		}
	}
	err := os.WriteFile(filepath.Join(mnt, ".wh.forged"), nil, 0644)
	if !errors.Is(err, syscall.EPERM) {
		t.Errorf("creating .wh.forged: %v, want EPERM", err)
	}
	if err := os.Mkdir(filepath.Join(mnt, ".unionfs"), 0755); !errors.Is(err, syscall.EPERM) {
		t.Errorf("creating the unionfs-fuse meta directory: %v, want EPERM", err)
	}
}

// TestUnionfsMetaDirHidden checks that unionfs-fuse's meta directories at a layer root are never shown.
func TestUnionfsMetaDirHidden(t *testing.T) {
	u := newTestUnion(t, 1)
	testutil.Mkdirs(t, filepath.Join(u.Upper(), ".unionfs"))
	testutil.Mkdirs(t, filepath.Join(u.Lower(0), ".unionfs-fuse"))
	testutil.Mkdirs(t, filepath.Join(u.Lower(0), "sub", ".unionfs"))
	mnt := u.Mount(t)
	wantList(t, mnt, "sub")
	wantList(t, filepath.Join(mnt, "sub"), ".unionfs")
}

// TestMountPointInsideLower mounts a tmpfs inside a lower layer: the union shows the directory underneath, as
// overlayfs does, and never the mounted filesystem.
func TestMountPointInsideLower(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	sub := filepath.Join(u.Lower(0), "sub")
	os.MkdirAll(sub, 0711)
	testutil.WriteFile(t, filepath.Join(sub, "covered"), []byte("underneath"), 0644)
	testutil.MountTmpfs(t, sub, "1m")
	testutil.WriteFile(t, filepath.Join(sub, "on-the-tmpfs"), nil, 0644)
	mnt := u.Mount(t)
	wantList(t, filepath.Join(mnt, "sub"), "covered")
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "sub"), &st); err != nil || st.Mode&07777 != 0711 {
		t.Errorf("sub: mode %o %v, want the covered directory's 0711", st.Mode&07777, err)
	}
}

// TestInodeNumbersAcrossDevices puts every layer on its own tmpfs: inode numbers are unique across layers, the
// topmost lower keeps its own numbers, and readdir agrees with stat.
func TestInodeNumbersAcrossDevices(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 2)
	for _, d := range []string{u.Upper(), u.Lower(0), u.Lower(1)} {
		testutil.MountTmpfs(t, d, "4m")
	}
	// tmpfs numbers inodes from the same counter on every instance: the same numbers in each layer.
	for i, d := range []string{u.Upper(), u.Lower(0), u.Lower(1)} {
		for j := 0; j < 20; j++ {
			testutil.WriteFile(t, filepath.Join(d, strings.Repeat("x", i+1)+string(rune('a'+j))), nil, 0644)
		}
		testutil.Mkdirs(t, filepath.Join(d, "shared"))
	}
	var lowerSt unix.Stat_t
	unix.Lstat(filepath.Join(u.Lower(0), "xxa"), &lowerSt)
	mnt := u.Mount(t)
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(mnt, "xxa"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Ino != lowerSt.Ino {
		t.Errorf("a file of the topmost lower has number %d in the union, %d in its layer", st.Ino, lowerSt.Ino)
	}
	checkDinoEverywhere(t, mnt)
}

// TestReadOnlyRefusesChanges checks that a read-only union refuses every change with EROFS.
func TestReadOnlyRefusesChanges(t *testing.T) {
	u := newTestUnion(t, 1)
	testutil.WriteFile(t, filepath.Join(u.Upper(), "f"), []byte("x"), 0644)
	u.cfg.ReadOnly = true
	mnt := u.Mount(t)
	checks := map[string]error{
		"create": os.WriteFile(filepath.Join(mnt, "new"), nil, 0644),
		"mkdir":  os.Mkdir(filepath.Join(mnt, "d"), 0755),
		"chmod":  os.Chmod(filepath.Join(mnt, "f"), 0600),
		"unlink": os.Remove(filepath.Join(mnt, "f")),
	}
	_, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_WRONLY, 0)
	checks["open for writing"] = err
	for what, err := range checks {
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s: %v, want EROFS", what, err)
		}
	}
}

// wantList checks the names in dir, "." and ".." left out.
func wantList(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("ReadDir %s: %v", dir, err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("%s lists %q, want %q", dir, got, want)
	}
}

// TestMarkersCannotBeForged tries every way through the mount to create, reveal, change or remove the union's
// markers: marker names cannot be created or renamed onto, private xattrs cannot be read, set or removed, and a
// whiteout never shows.
func TestMarkersCannotBeForged(t *testing.T) {
	testutil.RequireRoot(t)
	for _, format := range []string{"overlay", "aufs", "unionfs-fuse"} {
		t.Run(format, func(t *testing.T) {
			u := newTestUnion(t, 1)
			u.cfg.Whiteout = format
			testutil.WriteFile(t, filepath.Join(u.Lower(0), "gone"), []byte("x"), 0644)
			testutil.WriteFile(t, filepath.Join(u.Lower(0), "file"), []byte("x"), 0644)
			mnt := u.Mount(t)
			if err := os.Remove(filepath.Join(mnt, "gone")); err != nil {
				t.Fatal(err)
			}
			want := func(what string, err error, errnos ...syscall.Errno) {
				t.Helper()
				for _, e := range errnos {
					if errors.Is(err, e) {
						return
					}
				}
				t.Errorf("%s: %v, want one of %v", what, err, errnos)
			}
			want("create .wh.file", os.WriteFile(filepath.Join(mnt, ".wh.file"), nil, 0644), syscall.EPERM)
			want("mkdir .wh..wh..opq", os.Mkdir(filepath.Join(mnt, ".wh..wh..opq"), 0755), syscall.EPERM)
			want("symlink .wh.x", os.Symlink("x", filepath.Join(mnt, ".wh.x")), syscall.EPERM)
			want("rename onto .wh.file", unix.Rename(filepath.Join(mnt, "file"), filepath.Join(mnt, ".wh.file")), syscall.EPERM)
			want("link as .wh.file", os.Link(filepath.Join(mnt, "file"), filepath.Join(mnt, ".wh.file")), syscall.EPERM)
			want("mkdir .unionfs", os.Mkdir(filepath.Join(mnt, ".unionfs"), 0755), syscall.EPERM)
			want("open a temporary name", func() error {
				_, err := os.Open(filepath.Join(mnt, whiteout.TempPrefix+"0123"))
				return err
			}(), syscall.ENOENT)
			buf := make([]byte, 64)
			for _, attr := range []string{"trusted.overlay.opaque", "trusted.overlay.redirect", "trusted.overlay.metacopy",
				"trusted.overlay.ltsp.origin", "user.overlay.opaque"} {
				_, err := unix.Lgetxattr(filepath.Join(mnt, "file"), attr, buf)
				want("getxattr "+attr, err, syscall.ENODATA)
				want("setxattr "+attr, unix.Lsetxattr(filepath.Join(mnt, "file"), attr, []byte("y"), 0), syscall.EPERM)
				want("removexattr "+attr, unix.Lremovexattr(mnt, attr), syscall.EPERM)
			}
			os.Chmod(filepath.Join(mnt, "file"), 0600) // copy-up: the copy carries private marks
			n, err := unix.Llistxattr(filepath.Join(mnt, "file"), buf)
			if err != nil || bytes.Contains(buf[:n], []byte("overlay.")) {
				t.Errorf("listxattr shows %q, %v", buf[:n], err)
			}
			ents, _ := os.ReadDir(mnt)
			for _, e := range ents {
				if e.Name() != "file" {
					t.Errorf("listing shows %s", e.Name())
				}
			}
		})
	}
}
