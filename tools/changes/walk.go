package changes

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/stack"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Counter is told how many objects were handled; a progress reporter (package internal/progress) is one.
type Counter interface{ Add(n int) }

// Options says what Diff reads.
type Options struct {
	Upper  string   // the upper layer directory
	Lowers []string // the lower layer directories, topmost first; none to read the upper layer alone

	// Unchanged makes Diff also return the upper directories that only hold changes (Kind Unchanged). Merge needs
	// them to give every directory the times the union shows.
	Unchanged bool
	// Progress, if not nil, counts the upper objects read.
	Progress Counter
	// Warn, if not nil, receives problems that do not stop the walk, such as a mount point inside the upper layer
	// (its content is not part of the layer and is skipped).
	Warn func(error)
}

// Diff walks the upper layer (and the lower layers) and returns its changes sorted by path (see the package
// documentation). A layer directory that cannot be opened or listed is a *stack.LayerError. The upper layer may belong
// to a live union: objects removed while Diff reads are skipped, but changes made meanwhile may be missed or seen
// half done.
func Diff(opt Options) (*Report, error) {
	w, err := newWalker(opt)
	if err != nil {
		return nil, err
	}
	defer w.close()
	if err := w.run(); err != nil {
		return nil, err
	}
	sortChanges(w.out)
	rep := &Report{Upper: opt.Upper, Lowers: opt.Lowers, Changes: w.out}
	if rep.Lowers == nil {
		rep.Lowers = []string{}
	}
	if rep.Changes == nil {
		rep.Changes = []*Change{}
	}
	rep.Format = w.format()
	return rep, nil
}

// format names the marker format the upper layer is written in, as whiteout.Detect decides it (a meta directory,
// aufs markers at the root, overlay markers), but from what the walk saw: Detect lists the root without
// O_NOATIME. Overlay markers count wherever they are.
func (w *walker) format() string {
	switch {
	case w.upper.metaName != "":
		if w.upper.metaName == whiteout.UnionfsLegacyMetaDir {
			return "unionfs-fuse-1.0"
		}
		return whiteout.Unionfs{}.Name()
	case w.upper.aufs:
		return whiteout.Aufs{}.Name()
	case w.overlaySeen:
		return whiteout.Overlay{}.Name()
	}
	if names, err := sysx.ListxattrAll(w.upper.fd, ""); err == nil {
		for _, n := range names {
			if whiteout.IsPrivateXattr(n) {
				return whiteout.Overlay{}.Name()
			}
		}
	}
	return ""
}

// devIno identifies an upper file, to find its hard links.
type devIno struct{ dev, ino uint64 }

type walker struct {
	opt   Options
	upper *upperLayer
	lv    *stack.Tree // the lower layers; nil without them
	out   []*Change
	links map[devIno]string

	overlaySeen bool // an overlay marker (whiteout, opaque, redirect or metacopy) was found
}

// udir is an upper directory being walked.
type udir struct {
	fd        int    // the directory (O_PATH), -1 where only the marker tree has the path
	meta      int    // its unionfs-fuse marker directory, or -1
	path      string // its path in the merged view
	lowerPath string // the path its lower content comes from (another one under a redirect)
	opq       whiteout.Opacity
	lower     stack.Dirs // its lower view (empty when nothing below shows through)
	hidesAll  bool       // it or a parent is opaque: nothing below shows through, even without lower layers to see
}

func (u *udir) close() {
	if u.fd >= 0 {
		unix.Close(u.fd)
	}
	if u.meta >= 0 {
		unix.Close(u.meta)
	}
	u.lower.Close()
}

func newWalker(opt Options) (*walker, error) {
	w := &walker{opt: opt, links: make(map[devIno]string)}
	up, err := openUpper(opt.Upper)
	if err != nil {
		return nil, err
	}
	w.upper = up
	if len(opt.Lowers) > 0 {
		if w.lv, err = stack.OpenTree(opt.Lowers); err != nil {
			w.close()
			return nil, err
		}
	}
	return w, nil
}

func (w *walker) close() {
	w.upper.close()
	if w.lv != nil {
		w.lv.Close()
	}
}

func (w *walker) warn(err error) {
	if w.opt.Warn != nil {
		w.opt.Warn(err)
	}
}

func (w *walker) emit(c *Change) {
	if c.Kind != Unchanged || w.opt.Unchanged {
		w.out = append(w.out, c)
	}
}

// layerErr wraps an error about path in the upper layer.
func (w *walker) layerErr(path string, err error) error {
	return &stack.LayerError{Path: w.upper.path, Err: fmt.Errorf("%s: %w", path, err)}
}

// run walks from the root.
func (w *walker) run() error {
	root := udir{fd: -1, meta: -1, path: "/", lowerPath: "/"}
	defer root.close()
	fd, err := sysx.OpenDir(w.upper.fd, "")
	if err != nil {
		return &stack.LayerError{Path: w.upper.path, Err: err}
	}
	root.fd = fd
	if w.upper.meta >= 0 {
		root.meta, _ = sysx.OpenDir(w.upper.meta, "")
	}
	var st unix.Stat_t
	if err := sysx.Fstatat(fd, "", &st); err != nil {
		return &stack.LayerError{Path: w.upper.path, Err: err}
	}
	c := &Change{Path: "/", Type: "dir", st: st}
	if w.lv != nil {
		s, err := w.lv.Root()
		if err != nil {
			return err
		}
		root.lower = s
		if s[0].Fd >= 0 {
			lo := stack.Object{Dirfd: s[0].Fd}
			if err := sysx.Fstatat(s[0].Fd, "", &lo.Stat); err != nil {
				return &stack.LayerError{Path: w.lv.Paths[0], Err: err}
			}
			md, err := metaDiff(fd, "", &st, &lo)
			if err != nil {
				return w.layerErr("/", err)
			}
			if md = without(md, AttrTimes); len(md) > 0 {
				c.Kind, c.Metadata = Metadata, md
			}
		}
	}
	w.emit(c)
	return w.walkDir(&root)
}

// entry is what a directory of the upper layer says about one name.
type entry struct {
	upper      bool // the upper directory has an object of that name
	whiteout   bool // the upper directory has an overlay whiteout of that name
	aufsHidden bool // an aufs whiteout .wh.NAME
	metaHidden bool // a unionfs-fuse whiteout NAME_HIDDEN~
	metaDir    bool // the marker tree has a directory of that name
}

// walkDir reads the upper directory u and handles every name it holds or whites out.
func (w *walker) walkDir(u *udir) error {
	entries := make(map[string]*entry)
	get := func(name string) *entry {
		e := entries[name]
		if e == nil {
			e = &entry{}
			entries[name] = e
		}
		return e
	}
	if u.fd >= 0 {
		dc := stack.DirContext{Aufs: w.upper.aufs, AtRoot: u.path == "/", Opacity: u.opq}
		err := stack.ReadDir(u.fd, dc, func(e *stack.Entry) error {
			switch e.Kind {
			case stack.Shown:
				get(e.Name).upper = true
			case stack.Whiteout:
				get(e.Name).whiteout = true
			case stack.AufsWhiteout:
				get(e.Hides).aufsHidden = true
			}
			return nil
		})
		if err != nil {
			return w.layerErr(u.path, err)
		}
	}
	if u.meta >= 0 {
		err := stack.ReadMeta(u.meta, func(e *stack.MetaEntry) error {
			switch e.Kind {
			case stack.MetaWhiteout:
				get(e.Hides).metaHidden = true
			case stack.MetaDir:
				get(e.Name).metaDir = true
			}
			return nil
		})
		if err != nil {
			return w.layerErr(u.path, fmt.Errorf("marker directory: %w", err))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		e := entries[name]
		path := joinPath(u.path, name)
		if w.opt.Progress != nil {
			w.opt.Progress.Add(1)
		}
		if e.whiteout {
			w.overlaySeen = true
			if err := w.deleted(u, name, path); err != nil {
				return err
			}
			continue
		}
		if e.upper {
			var st unix.Stat_t
			err := sysx.Fstatat(u.fd, name, &st)
			if errors.Is(err, syscall.ENOENT) {
				continue // removed while we read
			}
			if err != nil {
				return w.layerErr(path, err)
			}
			switch {
			case st.Mode&unix.S_IFMT == unix.S_IFDIR:
				err = w.dir(u, name, path, &st, e.aufsHidden || e.metaHidden)
			default:
				err = w.file(u, name, path, &st)
			}
			if err != nil {
				return err
			}
			continue
		}
		if e.aufsHidden || e.metaHidden {
			if err := w.deleted(u, name, path); err != nil {
				return err
			}
			continue
		}
		if e.metaDir && !u.hidesAll {
			// Whiteouts under a directory the upper layer does not have (unionfs-fuse does not copy the
			// parents of a deleted name up).
			if err := w.virtualDir(u, name, path); err != nil {
				return err
			}
		}
	}
	return nil
}

// deleted handles a whiteout of name in u.
func (w *walker) deleted(u *udir, name, path string) error {
	c := &Change{Path: path, Kind: Deleted}
	if u.hidesAll {
		return nil // an opaque directory hides everything below already
	}
	if w.lv != nil {
		var lo stack.Result
		defer lo.Close()
		if err := w.lv.Lookup(u.lower, name, &lo); err != nil {
			return err
		}
		if !lo.Exists() {
			return nil // a whiteout that hides nothing changes nothing
		}
		c.Type = typeName(lo.Found[0].Stat.Mode)
	}
	w.emit(c)
	return nil
}

// dir handles the upper directory name in u and walks it. beside says whether an aufs or unionfs-fuse whiteout
// of the same name exists, which makes the directory opaque.
func (w *walker) dir(u *udir, name, path string, st *unix.Stat_t, beside bool) error {
	op, err := whiteout.DirOpacity(u.fd, name)
	if err != nil && !errors.Is(err, syscall.EXDEV) {
		return w.layerErr(path, err)
	}
	if op != whiteout.Opaque && beside {
		op = whiteout.Opaque
	}
	from := ""
	if op != whiteout.Opaque {
		from, _ = stack.RedirectPath(u.lowerPath, whiteout.ReadRedirect(u.fd, name))
	}
	if from != "" || op == whiteout.Opaque && !beside && !w.upper.aufs {
		w.overlaySeen = true
	}
	c := &Change{Path: path, Type: "dir", st: *st}
	child := &udir{fd: -1, meta: -1, path: path, lowerPath: joinPath(u.lowerPath, name), opq: op,
		hidesAll: u.hidesAll || op == whiteout.Opaque}
	if from != "" {
		child.lowerPath = from
	}
	defer child.close()
	if w.lv == nil {
		switch {
		case u.hidesAll:
			c.Kind = Added
		case op == whiteout.Opaque:
			c.Kind = Opaque
		case from != "":
			c.Kind, c.From = Renamed, from
		default:
			c.Kind = Changed
		}
	} else {
		var lo stack.Result
		defer lo.Close()
		if err := w.lookupLower(u, name, from, &lo); err != nil {
			return err
		}
		switch {
		case !lo.Exists():
			c.Kind = Added
		case !lo.IsDir():
			c.Kind, c.LowerType = Modified, typeName(lo.Found[0].Stat.Mode)
		case op == whiteout.Opaque:
			c.Kind = Opaque
		default:
			md, err := metaDiff(u.fd, name, st, &lo.Found[0])
			if err != nil {
				return w.layerErr(path, err)
			}
			c.Metadata = without(md, AttrTimes)
			switch {
			case from != "":
				c.Kind, c.From = Renamed, from
			case len(c.Metadata) > 0:
				c.Kind = Metadata
			}
			if from != "" {
				child.lower = w.lv.Open(nil, "", &lo)
			} else {
				child.lower = w.lv.Open(u.lower, name, &lo)
			}
		}
	}
	w.emit(c)
	fd, err := sysx.OpenDir(u.fd, name)
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOTDIR) {
		return nil // removed or replaced while we read (a live upper layer)
	}
	if errors.Is(err, syscall.EXDEV) {
		w.warn(fmt.Errorf("%s: a mount point inside the upper layer %s: its content is skipped", path, w.upper.path))
		return nil
	}
	if err != nil {
		return w.layerErr(path, err)
	}
	child.fd = fd
	if u.meta >= 0 {
		if m, err := sysx.OpenDir(u.meta, name); err == nil {
			child.meta = m
		}
	}
	return w.walkDir(child)
}

// virtualDir walks a directory that only the upper layer's marker tree has.
func (w *walker) virtualDir(u *udir, name, path string) error {
	m, err := sysx.OpenDir(u.meta, name)
	if err != nil {
		return nil // not a directory after all
	}
	child := &udir{fd: -1, meta: m, path: path, lowerPath: joinPath(u.lowerPath, name)}
	defer child.close()
	if w.lv != nil {
		var lo stack.Result
		defer lo.Close()
		if err := w.lv.Lookup(u.lower, name, &lo); err != nil {
			return err
		}
		if !lo.IsDir() {
			return nil // the markers hide nothing
		}
		child.lower = w.lv.Open(u.lower, name, &lo)
	}
	return w.walkDir(child)
}

// file handles the upper non-directory name in u.
func (w *walker) file(u *udir, name, path string, st *unix.Stat_t) error {
	c := &Change{Path: path, Type: typeName(st.Mode), st: *st}
	if st.Nlink > 1 {
		key := devIno{st.Dev, st.Ino}
		if first, ok := w.links[key]; ok {
			c.Link = first
		} else {
			w.links[key] = path
		}
	}
	mc := st.Mode&unix.S_IFMT == unix.S_IFREG && stack.HasMark(u.fd, name, whiteout.MetacopyXattrs)
	w.overlaySeen = w.overlaySeen || mc
	from := ""
	if mc {
		// overlayfs gives a renamed metadata-only copy a redirect to its data.
		from, _ = stack.RedirectPath(u.lowerPath, whiteout.ReadRedirect(u.fd, name))
	}
	if w.lv == nil {
		switch {
		case mc:
			c.Kind, c.Metacopy, c.From = Metadata, true, from
		case u.hidesAll:
			c.Kind = Added
		default:
			c.Kind = Changed
		}
		w.emit(c)
		return nil
	}
	var res stack.Result
	defer res.Close()
	if err := w.lookupLower(u, name, from, &res); err != nil {
		return err
	}
	var lo stack.Object // the lower object, if found
	found := res.Exists()
	if found {
		lo = res.Found[0]
	}
	if res.Data != nil {
		// A lower metadata-only copy: its data is below it.
		lo.Stat.Size = res.Data.Stat.Size
	}
	sameType := found && lo.Stat.Mode&unix.S_IFMT == st.Mode&unix.S_IFMT
	switch {
	case mc && sameType:
		c.Kind, c.Metacopy, c.From = Metadata, true, from
		md, err := metaDiff(u.fd, name, st, &lo)
		if err != nil {
			return w.layerErr(path, err)
		}
		c.Metadata = md
		if len(md) == 0 && from == "" {
			c.Kind = Unchanged
		}
	case mc:
		// The data of a metadata-only copy is gone from the lower layers: the union shows the upper file.
		c.Kind = Modified
		if found {
			c.LowerType = typeName(lo.Stat.Mode)
		}
	case !found:
		c.Kind = Added
	case !sameType:
		c.Kind, c.LowerType = Modified, typeName(lo.Stat.Mode)
	default:
		data := &lo
		if res.Data != nil {
			data = res.Data
		}
		same, err := sameData(u.fd, name, st, data)
		if err != nil {
			return w.layerErr(path, err)
		}
		md, err := metaDiff(u.fd, name, st, &lo)
		if err != nil {
			return w.layerErr(path, err)
		}
		switch {
		case !same:
			c.Kind, c.Metadata = Modified, without(md, AttrTimes)
		case len(md) > 0:
			c.Kind, c.Metadata = Metadata, md
		default:
			c.Kind = Unchanged
		}
	}
	if c.Kind != Unchanged {
		w.emit(c)
	}
	return nil
}

// lookupLower resolves in the lower layers what the upper object name in u stands over: the lower object at the
// absolute path from (a redirect's), or else at name in u's lower view.
func (w *walker) lookupLower(u *udir, name, from string, res *stack.Result) error {
	if from != "" {
		return w.lv.LookupPath(from, res)
	}
	return w.lv.Lookup(u.lower, name, res)
}
