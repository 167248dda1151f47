package whiteout

import (
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// upperDir makes an upper layer with a directory "d" and returns the layer root, the directory and its Dir.
func upperDir(t *testing.T) (root string, d Dir) {
	t.Helper()
	root = t.TempDir()
	testutil.Mkdirs(t, filepath.Join(root, "d"))
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	dfd, err := unix.Open(filepath.Join(root, "d"), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(rfd); unix.Close(dfd) })
	return root, Dir{Fd: dfd, Path: "d", Root: rfd}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

func requireRoot(t *testing.T) {
	testutil.RequireRoot(t)
}

// TestFormatsOnDisk checks what each format writes: whiteouts for absent and present upper objects, publishing
// over a whiteout, opaque markers, and clearing a directory's markers.
func TestFormatsOnDisk(t *testing.T) {
	requireRoot(t)
	for _, f := range []Format{Overlay{}, Aufs{}, Unionfs{MetaDir: UnionfsMetaDir}} {
		t.Run(f.Name(), func(t *testing.T) {
			root, d := upperDir(t)
			dir := filepath.Join(root, "d")
			// Whiteout of a name the upper layer does not have.
			if moved, err := f.Hide(d, "gone", TempName()); err != nil || moved {
				t.Fatalf("Hide of an absent name: moved %v, %v", moved, err)
			}
			// Whiteout of a name the upper layer has: overlay swaps it out, the others mark beside it.
			testutil.WriteFile(t, filepath.Join(dir, "present"), []byte("x"), 0644)
			tmp := TempName()
			moved, err := f.Hide(d, "present", tmp)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := f.(Overlay); ok != moved {
				t.Errorf("Hide moved the object: %v", moved)
			}
			switch f.(type) {
			case Overlay:
				for _, n := range []string{"gone", "present"} {
					var st unix.Stat_t
					unix.Lstat(filepath.Join(dir, n), &st)
					if !IsOverlayWhiteout(&st) {
						t.Errorf("%s is no whiteout: mode %o rdev %d", n, st.Mode, st.Rdev)
					}
				}
				if b, _ := os.ReadFile(filepath.Join(dir, tmp)); string(b) != "x" {
					t.Errorf("the moved object holds %q", b)
				}
			case Aufs:
				for _, n := range []string{".wh.gone", ".wh.present"} {
					if _, err := os.Lstat(filepath.Join(dir, n)); err != nil {
						t.Errorf("no %s: %v", n, err)
					}
				}
				if _, err := os.Lstat(filepath.Join(root, ".wh..wh.aufs")); err != nil {
					t.Errorf("no aufs base marker: %v", err)
				}
			case Unionfs:
				for _, n := range []string{"gone_HIDDEN~", "present_HIDDEN~"} {
					if _, err := os.Lstat(filepath.Join(root, ".unionfs", "d", n)); err != nil {
						t.Errorf("no %s: %v", n, err)
					}
				}
			}
			// Publish a new directory over the whiteout of "gone", made opaque first.
			tmpDir := TempName()
			testutil.Mkdirs(t, filepath.Join(dir, tmpDir))
			if err := f.MarkOpaque(d, tmpDir, d, "gone"); err != nil {
				t.Fatal(err)
			}
			if err := f.Publish(d, tmpDir, "gone", true); err != nil {
				t.Fatal(err)
			}
			if st, err := os.Lstat(filepath.Join(dir, "gone")); err != nil || !st.IsDir() {
				t.Fatalf("published directory: %v", err)
			}
			sub, _ := sysx.OpenDir(d.Fd, "gone")
			defer unix.Close(sub)
			switch f.(type) {
			case Overlay:
				if op, _ := DirOpacity(d.Fd, "gone"); op != Opaque {
					t.Error("the published directory is not opaque")
				}
			case Aufs:
				if _, err := os.Lstat(filepath.Join(dir, "gone", AufsOpaque)); err != nil {
					t.Error("no aufs opaque marker")
				}
				if _, err := os.Lstat(filepath.Join(dir, ".wh.gone")); !os.IsNotExist(err) {
					t.Error("the aufs whiteout stayed")
				}
			case Unionfs:
				if _, err := os.Lstat(filepath.Join(root, ".unionfs", "d", "gone_HIDDEN~")); err != nil {
					t.Error("the unionfs-fuse marker that makes the directory opaque is gone")
				}
			}
			// Markers inside the directory, then cleared.
			gd := Dir{Fd: sub, Path: "d/gone", Root: d.Root}
			f.Hide(gd, "inner", TempName())
			if err := f.ClearDir(d, "gone", sub); err != nil {
				t.Fatal(err)
			}
			if got := names(t, filepath.Join(dir, "gone")); len(got) > 0 && !(len(got) == 1 && got[0] == AufsOpaque) {
				t.Errorf("after ClearDir: %v", got)
			}
			// Publish a file over the whiteout of "present" (the caller removes what Hide left in place).
			os.Remove(filepath.Join(dir, tmp))
			if !moved {
				os.Remove(filepath.Join(dir, "present"))
			}
			tmpFile := TempName()
			testutil.WriteFile(t, filepath.Join(dir, tmpFile), []byte("new"), 0644)
			if err := f.Publish(d, tmpFile, "present", false); err != nil {
				t.Fatal(err)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "present")); string(b) != "new" {
				t.Errorf("published file holds %q", b)
			}
		})
	}
}

// TestDetect recognises each format from an upper layer's root, and nothing in an empty one.
func TestDetect(t *testing.T) {
	requireRoot(t)
	for _, f := range []Format{Overlay{}, Aufs{}, Unionfs{MetaDir: UnionfsMetaDir}, Unionfs{MetaDir: UnionfsLegacyMetaDir}} {
		_, d := upperDir(t)
		if _, ok := Detect(d.Root); ok {
			t.Fatal("detected a format in an empty upper layer")
		}
		if u, ok := f.(Unionfs); ok {
			os.Mkdir(filepath.Join("/proc/self/fd", strconv.Itoa(d.Root), u.MetaDir), 0700)
		}
		rootDir := Dir{Fd: d.Root, Root: d.Root}
		if _, err := f.Hide(rootDir, "x", TempName()); err != nil {
			t.Fatal(err)
		}
		got, ok := Detect(d.Root)
		if !ok || got != f {
			t.Errorf("wrote %#v, detected %#v (%v)", f, got, ok)
		}
	}
}

// TestMarkerNames checks which names and xattrs are the union's.
func TestMarkerNames(t *testing.T) {
	for name, want := range map[string]bool{".wh.x": true, ".wh..wh..opq": true, TempName(): true, "x.wh.": false, "wh.x": false} {
		if IsMarkerName(name) != want {
			t.Errorf("IsMarkerName(%q) = %v", name, !want)
		}
	}
	for attr, want := range map[string]bool{"trusted.overlay.opaque": true, "user.overlay.redirect": true,
		"security.capability": false, "user.overlayfoo": false, "trusted.overlayx": false} {
		if IsPrivateXattr(attr) != want {
			t.Errorf("IsPrivateXattr(%q) = %v", attr, !want)
		}
	}
}
