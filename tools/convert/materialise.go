package convert

import (
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/cow"
	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/tools/layers"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// copyUpMissing copies into the upper directory fd every object its lower stack shows that the upper layer
// neither has nor hides: the directory's content is then all in the upper layer, and it can be made opaque
// and lose its redirect without any change of the merged view. Copied directories are filled the same way when
// the walk reaches them.
func (c *converter) copyUpMissing(fd int, u *upperDir, stack *layers.Stack) error {
	names, err := stack.Names()
	if err != nil {
		return err
	}
	added := false
	for _, name := range names {
		if _, ok := u.objs[name]; ok {
			continue
		}
		if _, ok := u.whiteouts[name]; ok {
			continue
		}
		e, ok := stack.Lookup(name)
		if !ok {
			continue
		}
		if err := c.copyUp(fd, e); err != nil {
			return fmt.Errorf("copying up %s: %w", name, err)
		}
		var st unix.Stat_t
		if err := sysx.Fstatat(fd, name, &st); err != nil {
			return err
		}
		u.objs[name] = st
		u.names = append(u.names, name)
		added = true
	}
	if added {
		sort.Strings(u.names)
	}
	return nil
}

// copyUp copies the lower object e into the upper directory fd under its own name, atomically (package cow).
func (c *converter) copyUp(fd int, e layers.Entry) error {
	s, err := cow.Build(cow.Source{Dirfd: e.Dirfd, Name: e.Name, Stat: e.Stat}, fd,
		cow.Options{Skip: whiteout.IsPrivateXattr})
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.Publish(e.Name); err != nil {
		s.Discard()
		return err
	}
	c.res.CopiedUp++
	return nil
}

// fill replaces the metadata-only copy name in fd (at p) by a complete copy: the data of its lower file, with
// the upper file's own owner, mode, xattrs (the metacopy and redirect marks excepted) and times. The complete
// copy is built unnamed and renamed over the old one, so the name never shows anything else.
func (c *converter) fill(fd int, p, name string, st *unix.Stat_t, stack *layers.Stack) error {
	if stack == nil {
		return &NeedLowersError{Path: "/" + p, Reason: "a metadata-only copy, whose data only the lower layers hold"}
	}
	data, release, ok := layers.MetacopyData(c.lowers, fd, name, stack)
	defer release()
	if !ok {
		return fmt.Errorf("/%s: the data of this metadata-only copy is gone from the lower layers (see ltsp-unionfs check)", p)
	}
	s, err := cow.NewFile(fd, 0)
	if err != nil {
		return err
	}
	defer s.Close()
	err = c.fillStaged(s, fd, name, st, data)
	if err == nil {
		err = s.Named()
	}
	if err == nil {
		err = unix.Renameat2(fd, s.Tmp, fd, name, 0)
	}
	if err != nil {
		s.Discard()
		return fmt.Errorf("/%s: %w", p, err)
	}
	s.Published()
	c.res.Filled++
	return nil
}

// fillStaged gives the staged file s the data of the lower file data and the metadata of the upper file name in
// fd, in package cow's order: data, owner, xattrs, mode, times.
func (c *converter) fillStaged(s *cow.Staged, fd int, name string, st *unix.Stat_t, data layers.Entry) error {
	if err := cow.CopyData(cow.Source{Dirfd: data.Dirfd, Name: data.Name, Stat: data.Stat}, s.Fd); err != nil {
		return err
	}
	if err := unix.Ftruncate(s.Fd, st.Size); err != nil {
		return err
	}
	if err := s.Chown(int(st.Uid), int(st.Gid)); err != nil {
		return err
	}
	attrs, err := sysx.ListxattrAll(fd, name)
	if err != nil && !isUnsupported(err) {
		return err
	}
	skip := append(append([]string{}, whiteout.MetacopyXattrs...), whiteout.RedirectXattrs...)
	for _, a := range attrs {
		if contains(skip, a) {
			continue
		}
		v, err := sysx.GetxattrAll(fd, name, a)
		if err != nil {
			return err
		}
		if err := s.Setxattr(a, v); err != nil {
			return fmt.Errorf("setting %s: %w", a, err)
		}
	}
	if err := s.Chmod(st.Mode & 07777); err != nil {
		return err
	}
	return s.Utimes(st.Atim, st.Mtim)
}

func contains(list []string, s string) bool {
	for _, l := range list {
		if l == s {
			return true
		}
	}
	return false
}

func isUnsupported(err error) bool {
	return err == unix.ENOTSUP || err == unix.ENOSYS
}

// needsLowers walks the upper directory fd at p before anything is changed and returns a *NeedLowersError for
// the first object the target format cannot express without the lower layers: a redirect, a metadata-only copy,
// or unionfs-fuse whiteouts below a directory the upper layer does not have.
func (c *converter) needsLowers(fd int, p string, metas []layers.Meta) error {
	u, err := c.readQuiet(fd, metas)
	if err != nil {
		return fmt.Errorf("/%s: %w", p, err)
	}
	for _, name := range u.names {
		st := u.objs[name]
		cp := joinPath(p, name)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			if c.to.Name() != "overlay" && layers.IsMetacopy(fd, name) {
				return &NeedLowersError{Path: "/" + cp, Reason: "a metadata-only copy, whose data only the lower layers hold"}
			}
		case unix.S_IFDIR:
			op, _ := whiteout.DirOpacity(fd, name)
			opaque := op == whiteout.Opaque || len(u.whiteouts[name]) > 0
			if r := whiteout.ReadRedirect(fd, name); r != "" && !opaque && !c.to.Redirects() {
				return &NeedLowersError{Path: "/" + cp,
					Reason: fmt.Sprintf("a redirect (to %q), which %s cannot express", r, c.to.Name())}
			}
			sub, err := sysx.OpenDir(fd, name)
			if err != nil {
				return fmt.Errorf("/%s: %w", cp, err)
			}
			sm := layers.SubMetas(metas, name)
			err = c.needsLowers(sub, cp, sm)
			layers.CloseMetas(sm)
			unix.Close(sub)
			if err != nil {
				return err
			}
		}
	}
	if c.meta != "" {
		return nil
	}
	for _, name := range u.metaDirs {
		if st, ok := u.objs[name]; ok && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			continue
		}
		if hasMarkers(metas, name) {
			return &NeedLowersError{Path: "/" + joinPath(p, name),
				Reason: "unionfs-fuse whiteouts below a directory the upper layer does not have"}
		}
	}
	return nil
}

// readQuiet is read without counting or reporting progress.
func (c *converter) readQuiet(fd int, metas []layers.Meta) (*upperDir, error) {
	saved, progress := c.res.Objects, c.opt.Progress
	c.opt.Progress = nil
	defer func() { c.res.Objects, c.opt.Progress = saved, progress }()
	return c.read(fd, metas)
}

// hasMarkers reports whether the meta subtrees called name in metas hold any marker.
func hasMarkers(metas []layers.Meta, name string) bool {
	for _, m := range metas {
		fd, err := sysx.OpenDir(m.Fd, name)
		if err != nil {
			continue
		}
		found := treeHasFile(fd)
		unix.Close(fd)
		if found {
			return true
		}
	}
	return false
}

func treeHasFile(fd int) bool {
	ents, err := layers.ReadDir(fd)
	if err != nil {
		return true // unreadable: assume the worst
	}
	for _, e := range ents {
		var st unix.Stat_t
		if sysx.Fstatat(fd, e.Name, &st) != nil {
			continue
		}
		if strings.HasSuffix(e.Name, whiteout.UnionfsHiddenSuffix) {
			return true
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			continue
		}
		sub, err := sysx.OpenDir(fd, e.Name)
		if err != nil {
			continue
		}
		found := treeHasFile(sub)
		unix.Close(sub)
		if found {
			return true
		}
	}
	return false
}

// dropWhiteouts removes the whiteouts (of every format) in the upper directory name of parent (at p) and below
// it, keeping the markers beside upper directories (their opacity). It runs on a materialised directory once it
// is opaque: every directory below it is opaque too and holds all its content, so its whiteouts hide nothing.
func (c *converter) dropWhiteouts(parent int, p, name string) error {
	fd, err := sysx.OpenDir(parent, name)
	if err != nil {
		return fmt.Errorf("/%s: %w", p, err)
	}
	defer unix.Close(fd)
	defer layers.KeepTimes(fd)()
	metas := metasAt(c.root, p)
	defer layers.CloseMetas(metas)
	u, err := c.readQuiet(fd, metas)
	if err != nil {
		return fmt.Errorf("/%s: %w", p, err)
	}
	for hidden, srcs := range u.whiteouts {
		if _, ok := u.objs[hidden]; ok {
			continue
		}
		for _, s := range srcs {
			if err := s.remove(); err != nil {
				return fmt.Errorf("/%s: %w", joinPath(p, hidden), err)
			}
			c.res.Removed++
		}
	}
	for _, n := range u.names {
		if st := u.objs[n]; st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := c.dropWhiteouts(fd, joinPath(p, n), n); err != nil {
				return err
			}
		}
	}
	return nil
}

// metasAt opens the meta directories of every unionfs-fuse meta tree at the relative path p.
func metasAt(root int, p string) []layers.Meta {
	metas := layers.OpenMetas(root)
	if p == "" {
		return metas
	}
	for _, comp := range strings.Split(p, "/") {
		next := layers.SubMetas(metas, comp)
		layers.CloseMetas(metas)
		metas = next
	}
	return metas
}
