package layers

import (
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

func openDir(t *testing.T, p string) int {
	t.Helper()
	fd, err := unix.Open(p, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func xattr(t *testing.T, p, name, value string) {
	t.Helper()
	if err := unix.Lsetxattr(p, name, []byte(value), 0); err != nil {
		t.Fatal(err)
	}
}

// TestMetacopyData finds the data of metadata-only copies the ways overlayfs records it: by the copy's own name
// below, by a relative or an absolute redirect, and through a lower metadata-only copy (the upper layer of an
// earlier mount) whose data is further down.
func TestMetacopyData(t *testing.T) {
	testutil.RequireRoot(t) // trusted.overlay.* xattrs
	d := t.TempDir()
	top, bottom, upper := filepath.Join(d, "top"), filepath.Join(d, "bottom"), filepath.Join(d, "upper")
	testutil.Mkdirs(t, filepath.Join(top, "dir"), filepath.Join(bottom, "dir"), filepath.Join(bottom, "elsewhere"),
		filepath.Join(upper, "dir"))
	testutil.WriteFile(t, filepath.Join(bottom, "dir", "same"), []byte("same name below"), 0644)
	testutil.WriteFile(t, filepath.Join(bottom, "dir", "old"), []byte("renamed in the directory"), 0644)
	testutil.WriteFile(t, filepath.Join(bottom, "elsewhere", "f"), []byte("renamed from elsewhere"), 0644)
	testutil.WriteFile(t, filepath.Join(bottom, "dir", "chain"), []byte("two layers down"), 0644)
	testutil.WriteFile(t, filepath.Join(top, "dir", "chain"), nil, 0644) // a lower metadata-only copy
	xattr(t, filepath.Join(top, "dir", "chain"), "trusted.overlay.metacopy", "")
	for name, redirect := range map[string]string{"same": "", "rel": "old", "abs": "/elsewhere/f", "chain": "",
		"lost": ""} {
		p := filepath.Join(upper, "dir", name)
		testutil.WriteFile(t, p, nil, 0644)
		xattr(t, p, "trusted.overlay.metacopy", "")
		if redirect != "" {
			xattr(t, p, whiteout.OverlayRedirectXattr, redirect)
		}
	}

	lowers, err := OpenLowers([]string{top, bottom})
	if err != nil {
		t.Fatal(err)
	}
	defer lowers.Close()
	root := lowers.Root()
	defer root.Close()
	below := root.Child("dir")
	defer below.Close()
	if below.Empty() {
		t.Fatal("the lower directory dir is not found")
	}
	if names, err := below.Names(); err != nil || !slices.Equal(slices.Sorted(slices.Values(names)), []string{"chain", "old", "same"}) {
		t.Errorf("Names of dir = %v, %v", names, err)
	}
	updir := openDir(t, filepath.Join(upper, "dir"))
	want := map[string]string{"same": "same name below", "rel": "renamed in the directory",
		"abs": "renamed from elsewhere", "chain": "two layers down"}
	for name, content := range want {
		if !IsMetacopy(updir, name) {
			t.Errorf("%s: IsMetacopy = false", name)
		}
		e, release, ok := MetacopyData(lowers, updir, name, below)
		if !ok {
			t.Errorf("%s: no data found", name)
			release()
			continue
		}
		fd, err := sysx.OpenObject(e.Dirfd, e.Name, unix.O_RDONLY)
		release()
		if err != nil {
			t.Errorf("%s: opening its data %s: %v", name, e.Name, err)
			continue
		}
		buf := make([]byte, 100)
		n, _ := unix.Read(fd, buf)
		unix.Close(fd)
		if string(buf[:n]) != content {
			t.Errorf("%s: data %q, want %q", name, buf[:n], content)
		}
	}
	if _, release, ok := MetacopyData(lowers, updir, "lost", below); ok {
		t.Error("lost: data found although no lower layer has the name")
	} else {
		release()
	}
}

// TestMetas opens the meta trees of both unionfs-fuse versions and follows one of them down.
func TestMetas(t *testing.T) {
	upper := t.TempDir()
	testutil.Mkdirs(t, filepath.Join(upper, whiteout.UnionfsMetaDir, "a", "b"),
		filepath.Join(upper, whiteout.UnionfsLegacyMetaDir, "c"))
	root := openDir(t, upper)
	metas := OpenMetas(root)
	defer CloseMetas(metas)
	if len(metas) != 2 || metas[0].Tree != whiteout.UnionfsMetaDir || metas[1].Tree != whiteout.UnionfsLegacyMetaDir {
		t.Fatalf("OpenMetas = %+v", metas)
	}
	a := SubMetas(metas, "a")
	defer CloseMetas(a)
	if len(a) != 1 || a[0].Tree != whiteout.UnionfsMetaDir {
		t.Fatalf("SubMetas(a) = %+v, want the new tree's directory only", a)
	}
	if b := SubMetas(a, "b"); len(b) != 1 {
		t.Errorf("SubMetas(a/b) = %+v", b)
	} else {
		CloseMetas(b)
	}
	if none := SubMetas(metas, "missing"); len(none) != 0 {
		t.Errorf("SubMetas(missing) = %+v", none)
	}
}
