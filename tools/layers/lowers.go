package layers

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/stack"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Lowers are the read-only layers below an upper layer, topmost first, read the way the union reads them (package
// stack).
type Lowers struct {
	t *stack.Tree
}

// OpenLowers opens the lower layers at paths, topmost first. A failure is a *stack.LayerError.
func OpenLowers(paths []string) (*Lowers, error) {
	t, err := stack.OpenTree(paths)
	if err != nil {
		return nil, err
	}
	return &Lowers{t: t}, nil
}

// Close closes the layers.
func (l *Lowers) Close() { l.t.Close() }

// Stack is the lower directories that merge into one directory of the union: each an O_PATH descriptor of its own,
// which Close releases, with the descriptors the entries it returned need. A nil or empty stack means nothing
// below.
type Stack struct {
	t    *stack.Tree
	d    stack.Dirs
	held []*stack.Result // lookups that opened descriptors their entries may use
}

// Root returns the stack of the layer roots.
func (l *Lowers) Root() *Stack {
	d, err := l.t.Root()
	if err != nil {
		return &Stack{}
	}
	return &Stack{t: l.t, d: d}
}

// Empty reports whether nothing lies below.
func (s *Stack) Empty() bool { return s == nil || s.d.Empty() }

// Close releases the stack's descriptors.
func (s *Stack) Close() {
	if s == nil {
		return
	}
	s.d.Close()
	s.d = nil
	for _, r := range s.held {
		r.Close()
	}
	s.held = nil
}

// Entry is the lower object a name resolves to.
type Entry struct {
	Dirfd int // the lower directory holding it (valid until the stack is closed)
	Name  string
	Stat  unix.Stat_t
	// Data is, for a lower metadata-only copy (the upper layer of an earlier mount), the file holding its data.
	Data *Entry
}

// IsDir reports whether the entry is a directory.
func (e *Entry) IsDir() bool { return e.Stat.Mode&unix.S_IFMT == unix.S_IFDIR }

// Lookup returns the lower object called name that the lower layers show, if any.
func (s *Stack) Lookup(name string) (Entry, bool) {
	if s == nil || s.t == nil {
		return Entry{}, false
	}
	res := &stack.Result{}
	if err := s.t.Lookup(s.d, name, res); err != nil || !res.Exists() {
		res.Close()
		return Entry{}, false
	}
	if res.OwnsDescriptors() {
		s.held = append(s.held, res) // the entry's Dirfd is one of them
	}
	return entryOf(res), true
}

// entryOf returns the entry of what res found.
func entryOf(res *stack.Result) Entry {
	o := &res.Found[0]
	e := Entry{Dirfd: o.Dirfd, Name: o.Name, Stat: o.Stat}
	if d := res.Data; d != nil {
		e.Data = &Entry{Dirfd: d.Dirfd, Name: d.Name, Stat: d.Stat}
	}
	return e
}

// Child returns the stack of the lower directories called name below s: the topmost and those it merges with.
func (s *Stack) Child(name string) *Stack {
	if s == nil || s.t == nil {
		return &Stack{}
	}
	d, err := s.t.Child(s.d, name)
	if err != nil {
		return &Stack{}
	}
	return &Stack{t: s.t, d: d}
}

// Below returns the stack of the lower directories that the upper directory called name above s, whose redirect
// is redirect ("" for none), merges with (see stack.Tree.Below).
func (s *Stack) Below(name, redirect string) *Stack {
	if s == nil || s.t == nil {
		return &Stack{}
	}
	d, err := s.t.Below(s.d, name, redirect)
	if err != nil {
		return &Stack{}
	}
	return &Stack{t: s.t, d: d}
}

// Names returns every name the stack shows (each once, markers and whiteouts excluded).
func (s *Stack) Names() ([]string, error) {
	if s == nil || s.t == nil {
		return nil, nil
	}
	return s.t.Names(s.d)
}

// Dirent is a directory entry.
type Dirent struct {
	Name string
	Type uint8 // DT_*
}

// ReadDir lists the directory dirfd (an O_PATH descriptor is enough), "." and ".." excluded.
func ReadDir(dirfd int) ([]Dirent, error) {
	fd, err := sysx.Openat(dirfd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var ents []Dirent
	err = sysx.Getdents(fd, func(name string, _ uint64, typ uint8) {
		if name != "." && name != ".." {
			ents = append(ents, Dirent{name, typ})
		}
	})
	return ents, err
}

// IsMetacopy reports whether the regular file name in dirfd is an overlay metadata-only copy.
func IsMetacopy(dirfd int, name string) bool {
	return stack.HasMark(dirfd, name, whiteout.MetacopyXattrs)
}

// RemoveXattrs removes attrs from name in dirfd; missing ones are not an error.
func RemoveXattrs(dirfd int, name string, attrs []string) error {
	for _, a := range attrs {
		if err := sysx.Removexattrat(dirfd, name, a); err != nil && !errors.Is(err, syscall.ENODATA) {
			return err
		}
	}
	return nil
}

// KeepTimes records the access and modification times of the directory dirfd and returns the function that
// restores them: marker changes must not change the times the merged view shows.
func KeepTimes(dirfd int) func() {
	var st unix.Stat_t
	if sysx.Fstatat(dirfd, "", &st) != nil {
		return func() {}
	}
	return func() {
		ts := [2]unix.Timespec{st.Atim, st.Mtim}
		sysx.Utimensat(dirfd, "", &ts)
	}
}
