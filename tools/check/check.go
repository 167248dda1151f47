package check

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/inuse"
	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/stack"
	"github.com/ltsp/ltsp-unionfs/tools/layers"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Options tunes a check.
type Options struct {
	// Lowers are the lower layers, topmost first. Without them the checks that need to know what lies below
	// (whiteouts hiding nothing, metadata-only copies without data, redirects leading nowhere) are skipped.
	Lowers []string
	// Repair fixes what can be fixed without changing the merged view (see the package documentation). It is
	// refused with an *inuse.BusyError while a mount uses the upper layer.
	Repair bool
	// Progress, if set, is called with the number of upper objects examined since its last call.
	Progress func(n int)
}

// Check checks the upper layer at upper (see the package documentation). A missing or unreadable layer is a
// *stack.LayerError; an upper in use while Repair is asked for is an *inuse.BusyError. The report lists every problem.
func Check(upper string, opt Options) (*Report, error) {
	rootfd, err := stack.OpenLayerDir(upper)
	if err != nil {
		return nil, err
	}
	defer unix.Close(rootfd)
	if opt.Repair {
		if err := inuse.Refuse(upper); err != nil {
			return nil, err
		}
	}
	c := &checker{opt: opt, root: rootfd, aufs: stack.DeclaresAufs(rootfd), formats: map[string]bool{},
		rep: &Report{Upper: upper, Lowers: opt.Lowers, Problems: []Problem{}, Formats: []string{}}}
	var below *layers.Stack
	if len(opt.Lowers) > 0 {
		if c.lowers, err = layers.OpenLowers(opt.Lowers); err != nil {
			return nil, err
		}
		defer c.lowers.Close()
		below = c.lowers.Root()
		defer below.Close()
	}
	metas := layers.OpenMetas(rootfd)
	for _, m := range metas {
		c.formats[metaFormat(m.Tree)] = true
	}
	if err := c.walk(rootfd, "", below, metas); err != nil {
		return nil, err
	}
	c.rep.Formats = append(c.rep.Formats, slices.Sorted(maps.Keys(c.formats))...) // [] in JSON when none
	if len(c.rep.Formats) > 1 {
		c.rep.Problems = append(c.rep.Problems, Problem{Kind: KindMixedFormats, Path: "/",
			Detail: "markers of several whiteout formats in one upper layer: " + strings.Join(c.rep.Formats, ", "),
			Action: "choose one with ltsp-unionfs convert --to FORMAT"})
	}
	sortProblems(c.rep.Problems)
	return c.rep, nil
}

// metaFormat names the format of a unionfs-fuse meta directory.
func metaFormat(name string) string {
	if name == whiteout.UnionfsLegacyMetaDir {
		return "unionfs-fuse-1.0"
	}
	return "unionfs-fuse"
}

// checker walks one upper layer.
type checker struct {
	opt     Options
	root    int
	aufs    bool // the upper layer declares aufs markers
	lowers  *layers.Lowers
	rep     *Report
	formats map[string]bool
}

// marker is a whiteout found in an upper directory.
type marker struct {
	name   string // the name it hides
	where  string // the marker's own path, for the report
	remove func() error
	chr    bool   // an overlay whiteout: the marker is the name itself
	format string // the format it belongs to
}

func (c *checker) problem(p Problem, repair func() error, action string) (repaired bool) {
	if repair != nil && c.opt.Repair {
		if err := repair(); err != nil {
			p.Action = fmt.Sprintf("repair failed: %v", err)
		} else {
			p.Repaired, p.Action = true, action
		}
	} else if repair == nil && p.Action == "" {
		p.Action = "cannot be repaired safely"
	}
	c.rep.Problems = append(c.rep.Problems, p)
	return p.Repaired
}

func join(dir, name string) string { return dir + "/" + name }

// walk checks the upper directory dirfd (-1 if the upper layer has no directory there but a meta tree does) at
// path, whose lower directories are below (nil without lowers) and whose meta directories are metas. It closes
// dirfd (unless it is the root) and metas.
func (c *checker) walk(dirfd int, dir string, below *layers.Stack, metas []layers.Meta) error {
	defer func() {
		layers.CloseMetas(metas)
		if dirfd >= 0 && dirfd != c.root {
			unix.Close(dirfd)
		}
	}()
	var ents []stack.Entry
	if dirfd >= 0 {
		op, _ := whiteout.DirOpacity(dirfd, "")
		dc := stack.DirContext{Aufs: c.aufs, AtRoot: dirfd == c.root, Opacity: op}
		err := stack.ReadDir(dirfd, dc, func(e *stack.Entry) error {
			ents = append(ents, *e)
			return nil
		})
		if err != nil {
			return &stack.LayerError{Path: join(c.rep.Upper, dir), Err: err}
		}
		if c.opt.Repair {
			defer layers.KeepTimes(dirfd)()
		}
	}
	c.rep.Objects += len(ents)
	if c.opt.Progress != nil {
		c.opt.Progress(len(ents))
	}
	objs := map[string]unix.Stat_t{}
	var names []string
	var markers []marker
	for _, e := range ents {
		name := e.Name
		switch e.Kind {
		case stack.Temp:
			c.problem(Problem{Kind: KindTempObject, Path: join(dir, name),
				Detail: "leftover temporary object of an interrupted copy-up or marker change"},
				func() error { return whiteout.RemoveTree(dirfd, name) }, "removed")
		case stack.Hidden:
			if strings.HasPrefix(name, whiteout.AufsPrefix+whiteout.AufsPrefix) {
				c.formats["aufs"] = true // the opaque marker and aufs's own ".wh..wh.*" entries
			}
		case stack.AufsWhiteout:
			markers = append(markers, marker{name: e.Hides, where: join(dir, name),
				format: "aufs", remove: func() error { return unix.Unlinkat(dirfd, name, 0) }})
		case stack.Whiteout:
			markers = append(markers, marker{name: name, where: join(dir, name), chr: true, format: "overlay",
				remove: func() error { return unix.Unlinkat(dirfd, name, 0) }})
		default:
			var st unix.Stat_t
			if err := sysx.Fstatat(dirfd, name, &st); err != nil {
				return &stack.LayerError{Path: join(c.rep.Upper, join(dir, name)), Err: err}
			}
			objs[name] = st
			names = append(names, name)
		}
	}
	metaSubdirs := map[string]bool{}
	var metaNames []string
	for _, m := range metas {
		mfd := m.Fd
		err := stack.ReadMeta(mfd, func(e *stack.MetaEntry) error {
			c.rep.Objects++
			name := e.Name
			switch e.Kind {
			case stack.MetaWhiteout:
				// unionfs-fuse 1.0 hides a directory with a directory marker.
				markers = append(markers, marker{name: e.Hides, where: "/" + m.Tree + join(dir, name),
					format: metaFormat(m.Tree), remove: func() error { return whiteout.RemoveTree(mfd, name) }})
			case stack.MetaDir:
				if !metaSubdirs[name] {
					metaSubdirs[name] = true
					metaNames = append(metaNames, name)
				}
			default:
				c.problem(Problem{Kind: KindUnknownMeta, Path: "/" + m.Tree + join(dir, name),
					Detail: "an entry of the unionfs-fuse meta tree that is no whiteout marker"}, nil, "")
			}
			return nil
		})
		if err != nil {
			return &stack.LayerError{Path: join(c.rep.Upper, m.Tree+dir), Err: err}
		}
	}
	beside := map[string]bool{} // names with an aufs or unionfs-fuse marker: opaque if they are directories
	hidden := map[string]bool{} // names whited out
	for _, m := range markers {
		st, exists := objs[m.name]
		if !exists {
			hidden[m.name] = true
		}
		removed := false
		switch {
		case exists && st.Mode&unix.S_IFMT == unix.S_IFDIR:
			beside[m.name] = true
		case exists:
			removed = c.problem(Problem{Kind: KindRedundantWhiteout, Path: m.where,
				Detail: "whiteout of " + join(dir, m.name) + ", which the upper layer has as a file anyway"},
				m.remove, "removed")
		case below != nil:
			if _, ok := below.Lookup(m.name); !ok {
				removed = c.problem(Problem{Kind: KindUselessWhiteout, Path: m.where,
					Detail: "whiteout of " + join(dir, m.name) + ", which no lower layer has"}, m.remove, "removed")
			}
		}
		if !removed {
			c.formats[m.format] = true // a repaired marker no longer mixes formats
		}
	}
	for _, name := range names {
		st := objs[name]
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := c.dir(dirfd, dir, name, below, metas, beside[name]); err != nil {
				return err
			}
			delete(metaSubdirs, name)
			continue
		}
		c.nonDir(dirfd, dir, name, &st, below)
	}
	for _, name := range metaNames {
		if !metaSubdirs[name] || hidden[name] {
			// Markers below a whited-out name (unionfs-fuse's rm -r leaves them) are moot, and harmless.
			continue
		}
		child := below.Child(name)
		if below != nil && child.Empty() {
			child.Close()
			var where []string
			for _, m := range metas {
				var st unix.Stat_t
				if sysx.Fstatat(m.Fd, name, &st) == nil {
					where = append(where, "/"+m.Tree+join(dir, name))
				}
			}
			c.problem(Problem{Kind: KindOrphanMeta, Path: where[0],
				Detail: "unionfs-fuse markers below " + join(dir, name) + ", which exists in no layer"},
				func() error {
					for _, m := range metas {
						if err := whiteout.RemoveTree(m.Fd, name); err != nil {
							return err
						}
					}
					return nil
				}, "removed")
			continue
		}
		if below == nil {
			child = nil
		}
		if err := c.walk(-1, join(dir, name), child, layers.SubMetas(metas, name)); err != nil {
			child.Close()
			return err
		}
		child.Close()
	}
	return nil
}

// dir checks the upper directory name in dirfd and descends into it.
func (c *checker) dir(dirfd int, dir, name string, below *layers.Stack, metas []layers.Meta, markerBeside bool) error {
	p := join(dir, name)
	if stack.HasMark(dirfd, name, whiteout.OpaqueXattrs) {
		c.formats["overlay"] = true
	}
	op, _ := whiteout.DirOpacity(dirfd, name)
	opaque := op == whiteout.Opaque || markerBeside
	redirect := whiteout.ReadRedirect(dirfd, name)
	if redirect != "" {
		c.formats["overlay"] = true
	}
	var child *layers.Stack
	switch {
	case below == nil:
		if redirect != "" && !opaque && !whiteout.ValidRedirect(redirect) {
			c.badRedirectForm(p, redirect)
		}
	case opaque || redirect == "":
		// The lower directories at the directory's path, whether it hides them or not: a whiteout of a name
		// they have is not useless in an opaque directory (the union may have made it opaque later).
		child = below.Child(name)
	case !whiteout.ValidRedirect(redirect):
		c.badRedirectForm(p, redirect)
		child = below.Child(name) // what the union does with it
	default:
		child = below.Below(name, redirect)
		if child.Empty() {
			c.problem(Problem{Kind: KindBadRedirect, Path: p,
				Detail: fmt.Sprintf("redirect %q leads to no directory in the lower layers", redirect)},
				func() error {
					// The directory shows only its upper content now: an opaque one shows the same, for
					// overlayfs too.
					if err := sysx.Setxattrat(dirfd, name, whiteout.OverlayOpaqueXattr, []byte("y"), 0); err != nil {
						return err
					}
					return layers.RemoveXattrs(dirfd, name, whiteout.RedirectXattrs)
				}, "made opaque, redirect removed")
		}
	}
	sub, err := sysx.OpenDir(dirfd, name)
	if err != nil {
		child.Close()
		return &stack.LayerError{Path: join(c.rep.Upper, p), Err: err}
	}
	err = c.walk(sub, p, child, layers.SubMetas(metas, name))
	child.Close()
	return err
}

func (c *checker) badRedirectForm(p, redirect string) {
	c.problem(Problem{Kind: KindBadRedirect, Path: p,
		Detail: fmt.Sprintf("redirect %q is neither an absolute path nor a name in the same directory", redirect)},
		nil, "")
}

// nonDir checks the upper non-directory name in dirfd.
func (c *checker) nonDir(dirfd int, dir, name string, st *unix.Stat_t, below *layers.Stack) {
	p := join(dir, name)
	if stack.HasMark(dirfd, name, whiteout.OpaqueXattrs) {
		c.formats["overlay"] = true
		c.problem(Problem{Kind: KindOpaqueNonDir, Path: p, Detail: "opaque marker on a non-directory"},
			func() error { return layers.RemoveXattrs(dirfd, name, whiteout.OpaqueXattrs) }, "opaque xattr removed")
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || !layers.IsMetacopy(dirfd, name) {
		return
	}
	c.formats["overlay"] = true
	if below == nil {
		return
	}
	_, release, ok := layers.MetacopyData(c.lowers, dirfd, name, below)
	release()
	if ok {
		return
	}
	c.problem(Problem{Kind: KindMetacopyNoData, Path: p,
		Detail: "metadata-only copy whose data no lower layer holds any more"}, nil,
		"its data is lost: restore the lower file, or remove or rewrite the upper file")
}
