package changes

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// tree creates the objects described by specs under dir: "d PATH" a directory, "f PATH CONTENT" a file,
// "w PATH" an overlay whiteout, "x PATH NAME=VALUE" an xattr, "l PATH TARGET" a hard link to TARGET.
func tree(t *testing.T, dir string, specs ...string) {
	t.Helper()
	for _, s := range specs {
		f := strings.SplitN(s, " ", 3)
		p := filepath.Join(dir, f[1])
		var err error
		switch f[0] {
		case "d":
			err = os.MkdirAll(p, 0755)
		case "f":
			testutil.Mkdirs(t, filepath.Dir(p))
			err = os.WriteFile(p, []byte(f[2]), 0644)
		case "w":
			testutil.Mkdirs(t, filepath.Dir(p))
			err = unix.Mknod(p, unix.S_IFCHR, 0)
		case "x":
			k, v, _ := strings.Cut(f[2], "=")
			err = unix.Lsetxattr(p, k, []byte(v), 0)
		case "l":
			err = os.Link(filepath.Join(dir, f[2]), p)
		}
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

func diffLines(t *testing.T, upper string, lowers ...string) string {
	t.Helper()
	rep, err := Diff(Options{Upper: upper, Lowers: lowers})
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, c := range rep.Changes {
		b.WriteString(c.String() + "\n")
	}
	return b.String()
}

// TestUnionfs2MarkerTree reads unionfs-fuse 2.0's ".unionfs" marker tree: whiteouts under directories the upper
// layer lacks, a marker beside an upper directory (opaque), a marker beside an upper file (ignored, the file
// wins) and the union's temporary objects (never reported).
func TestUnionfs2MarkerTree(t *testing.T) {
	d := t.TempDir()
	lower, upper := filepath.Join(d, "lower"), filepath.Join(d, "upper")
	tree(t, lower, "f etc/hostname h", "f etc/passwd p", "f usr/share/doc/x x", "f var/cache/old o")
	tree(t, upper, "d .unionfs/usr/share", "f .unionfs/usr/share/doc_HIDDEN~ ", "f .unionfs/etc/hostname_HIDDEN~ ",
		"f .unionfs/etc/passwd_HIDDEN~ ", "f etc/passwd new", "f .unionfs/var/cache_HIDDEN~ ",
		"f var/cache/fresh f", "f .unionfs/gone_HIDDEN~ ", "f .wh..wh.ltsp-tmp.0123 t", "f etc/.wh..wh.ltsp-tmp.4567 t")
	want := `D /etc/hostname
M /etc/passwd
D /usr/share/doc
O /var/cache (opaque)
A /var/cache/fresh
`
	if got := diffLines(t, upper, lower); got != want {
		t.Errorf("diff:\n%s\nwant:\n%s", got, want)
	}
	rep, _ := Diff(Options{Upper: upper})
	if rep.Format != "unionfs-fuse" {
		t.Errorf("format %q, want unionfs-fuse", rep.Format)
	}
}

// TestLowerStackMarkers reads two lower layers, the top one with aufs and overlay markers of its own: a name
// already deleted below the upper layer is not deleted again, and an upper file over a name the lower stack
// deleted is added.
func TestLowerStackMarkers(t *testing.T) {
	testutil.RequireRoot(t) // overlay whiteouts are device nodes
	d := t.TempDir()
	top, base, upper := filepath.Join(d, "top"), filepath.Join(d, "base"), filepath.Join(d, "upper")
	tree(t, base, "f a a", "f b b", "f c c", "f dir/x x", "f dir/y y")
	tree(t, top, "f .wh.a ", "w b", "f dir/.wh..wh..opq ", "f dir/z z")
	tree(t, upper, "w a", "f b new", "w c", "w dir/x", "w dir/z")
	want := `A /b
D /c
D /dir/z
`
	if got := diffLines(t, upper, top, base); got != want {
		t.Errorf("diff:\n%s\nwant:\n%s", got, want)
	}
}

// TestMergeSplitsLowerLinks applies a metadata-only change to one name of a file that has two hard links in the
// target directory: the union shows the other name unchanged, so the merge gives the changed name a file of its
// own with the same data.
func TestMergeSplitsLowerLinks(t *testing.T) {
	testutil.RequireRoot(t) // trusted.overlay.metacopy
	d := t.TempDir()
	into, upper := filepath.Join(d, "into"), filepath.Join(d, "upper")
	tree(t, into, "f keep/file data", "l keep/link keep/file")
	tree(t, upper, "f keep/file ", "x keep/file trusted.overlay.metacopy=", "x keep/file user.new=1")
	os.Truncate(filepath.Join(upper, "keep/file"), 4)
	os.Chmod(filepath.Join(upper, "keep/file"), 0600)
	// Both trees are made within one timestamp tick: give the copy a time of its own.
	old := time.Unix(1e9, 0)
	os.Chtimes(filepath.Join(upper, "keep/file"), old, old)
	if got, want := diffLines(t, upper, into), "m /keep/file (metadata: mode, times, xattrs)\n"; got != want {
		t.Errorf("diff: %q, want %q", got, want)
	}
	if _, err := Merge(MergeOptions{Upper: upper, Into: into}); err != nil {
		t.Fatal(err)
	}
	var a, b unix.Stat_t
	unix.Lstat(filepath.Join(into, "keep/file"), &a)
	unix.Lstat(filepath.Join(into, "keep/link"), &b)
	data, _ := os.ReadFile(filepath.Join(into, "keep/file"))
	if a.Ino == b.Ino || a.Nlink != 1 || b.Nlink != 1 || a.Mode&0777 != 0600 || b.Mode&0777 != 0644 || string(data) != "data" {
		t.Errorf("after the merge: file ino %d nlink %d mode %o data %q, link ino %d nlink %d mode %o", a.Ino, a.Nlink,
			a.Mode&0777, data, b.Ino, b.Nlink, b.Mode&0777)
	}
	if v, err := unix.Lgetxattr(filepath.Join(into, "keep/file"), "trusted.overlay.metacopy", nil); err == nil {
		t.Errorf("the merge copied the private xattr trusted.overlay.metacopy (%d bytes)", v)
	}
	if v := make([]byte, 8); true {
		if n, err := unix.Lgetxattr(filepath.Join(into, "keep/file"), "user.new", v); err != nil || string(v[:n]) != "1" {
			t.Errorf("user.new after the merge: %q, %v", v[:n], err)
		}
	}
}

func TestPathOrder(t *testing.T) {
	cs := []*Change{{Path: "/a-b"}, {Path: "/a/c"}, {Path: "/"}, {Path: "/a"}, {Path: "/a/b/c"}, {Path: "/a/b"}}
	sortChanges(cs)
	var got []string
	for _, c := range cs {
		got = append(got, c.Path)
	}
	if want := "/ /a /a/b /a/b/c /a/c /a-b"; strings.Join(got, " ") != want {
		t.Errorf("order %v, want %s", got, want)
	}
}
