package convert

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/inuse"
	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/stack"
	"github.com/ltsp/ltsp-unionfs/tools/layers"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Options tunes a conversion.
type Options struct {
	// To is the format to write: a name of whiteout.Formats.
	To string
	// Lowers are the lower layers, topmost first. They are needed only where the target format cannot express
	// what the upper holds (see the package documentation); without them such an upper is refused unchanged.
	Lowers []string
	// Progress, if set, is called with the number of upper objects examined since its last call.
	Progress func(n int)
}

// Result counts what a conversion did.
type Result struct {
	Objects      int // upper objects examined
	Markers      int // whiteouts and opaque markers written in the target format
	Removed      int // markers of other formats removed
	Materialised int // redirected directories whose lower content was copied up
	CopiedUp     int // lower objects copied into the upper layer
	Filled       int // metadata-only copies given their data
}

// NeedLowersError refuses a conversion that needs the lower layers when none were given. Nothing was changed.
type NeedLowersError struct {
	Path   string // the first object that needs them, from the upper's root
	Reason string
}

func (e *NeedLowersError) Error() string {
	return fmt.Sprintf("%s: %s; give the lower layers (--lower) to copy what it needs up, or keep the format", e.Path,
		e.Reason)
}

// Convert rewrites the markers of the upper layer at upper in the format opt.To (see the package
// documentation). A missing or unreadable layer is a *stack.LayerError, an upper a mount uses a
// *inuse.BusyError, an upper that needs lowers that were not given a *NeedLowersError.
func Convert(upper string, opt Options) (*Result, error) {
	f, err := whiteout.ByName(opt.To)
	if err != nil {
		return nil, err
	}
	rootfd, err := stack.OpenLayerDir(upper)
	if err != nil {
		return nil, err
	}
	defer unix.Close(rootfd)
	// aufs markers count where the upper declares aufs, before the conversion or, for an aufs target, after it.
	aufs := stack.DeclaresAufs(rootfd) || f.Name() == whiteout.Aufs{}.Name()
	if err := inuse.Refuse(upper); err != nil {
		return nil, err
	}
	c := &converter{opt: opt, to: f, root: rootfd, aufs: aufs, res: &Result{}, meta: f.MarkerTree()}
	metas := layers.OpenMetas(rootfd)
	var stack *layers.Stack
	if len(opt.Lowers) > 0 {
		if c.lowers, err = layers.OpenLowers(opt.Lowers); err != nil {
			layers.CloseMetas(metas)
			return nil, err
		}
		defer c.lowers.Close()
		stack = c.lowers.Root()
		defer stack.Close()
	} else if err := c.needsLowers(rootfd, "", metas); err != nil {
		layers.CloseMetas(metas)
		return nil, err
	}
	if err := c.declare(); err != nil {
		layers.CloseMetas(metas)
		return nil, err
	}
	if err := c.dir(rootfd, "", stack, metas, false, false); err != nil {
		return c.res, err
	}
	return c.res, c.finish()
}

// converter rewrites one upper layer.
type converter struct {
	opt    Options
	to     whiteout.Format
	meta   string // the target's meta directory (unionfs-fuse formats), else ""
	root   int
	aufs   bool // aufs markers count in the upper (see Convert)
	lowers *layers.Lowers
	res    *Result
}

// declare makes the upper declare the target format at its root before any marker is written (see
// whiteout.Format.Declare).
func (c *converter) declare() error {
	defer layers.KeepTimes(c.root)()
	if err := c.to.Declare(c.root); err != nil {
		return fmt.Errorf("declaring the %s format at the upper's root: %w", c.to.Name(), err)
	}
	return nil
}

// finish removes what declared the other formats once no marker of theirs is left: the other meta trees (only
// empty directories remain in them) and aufs's root entries.
func (c *converter) finish() error {
	defer layers.KeepTimes(c.root)()
	for _, name := range []string{whiteout.UnionfsMetaDir, whiteout.UnionfsLegacyMetaDir} {
		if name != c.meta {
			if err := whiteout.RemoveTree(c.root, name); err != nil {
				return fmt.Errorf("removing %s: %w", name, err)
			}
		}
	}
	if c.to.Name() == "aufs" {
		return nil
	}
	ents, err := layers.ReadDir(c.root)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if whiteout.IsMarkerName(e.Name) && !whiteout.IsTempName(e.Name) {
			if err := whiteout.RemoveTree(c.root, e.Name); err != nil {
				return fmt.Errorf("removing %s: %w", e.Name, err)
			}
			c.res.Removed++
		}
	}
	return nil
}

// source is one marker of a format other than the target (or of the target itself: native).
type source struct {
	native bool
	remove func() error
}

// upperDir is what one upper directory holds.
type upperDir struct {
	objs      map[string]unix.Stat_t // objects (markers and temporary objects excluded)
	names     []string               // their names, sorted
	whiteouts map[string][]source    // markers by the name they hide
	metaDirs  []string               // subdirectories of the meta trees, sorted, each once
}

// read classifies the entries of the upper directory fd (-1: none) and its meta directories.
func (c *converter) read(fd int, metas []layers.Meta) (*upperDir, error) {
	u := &upperDir{objs: map[string]unix.Stat_t{}, whiteouts: map[string][]source{}}
	if fd >= 0 {
		op, _ := whiteout.DirOpacity(fd, "")
		dc := stack.DirContext{Aufs: c.aufs, AtRoot: fd == c.root, Opacity: op}
		n := 0
		err := stack.ReadDir(fd, dc, func(e *stack.Entry) error {
			n++
			name := e.Name
			switch e.Kind {
			case stack.AufsWhiteout:
				u.whiteouts[e.Hides] = append(u.whiteouts[e.Hides], source{native: c.to.Name() == "aufs",
					remove: func() error { return unix.Unlinkat(fd, name, 0) }})
			case stack.Whiteout:
				u.whiteouts[name] = append(u.whiteouts[name], source{native: c.to.Name() == "overlay",
					remove: func() error { return unix.Unlinkat(fd, name, 0) }})
			case stack.Shown:
				var st unix.Stat_t
				if err := sysx.Fstatat(fd, name, &st); err != nil {
					return err
				}
				u.objs[name] = st
				u.names = append(u.names, name)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		c.res.Objects += n
		if c.opt.Progress != nil {
			c.opt.Progress(n)
		}
	}
	seen := map[string]bool{}
	for _, m := range metas {
		mfd := m.Fd
		err := stack.ReadMeta(mfd, func(e *stack.MetaEntry) error {
			name := e.Name
			switch {
			case e.Kind == stack.MetaWhiteout:
				// A file, or for a directory (unionfs-fuse 1.0) a directory.
				u.whiteouts[e.Hides] = append(u.whiteouts[e.Hides], source{native: m.Tree == c.meta,
					remove: func() error { return whiteout.RemoveTree(mfd, name) }})
			case e.Kind == stack.MetaDir && !seen[name]:
				seen[name] = true
				u.metaDirs = append(u.metaDirs, name)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	sort.Strings(u.names)
	sort.Strings(u.metaDirs)
	return u, nil
}

// removeForeign removes the markers in srcs that are not of the target format.
func (c *converter) removeForeign(srcs []source) error {
	for _, s := range srcs {
		if s.native {
			continue
		}
		if err := s.remove(); err != nil && !errors.Is(err, syscall.ENOENT) {
			return err
		}
		c.res.Removed++
	}
	return nil
}

func hasNative(srcs []source) bool {
	for _, s := range srcs {
		if s.native {
			return true
		}
	}
	return false
}

func joinPath(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// dir converts the upper directory fd (-1 if only meta trees have it) at path p (relative, "" for the root),
// whose lower directories are stack (nil without lowers) and meta directories metas. With materialise, the
// directory takes its lower content from a redirect that the target format cannot express: that content is
// copied up first. In an opaque directory whiteouts hide nothing and are dropped (kernel overlayfs lists those of
// a lower layer's opaque directory). It closes fd (unless it is the root) and metas.
func (c *converter) dir(fd int, p string, stack *layers.Stack, metas []layers.Meta, materialise, opaque bool) error {
	defer func() {
		layers.CloseMetas(metas)
		if fd >= 0 && fd != c.root {
			unix.Close(fd)
		}
	}()
	fail := func(err error) error { return fmt.Errorf("/%s: %w", p, err) }
	if fd >= 0 {
		defer layers.KeepTimes(fd)()
	}
	u, err := c.read(fd, metas)
	if err != nil {
		return fail(err)
	}
	if materialise {
		if err := c.copyUpMissing(fd, u, stack); err != nil {
			return fail(err)
		}
	}
	d := whiteout.Dir{Fd: fd, Path: p, Root: c.root}
	// Whiteouts of names the upper layer does not have: write the target's marker, then drop the others.
	for _, name := range slices.Sorted(maps.Keys(u.whiteouts)) {
		srcs := u.whiteouts[name]
		if _, ok := u.objs[name]; ok {
			continue // beside an upper object: an opaque marker (directories) or redundant; see below
		}
		if opaque {
			for _, s := range srcs {
				if err := s.remove(); err != nil {
					return fail(err)
				}
				c.res.Removed++
			}
			continue
		}
		if !hasNative(srcs) {
			if fd < 0 && c.meta == "" {
				return fail(fmt.Errorf("no upper directory for the whiteout of %s", name))
			}
			if _, err := c.to.Hide(d, name, whiteout.TempName()); err != nil {
				return fail(fmt.Errorf("whiteout of %s: %w", name, err))
			}
			c.res.Markers++
		}
		if err := c.removeForeign(srcs); err != nil {
			return fail(err)
		}
	}
	for _, name := range u.names {
		st := u.objs[name]
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := c.nonDir(fd, p, name, &st, stack, u.whiteouts[name]); err != nil {
				return fail(err)
			}
			continue
		}
		if err := c.child(d, name, stack, metas, u.whiteouts[name], materialise); err != nil {
			return err
		}
	}
	for _, name := range u.metaDirs {
		if st, ok := u.objs[name]; ok && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			continue
		}
		if len(u.whiteouts[name]) > 0 {
			// Below a whited-out name (unionfs-fuse's rm -r leaves these): the markers are moot.
			if err := c.removeForeignMeta(metas, name); err != nil {
				return fail(err)
			}
			continue
		}
		if err := c.metaOnly(d, name, stack, metas); err != nil {
			return err
		}
	}
	return nil
}

// nonDir converts the upper non-directory name in fd: a metadata-only copy gets its data unless the target is
// overlay; a marker of a format beside it is redundant and goes.
func (c *converter) nonDir(fd int, p, name string, st *unix.Stat_t, stack *layers.Stack, beside []source) error {
	if err := c.removeForeign(beside); err != nil {
		return err
	}
	if c.to.Name() == "overlay" || st.Mode&unix.S_IFMT != unix.S_IFREG || !layers.IsMetacopy(fd, name) {
		return nil
	}
	return c.fill(fd, joinPath(p, name), name, st, stack)
}

// child converts the upper directory name in d and its opacity.
func (c *converter) child(d whiteout.Dir, name string, stack *layers.Stack, metas []layers.Meta, beside []source,
	materialise bool) error {
	p := joinPath(d.Path, name)
	op, _ := whiteout.DirOpacity(d.Fd, name)
	opaque := op == whiteout.Opaque || len(beside) > 0
	redirect := ""
	if !opaque {
		redirect = whiteout.ReadRedirect(d.Fd, name)
	}
	valid := redirect != "" && whiteout.ValidRedirect(redirect)
	own := valid && !c.to.Redirects()
	var sub *layers.Stack
	switch {
	case stack == nil:
	case opaque:
		sub = &layers.Stack{}
	default:
		sub = stack.Below(name, redirect)
	}
	defer sub.Close()
	if (materialise || own) && stack == nil {
		return &NeedLowersError{Path: "/" + p, Reason: fmt.Sprintf("a redirect (to %q), which %s cannot express",
			redirect, c.to.Name())}
	}
	fd, err := sysx.OpenDir(d.Fd, name)
	if err != nil {
		return fmt.Errorf("/%s: %w", p, err)
	}
	if err := c.dir(fd, p, sub, layers.SubMetas(metas, name), materialise || own, opaque); err != nil {
		return err
	}
	if err := c.setOpacity(d, name, opaque || materialise || own, own, beside); err != nil {
		return err
	}
	if own && !materialise {
		c.res.Materialised++
		return c.dropWhiteouts(d.Fd, p, name)
	}
	return nil
}

// setOpacity gives the upper directory name in d the target's opaque marker if want, then removes the markers
// of other formats and, with dropRedirect, its redirect (its content is all in the upper layer now).
func (c *converter) setOpacity(d whiteout.Dir, name string, want, dropRedirect bool, beside []source) error {
	p := joinPath(d.Path, name)
	fail := func(err error) error { return fmt.Errorf("/%s: %w", p, err) }
	sub, err := sysx.OpenDir(d.Fd, name)
	if err != nil {
		return fail(err)
	}
	defer unix.Close(sub)
	defer layers.KeepTimes(sub)() // aufs's marker lives inside the directory
	if want && !c.nativeOpaque(d, name, sub, beside) {
		if err := c.to.MarkOpaque(d, name, d, name); err != nil {
			return fail(fmt.Errorf("marking opaque: %w", err))
		}
		c.res.Markers++
	}
	if c.to.Name() != "overlay" && stack.HasMark(d.Fd, name, whiteout.OpaqueXattrs) {
		if err := layers.RemoveXattrs(d.Fd, name, whiteout.OpaqueXattrs); err != nil {
			return fail(err)
		}
		c.res.Removed++
	}
	if c.to.Name() != "aufs" {
		if err := unix.Unlinkat(sub, whiteout.AufsOpaque, 0); err == nil {
			c.res.Removed++
		} else if !errors.Is(err, syscall.ENOENT) {
			return fail(err)
		}
	}
	if err := c.removeForeign(beside); err != nil {
		return fail(err)
	}
	if dropRedirect {
		if err := layers.RemoveXattrs(d.Fd, name, whiteout.RedirectXattrs); err != nil {
			return fail(err)
		}
	}
	return nil
}

// nativeOpaque reports whether the upper directory name in d carries the target format's opaque marker.
func (c *converter) nativeOpaque(d whiteout.Dir, name string, sub int, beside []source) bool {
	switch {
	case c.to.Name() == "overlay":
		v, err := sysx.GetxattrAll(d.Fd, name, whiteout.OverlayOpaqueXattr)
		return err == nil && string(v) == "y"
	case c.to.Name() == "aufs":
		var st unix.Stat_t
		return sysx.Fstatat(sub, whiteout.AufsOpaque, &st) == nil
	}
	return hasNative(beside)
}

// removeForeignMeta removes the subtrees called name of the meta trees of formats other than the target.
func (c *converter) removeForeignMeta(metas []layers.Meta, name string) error {
	for _, m := range metas {
		if m.Tree != c.meta {
			if err := whiteout.RemoveTree(m.Fd, name); err != nil {
				return err
			}
		}
	}
	return nil
}

// metaOnly converts the markers below the directory name of d that only the meta trees have: the upper layer
// has no such directory. The unionfs-fuse formats need none; the others get a copy of the lower directory to
// hold their markers, or, if no lower layer has it, the markers hide nothing and go.
func (c *converter) metaOnly(d whiteout.Dir, name string, stack *layers.Stack, metas []layers.Meta) error {
	p := joinPath(d.Path, name)
	var sub *layers.Stack
	if stack != nil {
		sub = stack.Child(name)
		defer sub.Close()
	}
	if c.meta != "" {
		return c.dir(-1, p, sub, layers.SubMetas(metas, name), false, false)
	}
	if !hasMarkers(metas, name) {
		return nil // empty meta directories: finish removes them
	}
	if stack == nil {
		return &NeedLowersError{Path: "/" + p, Reason: "unionfs-fuse whiteouts below a directory the upper layer does not have"}
	}
	e, ok := stack.Lookup(name)
	if !ok || !e.IsDir() {
		for _, m := range metas {
			if err := whiteout.RemoveTree(m.Fd, name); err != nil {
				return fmt.Errorf("/%s: %w", p, err)
			}
		}
		return nil
	}
	if err := c.copyUp(d.Fd, e); err != nil {
		return fmt.Errorf("/%s: copying the directory up: %w", p, err)
	}
	fd, err := sysx.OpenDir(d.Fd, name)
	if err != nil {
		return fmt.Errorf("/%s: %w", p, err)
	}
	return c.dir(fd, p, sub, layers.SubMetas(metas, name), false, false)
}
