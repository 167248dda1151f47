package changes

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/cow"
	"github.com/ltsp/ltsp-unionfs/internal/inuse"
	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/stack"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// MergeOptions says what Merge does.
type MergeOptions struct {
	Upper string // the upper layer whose changes are applied
	Into  string // a writable copy of the lower layers, changed in place

	// DryRun makes Merge only report what it would do (through Log) and change nothing.
	DryRun bool
	// Log, if not nil, receives one line per action, e.g. "delete /etc/hostname", as it is done.
	Log func(line string)
	// Progress, if not nil, counts the objects read and the changes applied.
	Progress Counter
	// Warn, if not nil, receives problems that do not stop the merge.
	Warn func(error)
}

// MergeStats counts what Merge did (or would do).
type MergeStats struct {
	Copied   int   // objects copied from the upper layer, hard links included
	Bytes    int64 // bytes of regular files copied
	Deleted  int   // objects deleted, for whiteouts and by opaque directories
	Moved    int   // renamed directories and renamed metadata-only copies moved into place
	Metadata int   // objects whose metadata only was changed
}

// Merge applies the changes of the upper layer opt.Upper to the directory opt.Into, which holds a writable copy
// of the lower layers (e.g. made with cp -a), so that opt.Into then holds what the union of the lower layers and
// the upper layer showed:
//
//   - whiteouts delete the objects they hide;
//   - an opaque directory removes the entries of its directory that the upper layer does not have;
//   - a renamed directory (overlay redirect) moves the directory from its old path, and the content the upper
//     layer has for it is applied inside; a renamed metadata-only copy moves its data file likewise;
//   - a metadata-only change (an overlay metacopy, or a copy whose data equals the lower file's) sets the mode,
//     owner, times and xattrs of the existing object and keeps its data; a file with several hard links in
//     opt.Into is first copied, so that its other names keep their metadata, as in the union;
//   - added and modified objects are copied with package cow: data with holes, owner, mode with setuid and setgid,
//     times, and xattrs except the union's private ones (trusted.overlay.*, user.overlay.*); files that are hard
//     links of each other in the upper layer are hard links of each other in opt.Into;
//   - every directory the upper layer has gets the upper directory's times at the end; other directories
//     Merge changes keep theirs.
//
// Changes are applied in path order, after moving renamed sources aside (under temporary marker names in the
// root of opt.Into), so that no later step reads what an earlier one removed. Each object is replaced by one
// rename or link, but the merge as a whole is not atomic: after a failure opt.Into is partly merged. An upper layer
// a union uses is refused with an *inuse.BusyError before anything is read.
func Merge(opt MergeOptions) (*MergeStats, error) {
	if err := inuse.Refuse(opt.Upper); err != nil {
		return nil, err
	}
	rep, err := Diff(Options{Upper: opt.Upper, Lowers: []string{opt.Into}, Unchanged: true,
		Progress: opt.Progress, Warn: opt.Warn})
	if err != nil {
		return nil, err
	}
	m := &merger{opt: opt, stats: &MergeStats{}, upperDirs: make(map[string]*Change),
		touched: make(map[string][2]unix.Timespec), extracted: make(map[string]string),
		linked: make(map[devIno]string)}
	if m.upfd, err = unix.Open(opt.Upper, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
		return nil, &stack.LayerError{Path: opt.Upper, Err: err}
	}
	defer unix.Close(m.upfd)
	if m.dirfd, err = unix.Open(opt.Into, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err != nil {
		return nil, &stack.LayerError{Path: opt.Into, Err: err}
	}
	defer unix.Close(m.dirfd)
	defer m.closeAll()
	for _, c := range rep.Changes {
		if c.Type == "dir" && c.Kind != Deleted {
			m.upperDirs[c.Path] = c
		}
	}
	if err := m.extract(rep.Changes); err != nil {
		return m.stats, err
	}
	for _, c := range rep.Changes {
		err := m.apply(c)
		m.endChange()
		if err != nil {
			return m.stats, fmt.Errorf("%s: %w", c.Path, err)
		}
		if opt.Progress != nil {
			opt.Progress.Add(1)
		}
	}
	return m.stats, m.finish()
}

type merger struct {
	opt       MergeOptions
	stats     *MergeStats
	upfd      int                         // the upper layer's root
	dirfd     int                         // opt.Into's root
	upperDirs map[string]*Change          // the directories of the upper layer, by path
	touched   map[string][2]unix.Timespec // directories of opt.Into not in the upper layer that were changed: their times
	extracted map[string]string           // change path -> temporary name of its moved-aside source in opt.Into's root
	linked    map[devIno]string           // upper files with several links -> the path of their first copy
	cache     [2]map[string]int           // directories opened in the upper layer [0] and in opt.Into [1], by path
	retired   []int                       // cached descriptors no longer reused, closed by endChange
}

func (m *merger) log(format string, args ...any) {
	if m.opt.Log != nil {
		m.opt.Log(fmt.Sprintf(format, args...))
	}
}

// split returns the parent path and the name of an absolute path.
func split(p string) (string, string) {
	i := strings.LastIndexByte(p, '/')
	if i == 0 {
		return "/", p[1:]
	}
	return p[:i], p[i+1:]
}

// openDir opens the directory at path below root (side 0: the upper layer, 1: opt.Into), never following a
// symlink. The descriptor belongs to the merger's cache and stays valid until endChange: callers do not close it.
func (m *merger) openDir(side int, path string) (int, error) {
	if fd, ok := m.cache[side][path]; ok {
		return fd, nil
	}
	root := m.upfd
	if side == 1 {
		root = m.dirfd
	}
	fd, err := sysx.OpenDir(root, "")
	if err != nil {
		return -1, err
	}
	comps, _ := sysx.SplitNames(path)
	for _, comp := range comps {
		next, err := sysx.OpenDir(fd, comp)
		unix.Close(fd)
		if err != nil {
			return -1, fmt.Errorf("opening %s: %w", path, err)
		}
		fd = next
	}
	if m.cache[side] == nil || len(m.cache[side]) >= 64 {
		m.retire(side)
		m.cache[side] = make(map[string]int)
	}
	m.cache[side][path] = fd
	return fd, nil
}

// retire stops reusing the cached directories of one side; they are closed at the end of the change.
func (m *merger) retire(side int) {
	for _, fd := range m.cache[side] {
		m.retired = append(m.retired, fd)
	}
	m.cache[side] = nil
}

// dropCache stops reusing the cached directories of opt.Into, after its tree changed shape.
func (m *merger) dropCache() { m.retire(1) }

// endChange closes the descriptors retired while a change was applied.
func (m *merger) endChange() {
	for _, fd := range m.retired {
		unix.Close(fd)
	}
	m.retired = nil
}

// closeAll closes every descriptor the merger opened.
func (m *merger) closeAll() {
	m.retire(0)
	m.retire(1)
	m.endChange()
}

// touch records the times of the directory path of opt.Into before the merge changes its entries, unless the
// upper layer has it (it gets the upper directory's times at the end).
func (m *merger) touch(path string, fd int) {
	if _, ok := m.upperDirs[path]; ok {
		return
	}
	if _, ok := m.touched[path]; ok {
		return
	}
	var st unix.Stat_t
	if sysx.Fstatat(fd, "", &st) == nil {
		m.touched[path] = [2]unix.Timespec{st.Atim, st.Mtim}
	}
}

// extract moves the lower sources of renamed directories and renamed metadata-only copies aside, deepest first,
// before anything else changes opt.Into.
func (m *merger) extract(cs []*Change) error {
	var srcs []*Change
	for _, c := range cs {
		if c.Kind == Renamed || c.Kind == Metadata && c.Metacopy && c.From != "" {
			srcs = append(srcs, c)
		}
	}
	sort.SliceStable(srcs, func(i, j int) bool {
		return strings.Count(srcs[i].From, "/") > strings.Count(srcs[j].From, "/")
	})
	used := make(map[string]string)
	for _, c := range srcs {
		if other, ok := used[c.From]; ok {
			return fmt.Errorf("%s and %s both take their lower content from %s", other, c.Path, c.From)
		}
		used[c.From] = c.Path
		m.log("move %s -> %s", c.From, c.Path)
		m.stats.Moved++
		if m.opt.DryRun {
			continue
		}
		parent, name := split(c.From)
		pfd, err := m.openDir(1, parent)
		if err != nil {
			return fmt.Errorf("%s: %w", c.From, err)
		}
		m.touch(parent, pfd)
		tmp := whiteout.TempName()
		if err := unix.Renameat2(pfd, name, m.dirfd, tmp, unix.RENAME_NOREPLACE); err != nil {
			return fmt.Errorf("moving %s aside: %w", c.From, err)
		}
		m.dropCache()
		m.endChange()
		m.extracted[c.Path] = tmp
	}
	return nil
}

// apply applies one change.
func (m *merger) apply(c *Change) error {
	switch c.Kind {
	case Unchanged, Changed:
		return nil
	case Deleted:
		m.log("delete %s", c.Path)
		m.stats.Deleted++
		if m.opt.DryRun {
			return nil
		}
		parent, name := split(c.Path)
		pfd, err := m.openDir(1, parent)
		if err != nil {
			if errors.Is(err, syscall.ENOENT) {
				return nil
			}
			return err
		}
		m.touch(parent, pfd)
		m.dropCache()
		return whiteout.RemoveTree(pfd, name)
	case Opaque:
		return m.opaque(c)
	case Renamed:
		return m.moveIn(c)
	case Metadata:
		if c.Metacopy && c.From != "" {
			return m.moveIn(c)
		}
		return m.metadata(c)
	case Added, Modified:
		return m.copyIn(c)
	}
	return fmt.Errorf("unknown change kind %v", c.Kind)
}

// opaque empties the directory of opt.Into at c.Path of everything the upper layer's opaque directory does not
// have (what it has is copied by the changes inside it), and gives it the upper directory's metadata.
func (m *merger) opaque(c *Change) error {
	parent, name := split(c.Path)
	var dst unix.Stat_t
	pfd, err := m.openDir(1, parent)
	if err == nil {
		err = sysx.Fstatat(pfd, name, &dst)
	}
	if err != nil || dst.Mode&unix.S_IFMT != unix.S_IFDIR {
		return m.copyIn(c)
	}
	keep := make(map[string]bool)
	ufd, err := m.openDir(0, c.Path)
	if err != nil {
		return err
	}
	err = stack.ReadDir(ufd, stack.DirContext{AtRoot: c.Path == "/"}, func(e *stack.Entry) error {
		if e.Kind == stack.Shown {
			keep[e.Name] = true
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("upper layer: %w", err)
	}
	dfd, err := m.openDir(1, c.Path)
	if err != nil {
		return err
	}
	var gone []string
	if err := stack.ReadDir(dfd, stack.DirContext{}, func(e *stack.Entry) error {
		if !keep[e.Name] {
			gone = append(gone, e.Name)
		}
		return nil
	}); err != nil {
		return err
	}
	sort.Strings(gone)
	m.log("clear %s (opaque: %d entries not in the upper layer)", c.Path, len(gone))
	m.stats.Deleted += len(gone)
	if m.opt.DryRun {
		return nil
	}
	for _, n := range gone {
		if err := whiteout.RemoveTree(dfd, n); err != nil {
			return fmt.Errorf("removing %s: %w", joinPath(c.Path, n), err)
		}
	}
	m.dropCache()
	return m.setMeta(c)
}

// moveIn puts the moved-aside source of c in place and gives it the upper object's metadata.
func (m *merger) moveIn(c *Change) error {
	if m.opt.DryRun {
		return nil
	}
	tmp := m.extracted[c.Path]
	parent, name := split(c.Path)
	pfd, err := m.openDir(1, parent)
	if err != nil {
		return err
	}
	m.touch(parent, pfd)
	var st unix.Stat_t
	if err := sysx.Fstatat(pfd, name, &st); err == nil {
		if err := whiteout.RemoveTree(pfd, name); err != nil {
			return err
		}
	}
	if err := unix.Renameat2(m.dirfd, tmp, pfd, name, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("moving %s into place: %w", c.From, err)
	}
	delete(m.extracted, c.Path)
	m.dropCache()
	return m.setMeta(c)
}

// metadata gives the object of opt.Into at c.Path the upper object's metadata, keeping its data.
func (m *merger) metadata(c *Change) error {
	m.log("metadata %s (%s)", c.Path, strings.Join(orNone(c.Metadata), ", "))
	m.stats.Metadata++
	if m.opt.DryRun {
		return nil
	}
	parent, name := split(c.Path)
	if c.Path == "/" {
		return m.setMeta(c)
	}
	pfd, err := m.openDir(1, parent)
	if err != nil {
		return err
	}
	var dst unix.Stat_t
	if err := sysx.Fstatat(pfd, name, &dst); err != nil {
		return err
	}
	if dst.Mode&unix.S_IFMT == unix.S_IFREG && dst.Nlink > 1 {
		// Its other names keep their metadata in the union: give this name a copy of its own.
		m.touch(parent, pfd)
		s, err := cow.Build(cow.Source{Dirfd: pfd, Name: name, Stat: dst}, pfd, cow.Options{Skip: skipXattr})
		if err != nil {
			return err
		}
		if err := m.replace(s, pfd, name); err != nil {
			return err
		}
	}
	return m.setMeta(c)
}

func orNone(l []string) []string {
	if len(l) == 0 {
		return []string{"none"}
	}
	return l
}

// replace publishes the staged object s as name in pfd, replacing whatever is there.
func (m *merger) replace(s *cow.Staged, pfd int, name string) error {
	defer s.Discard()
	var st unix.Stat_t
	if err := sysx.Fstatat(pfd, name, &st); err == nil && (st.Mode&unix.S_IFMT == unix.S_IFDIR || s.Mode&unix.S_IFMT == unix.S_IFDIR) {
		// rename(2) replaces a directory only with an empty directory, and a non-directory only with one.
		if err := whiteout.RemoveTree(pfd, name); err != nil {
			return err
		}
		m.dropCache()
	}
	if err := s.Named(); err != nil {
		return err
	}
	if err := unix.Renameat(pfd, s.Tmp, pfd, name); err != nil {
		return err
	}
	s.Published()
	return nil
}

// copyIn copies the upper object of an added or modified change into opt.Into, or links it to the copy of
// another name of the same upper file.
func (m *merger) copyIn(c *Change) error {
	key := devIno{c.st.Dev, c.st.Ino}
	first, isLink := m.linked[key]
	isLink = isLink && c.Type != "dir"
	verb := map[bool]string{false: "copy", true: "replace"}[c.Kind == Modified || c.Kind == Opaque]
	if isLink {
		m.log("link %s -> %s", c.Path, first)
	} else {
		m.log("%s %s", verb, c.Path)
	}
	m.stats.Copied++
	if c.Type == "file" && !isLink {
		m.stats.Bytes += c.st.Size
	}
	if c.st.Nlink > 1 && c.Type != "dir" && !isLink {
		m.linked[key] = c.Path
	}
	if m.opt.DryRun {
		return nil
	}
	parent, name := split(c.Path)
	if isLink {
		fparent, fname := split(first)
		ffd, err := m.openDir(1, fparent)
		if err != nil {
			return err
		}
		// Link under a temporary name, then rename over the old object: never a moment without the name.
		tmp := whiteout.TempName()
		pfd, err := m.openDir(1, parent)
		if err != nil {
			return err
		}
		if err := unix.Linkat(ffd, fname, pfd, tmp, 0); err != nil {
			return fmt.Errorf("linking to %s: %w", first, err)
		}
		m.touch(parent, pfd)
		var st unix.Stat_t
		if sysx.Fstatat(pfd, name, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := whiteout.RemoveTree(pfd, name); err != nil {
				unix.Unlinkat(pfd, tmp, 0)
				return err
			}
			m.dropCache()
		}
		if err := unix.Renameat(pfd, tmp, pfd, name); err != nil {
			unix.Unlinkat(pfd, tmp, 0)
			return err
		}
		return nil
	}
	ufd, err := m.openDir(0, parent)
	if err != nil {
		return fmt.Errorf("upper layer: %w", err)
	}
	pfd, err := m.openDir(1, parent)
	if err != nil {
		return err
	}
	m.touch(parent, pfd)
	s, err := cow.Build(cow.Source{Dirfd: ufd, Name: name, Stat: c.st}, pfd, cow.Options{Skip: skipXattr})
	if err != nil {
		return err
	}
	return m.replace(s, pfd, name)
}

// setMeta gives the object of opt.Into at c.Path the owner, xattrs, mode and times of the upper object, in the
// order package cow uses (chown clears setuid and capabilities).
func (m *merger) setMeta(c *Change) error {
	parent, name := split(c.Path)
	ufd, dfd := m.upfd, m.dirfd
	if c.Path != "/" {
		var err error
		if ufd, err = m.openDir(0, parent); err != nil {
			return fmt.Errorf("upper layer: %w", err)
		}
		if dfd, err = m.openDir(1, parent); err != nil {
			return err
		}
	} else {
		name = ""
	}
	st := &c.st
	if err := sysx.Chownat(dfd, name, int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("chown: %w", err)
	}
	ux, err := xattrs(ufd, name)
	if err != nil {
		return fmt.Errorf("upper layer: reading xattrs: %w", err)
	}
	dx, err := xattrs(dfd, name)
	if err != nil {
		return fmt.Errorf("reading xattrs: %w", err)
	}
	for k, v := range ux {
		if w, ok := dx[k]; ok && w == v {
			continue
		}
		if err := sysx.Setxattrat(dfd, name, k, []byte(v), 0); err != nil {
			if (isUnsupported(err) || errors.Is(err, syscall.EPERM)) && !carriesPermissions(k) {
				m.warn(fmt.Errorf("%s: cannot set xattr %s: %w", c.Path, k, err))
				continue
			}
			return fmt.Errorf("setting xattr %s: %w", k, err)
		}
	}
	for k := range dx {
		if _, ok := ux[k]; !ok {
			if err := sysx.Removexattrat(dfd, name, k); err != nil && !errors.Is(err, syscall.ENODATA) {
				return fmt.Errorf("removing xattr %s: %w", k, err)
			}
		}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := sysx.Chmodat(dfd, name, st.Mode&07777); err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	ts := [2]unix.Timespec{st.Atim, st.Mtim}
	if err := sysx.Utimensat(dfd, name, &ts); err != nil {
		return fmt.Errorf("utimes: %w", err)
	}
	return nil
}

// carriesPermissions reports whether losing the xattr would change who may do what with the file.
func carriesPermissions(name string) bool {
	return name == "security.capability" || strings.HasPrefix(name, "system.posix_acl_")
}

func (m *merger) warn(err error) {
	if m.opt.Warn != nil {
		m.opt.Warn(err)
	}
}

// finish gives every directory of the upper layer the upper directory's times, restores those of the other
// directories the merge changed, and removes sources moved aside that nothing took.
func (m *merger) finish() error {
	if m.opt.DryRun {
		return nil
	}
	for path, tmp := range m.extracted {
		m.warn(fmt.Errorf("%s: its moved-aside source was not used; removed", path))
		whiteout.RemoveTree(m.dirfd, tmp)
	}
	set := func(path string, ts [2]unix.Timespec) error {
		fd, err := m.openDir(1, path)
		if err != nil {
			if errors.Is(err, syscall.ENOENT) {
				return nil // a directory that no longer exists
			}
			return err
		}
		return sysx.Utimensat(fd, "", &ts)
	}
	for _, p := range slices.Sorted(maps.Keys(m.upperDirs)) {
		c := m.upperDirs[p]
		if err := set(p, [2]unix.Timespec{c.st.Atim, c.st.Mtim}); err != nil {
			return fmt.Errorf("%s: setting times: %w", p, err)
		}
	}
	for p, ts := range m.touched {
		if err := set(p, ts); err != nil {
			return fmt.Errorf("%s: restoring times: %w", p, err)
		}
	}
	return nil
}
