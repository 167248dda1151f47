package stack

import (
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// layerTree writes a layer: paths ending in "/" are directories, "NAME=c" an overlay whiteout, others files with
// their path as content. xattrs are set afterwards.
func layerTree(t *testing.T, dir string, paths []string, xattrs map[string][2]string) {
	t.Helper()
	for _, p := range paths {
		full := filepath.Join(dir, strings.TrimSuffix(p, "=c"))
		if err := os.MkdirAll(filepath.Dir(full), 0755); err != nil {
			t.Fatal(err)
		}
		var err error
		switch {
		case strings.HasSuffix(p, "/"):
			err = os.MkdirAll(full, 0755)
		case strings.HasSuffix(p, "=c"):
			err = unix.Mknod(full, unix.S_IFCHR, 0)
		default:
			err = os.WriteFile(full, []byte(p), 0644)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	for p, kv := range xattrs {
		if err := unix.Lsetxattr(filepath.Join(dir, p), kv[0], []byte(kv[1]), 0); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTreeResolvesEveryFormat builds three layers with the markers of every format, redirects and a
// metadata-only copy, and checks what each name resolves to and what each directory lists: a listed name must
// resolve, and a name that resolves must be listed.
func TestTreeResolvesEveryFormat(t *testing.T) {
	testutil.RequireRoot(t) // trusted.overlay.* xattrs and whiteout devices
	d := t.TempDir()
	top, mid, bottom := filepath.Join(d, "top"), filepath.Join(d, "mid"), filepath.Join(d, "bottom")
	layerTree(t, bottom, []string{"a", "b", "c", "dir/x", "dir/y", "old/z", "data", "opq/hidden", "meta/gone",
		"xw/gone", "xw/kept"}, nil)
	layerTree(t, mid, []string{".wh..wh.aufs", ".wh.b", "dir/", "dir/.wh.x", "copy", "moved/",
		"opq/", "opq/.wh..wh..opq", "opq/mine", "xw/", "xw/gone"},
		map[string][2]string{
			"copy":    {"trusted.overlay.metacopy", ""},
			"moved":   {"trusted.overlay.redirect", "/old"},
			"xw":      {"trusted.overlay.opaque", "x"},
			"xw/gone": {"trusted.overlay.whiteout", ""},
		})
	if err := os.Truncate(filepath.Join(mid, "xw/gone"), 0); err != nil {
		t.Fatal(err)
	}
	layerTree(t, top, []string{"c=c", ".unionfs/meta/gone_HIDDEN~", "dir/", "dir/new", "a"}, nil)
	// The metadata-only copy in mid was renamed: its data is under another name below.
	if err := unix.Lsetxattr(filepath.Join(mid, "copy"), "trusted.overlay.redirect", []byte("data"), 0); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(bottom, "meta"), 0755); err != nil {
		t.Fatal(err)
	}

	tr, err := OpenTree([]string{top, mid, bottom})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if tr.Layers[0].Aufs || !tr.Layers[1].Aufs || tr.MetaNames[0] != whiteout.UnionfsMetaDir {
		t.Fatalf("declarations: %+v, meta %q", tr.Layers, tr.MetaNames)
	}
	root, err := tr.Root()
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()

	type want struct {
		kind  Kind
		layer int    // of Found[0]
		data  string // the name the data lives under, for a metadata-only copy
	}
	for name, w := range map[string]want{
		"a":     {KindFile, 0, ""},
		"b":     {KindWhiteout, 1, ""}, // aufs marker in a layer that declares aufs
		"c":     {KindWhiteout, 0, ""}, // overlay whiteout
		"copy":  {KindFile, 1, "data"},
		"dir":   {KindDir, 0, ""},
		"moved": {KindDir, 1, ""},
		"nope":  {KindNone, 0, ""},
	} {
		var res Result
		if err := tr.Lookup(root, name, &res); err != nil {
			t.Fatal(err)
		}
		if res.Kind() != w.kind {
			t.Errorf("%s: kind %v, want %v", name, res.Kind(), w.kind)
		}
		if res.Exists() && res.Found[0].Layer != w.layer {
			t.Errorf("%s: found in layer %d, want %d", name, res.Found[0].Layer, w.layer)
		}
		if w.kind == KindWhiteout && res.Whiteout != w.layer {
			t.Errorf("%s: whited out by layer %d, want %d", name, res.Whiteout, w.layer)
		}
		if w.data != "" && (res.Data == nil || res.Data.Name != w.data || !res.DataMoved) {
			t.Errorf("%s: data %+v, want %s", name, res.Data, w.data)
		}
		res.Close()
	}

	list := func(d Dirs) string {
		names, err := tr.Names(d)
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(names)
		return strings.Join(names, " ")
	}
	for path, want := range map[string]string{
		"":      "a copy data dir meta moved old opq xw", // a redirect does not hide its source
		"dir":   "new y",
		"moved": "z",
		"opq":   "mine",
		"xw":    "kept",
		"meta":  "",
	} {
		var d Dirs
		if path == "" {
			d = root
		} else {
			var err error
			if d, err = tr.Child(root, path); err != nil {
				t.Fatal(err)
			}
			defer d.Close()
		}
		if got := list(d); got != want {
			t.Errorf("listing /%s: %q, want %q", path, got, want)
		}
		// Every listed name resolves; the names every layer has but the listing lacks do not.
		names, _ := tr.Names(d)
		listed := map[string]bool{}
		for _, n := range names {
			listed[n] = true
			var res Result
			if err := tr.Lookup(d, n, &res); err != nil || !res.Exists() {
				t.Errorf("/%s/%s is listed but resolves to %v (%v)", path, n, res.Kind(), err)
			}
			res.Close()
		}
		for li := range tr.Layers {
			if x := d.Dir(li); x.Fd >= 0 {
				ReadDir(x.Fd, DirContext{Aufs: tr.Layers[li].Aufs, AtRoot: x.AtRoot, Opacity: x.Opacity}, func(e *Entry) error {
					if e.Kind != Shown || listed[e.Name] {
						return nil
					}
					var res Result
					if err := tr.Lookup(d, e.Name, &res); err == nil && res.Exists() {
						t.Errorf("/%s/%s resolves but is not listed", path, e.Name)
					}
					res.Close()
					return nil
				})
			}
		}
	}

	// At follows an absolute path from every layer's root, as an absolute redirect does.
	at, err := tr.At("/old")
	if err != nil {
		t.Fatal(err)
	}
	defer at.Close()
	if got := list(at); got != "z" {
		t.Errorf("At(/old) lists %q", got)
	}
}

// TestReadDirClassifies checks each kind of entry.
func TestReadDirClassifies(t *testing.T) {
	testutil.RequireRoot(t)
	d := t.TempDir()
	layerTree(t, d, []string{"plain", "wo=c", ".wh.hidden", ".wh..wh..opq", whiteout.TempPrefix + "1",
		".unionfs/", "xw"}, map[string][2]string{"xw": {"trusted.overlay.whiteout", ""}})
	os.Truncate(filepath.Join(d, "xw"), 0)
	fd, err := unix.Open(d, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	got := func(c DirContext) string {
		var out []string
		ReadDir(fd, c, func(e *Entry) error {
			out = append(out, e.Name+":"+string("SWAHT"[e.Kind])+e.Hides)
			return nil
		})
		sort.Strings(out)
		return strings.Join(out, " ")
	}
	if g, w := got(DirContext{}), ".unionfs:S .wh..wh..opq:H .wh..wh.ltsp-tmp.1:T .wh.hidden:H plain:S wo:Wwo xw:S"; g != w {
		t.Errorf("plain directory:\n got %s\nwant %s", g, w)
	}
	if g, w := got(DirContext{Aufs: true, AtRoot: true, Opacity: whiteout.Xwhiteouts}), ".unionfs:H .wh..wh..opq:H .wh..wh.ltsp-tmp.1:T .wh.hidden:Ahidden plain:S wo:Wwo xw:Wxw"; g != w {
		t.Errorf("aufs root with xwhiteouts:\n got %s\nwant %s", g, w)
	}
}

// views is a View given as its layer directories.
type views []Dir

func (v views) Dir(li int) Dir { return v[li] }

// TestUnreadableMarkersAreErrors gives a layer a marker directory and a layer directory that cannot be read (a
// regular file's descriptor stands in for them): Lookup and List must report an *Error of that layer, not treat
// the markers as absent, which would show what the user deleted.
func TestUnreadableMarkersAreErrors(t *testing.T) {
	d := t.TempDir()
	upper, lower := filepath.Join(d, "upper"), filepath.Join(d, "lower")
	layerTree(t, upper, []string{"dir/"}, nil)
	layerTree(t, lower, []string{"dir/gone", "dir/kept", "notadir"}, nil)
	open := func(p string) int {
		fd, err := unix.Open(p, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(fd) })
		return fd
	}
	rd := ToolReader(nil)
	rd.Layers = []Layer{{Root: open(upper)}, {Root: open(lower)}}
	upDir, lowDir, file := open(filepath.Join(upper, "dir")), open(filepath.Join(lower, "dir")), open(filepath.Join(lower, "notadir"))

	wantLayerError := func(what string, err error, layer int) {
		t.Helper()
		var e *Error
		if !errors.As(err, &e) || e.Layer != layer {
			t.Errorf("%s: %v (%T), want a *stack.Error of layer %d", what, err, err, layer)
		}
	}
	badMeta := views{{Fd: upDir, Meta: file}, {Fd: lowDir, Meta: -1}}
	var res Result
	defer res.Close()
	wantLayerError("Lookup with an unreadable marker directory", rd.Lookup(badMeta, "gone", &res), 0)
	noUpper := views{{Fd: -1, Meta: file}, {Fd: lowDir, Meta: -1}}
	wantLayerError("Lookup with only an unreadable marker directory", rd.Lookup(noUpper, "gone", &res), 0)
	list := func(v View) error { return rd.List(v, func(int, *Entry) error { return nil }) }
	wantLayerError("List with an unreadable marker directory", list(badMeta), 0)
	wantLayerError("List with an unreadable lower directory", list(views{{Fd: upDir, Meta: -1}, {Fd: file, Meta: -1}}), 1)

	// The same views with readable directories: no error, and the listing is the lower's.
	good := views{{Fd: upDir, Meta: -1}, {Fd: lowDir, Meta: -1}}
	if err := rd.Lookup(good, "gone", &res); err != nil || !res.Exists() {
		t.Errorf("Lookup of gone in readable directories: exists %v, %v", res.Exists(), err)
	}
	var names []string
	if err := rd.List(good, func(_ int, e *Entry) error { names = append(names, e.Name); return nil }); err != nil {
		t.Errorf("List of readable directories: %v", err)
	}
	sort.Strings(names)
	if strings.Join(names, ",") != "gone,kept" {
		t.Errorf("List of readable directories = %v", names)
	}
}
