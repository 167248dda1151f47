package stack

import (
	"fmt"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// LayerError is a layer directory, given by its path, that is missing, not a directory or unreadable.
type LayerError struct {
	Path string
	Err  error
}

func (e *LayerError) Error() string { return fmt.Sprintf("layer %s: %v", e.Path, e.Err) }
func (e *LayerError) Unwrap() error { return e.Err }

// OpenLayerDir opens the layer directory path (the command line names it, so a symlink to it is followed) as an
// O_PATH descriptor, after checking that it can be listed; a failure is a *LayerError.
func OpenLayerDir(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &LayerError{Path: path, Err: err}
	}
	// A directory that cannot be listed is of no use: say so now rather than in the middle of a walk.
	rfd, err := openList(fd)
	if err != nil {
		unix.Close(fd)
		return -1, &LayerError{Path: path, Err: err}
	}
	unix.Close(rfd)
	return fd, nil
}

// Tree is a stack of layers opened from their paths, for the offline tools, read with a ToolReader.
type Tree struct {
	*Reader
	// Paths are the layers' paths, topmost first.
	Paths []string
	// MetaNames are the names of the layers' unionfs-fuse meta directories, "" where a layer has none.
	MetaNames []string
	metas     []int // the meta directories, -1 where none
}

// OpenTree opens the layers at paths, topmost first. A failure is a *LayerError.
func OpenTree(paths []string) (*Tree, error) {
	t := &Tree{Reader: ToolReader(nil), Paths: paths}
	for _, p := range paths {
		fd, err := OpenLayerDir(p)
		if err != nil {
			t.Close()
			return nil, err
		}
		aufs, metaName, meta := Declarations(fd)
		t.Layers = append(t.Layers, Layer{Root: fd, Aufs: aufs})
		t.MetaNames = append(t.MetaNames, metaName)
		t.metas = append(t.metas, meta)
	}
	return t, nil
}

// Close closes the layers.
func (t *Tree) Close() {
	for i, l := range t.Layers {
		unix.Close(l.Root)
		if t.metas[i] >= 0 {
			unix.Close(t.metas[i])
		}
	}
	t.Layers, t.metas = nil, nil
}

// Dirs is a merged directory of a Tree: element i is layer i's part (missing elements have nothing). It owns its
// descriptors, which Close releases.
type Dirs []Dir

// Dir returns layer li's part of d.
func (d Dirs) Dir(li int) Dir {
	if li < len(d) {
		return d[li]
	}
	return NoDir
}

// Empty reports whether no layer has the directory (it may have marker directories).
func (d Dirs) Empty() bool {
	for _, x := range d {
		if x.Fd >= 0 {
			return false
		}
	}
	return true
}

// Close releases d's descriptors.
func (d Dirs) Close() {
	for _, x := range d {
		if x.Fd >= 0 {
			unix.Close(x.Fd)
		}
		if x.Meta >= 0 {
			unix.Close(x.Meta)
		}
	}
}

// Root returns the merged root directory: every layer's root down to the first opaque one.
func (t *Tree) Root() (Dirs, error) {
	d := make(Dirs, len(t.Layers))
	for i := range d {
		d[i] = NoDir
	}
	for i, l := range t.Layers {
		fd, err := sysx.OpenDir(l.Root, "")
		if err != nil {
			d.Close()
			return nil, &LayerError{Path: t.Paths[i], Err: err}
		}
		d[i] = Dir{Fd: fd, Meta: -1, AtRoot: true}
		if t.metas[i] >= 0 {
			d[i].Meta, _ = sysx.OpenDir(t.metas[i], "")
		}
		if i < len(t.Layers)-1 {
			d[i].Opacity, _ = whiteout.DirOpacity(fd, "")
		}
		if d[i].Opacity == whiteout.Opaque {
			break
		}
	}
	return d, nil
}

// Lookup resolves name in d into res (see Reader.Lookup); the caller closes res. A layer that cannot be read is a
// *LayerError.
func (t *Tree) Lookup(d Dirs, name string, res *Result) error {
	return t.layerError(t.Reader.Lookup(d, name, res))
}

// LookupPath resolves the absolute path p as an absolute redirect is followed (see Reader.LookupPath).
func (t *Tree) LookupPath(p string, res *Result) error {
	return t.layerError(t.Reader.LookupPath(p, res))
}

func (t *Tree) layerError(err error) error {
	if e, ok := err.(*Error); ok {
		return &LayerError{Path: t.Paths[e.Layer], Err: fmt.Errorf("%s %s: %w", e.Op, e.Name, e.Err)}
	}
	return err
}

// Open opens the merged directory res resolved name in d to (empty unless res is a directory): the directories
// res found, and the marker directories every layer of d has for name (nil d: none, as under an absolute
// redirect). A directory that cannot be opened (a mount point inside its layer) shows empty, as in the daemon.
func (t *Tree) Open(d Dirs, name string, res *Result) Dirs {
	sub := make(Dirs, len(t.Layers))
	for i := range sub {
		sub[i] = NoDir
	}
	if !res.IsDir() {
		return sub
	}
	for _, o := range res.Found {
		fd, err := sysx.OpenDir(o.Dirfd, o.Name)
		if err != nil {
			fd = -1
		}
		sub[o.Layer].Fd, sub[o.Layer].Opacity = fd, o.Opacity
	}
	for li, x := range d {
		if x.Meta >= 0 {
			if m, err := sysx.OpenDir(x.Meta, name); err == nil {
				sub[li].Meta = m
			}
		}
	}
	return sub
}

// Child returns the merged directory name in d (empty if it is none).
func (t *Tree) Child(d Dirs, name string) (Dirs, error) {
	var res Result
	defer res.Close()
	if err := t.Lookup(d, name, &res); err != nil {
		return nil, err
	}
	return t.Open(d, name, &res), nil
}

// At returns the merged directory at the absolute path p as an absolute redirect reaches it (empty if it is
// none).
func (t *Tree) At(p string) (Dirs, error) {
	var res Result
	defer res.Close()
	if err := t.LookupPath(p, &res); err != nil {
		return nil, err
	}
	return t.Open(nil, "", &res), nil
}

// Names returns every name the merged directory d shows, each once.
func (t *Tree) Names(d Dirs) ([]string, error) {
	var names []string
	err := t.List(d, func(_ int, e *Entry) error {
		names = append(names, e.Name)
		return nil
	})
	return names, t.layerError(err)
}

// Below returns the lower directories that the upper directory called name in d, whose redirect is redirect ("" if
// none), merges with: at the redirect's target (absolute from every layer's root, or a name in d), else at name.
// Redirects Lookup ignores (malformed ones, one to the root) are ignored here too. d is the lower part of the
// upper directory's parent.
func (t *Tree) Below(d Dirs, name, redirect string) (Dirs, error) {
	switch {
	case strings.HasPrefix(redirect, "/"):
		if comps, ok := whiteout.SplitRedirect(redirect); ok && len(comps) > 0 {
			return t.At(redirect)
		}
	case redirect != "" && sysx.CheckName(redirect) == nil:
		return t.Child(d, redirect)
	}
	return t.Child(d, name)
}
