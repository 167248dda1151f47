package check

import (
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// LayerError is a layer directory that is missing, not a directory or unreadable.
type LayerError struct {
	Path string
	Err  error
}

func (e *LayerError) Error() string { return fmt.Sprintf("layer %s: %v", e.Path, e.Err) }
func (e *LayerError) Unwrap() error { return e.Err }

// OpenLayerDir opens the layer directory path (the command line names it, so a symlink to it is followed) as
// an O_PATH descriptor; a failure is a *LayerError.
func OpenLayerDir(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, &LayerError{Path: path, Err: err}
	}
	rfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(fd)
		return -1, &LayerError{Path: path, Err: err}
	}
	unix.Close(rfd)
	return fd, nil
}

// Lowers are the read-only layers below an upper layer, topmost first, read the way the union reads them: a
// lower layer's own whiteouts (overlay and aufs) and opaque directories are honoured.
type Lowers struct {
	fds   []int
	Paths []string
}

// OpenLowers opens the lower layers at paths, topmost first. A failure is a *LayerError.
func OpenLowers(paths []string) (*Lowers, error) {
	l := &Lowers{Paths: paths}
	for _, p := range paths {
		fd, err := OpenLayerDir(p)
		if err != nil {
			l.Close()
			return nil, err
		}
		l.fds = append(l.fds, fd)
	}
	return l, nil
}

// Close closes the layers.
func (l *Lowers) Close() {
	for _, fd := range l.fds {
		unix.Close(fd)
	}
	l.fds = nil
}

// Stack is the lower directories that merge into one directory of the union, topmost first: each an O_PATH
// descriptor of its own, which Close releases. A nil or empty stack means nothing below.
type Stack struct {
	fds []int
}

// Root returns the stack of the layer roots.
func (l *Lowers) Root() *Stack {
	s := &Stack{}
	for _, fd := range l.fds {
		if d, err := sysx.OpenDir(fd, ""); err == nil {
			s.fds = append(s.fds, d)
		}
	}
	return s
}

// At returns the stack at the absolute path p (an overlay absolute redirect), looked up from every layer root
// as overlayfs does; ok is false if p is not a valid absolute path.
func (l *Lowers) At(p string) (s *Stack, ok bool) {
	comps, ok := whiteout.SplitRedirect(p)
	if !ok {
		return &Stack{}, false
	}
	s = l.Root()
	for _, c := range comps {
		next := s.Child(c)
		s.Close()
		s = next
	}
	return s, true
}

// Empty reports whether nothing lies below.
func (s *Stack) Empty() bool { return s == nil || len(s.fds) == 0 }

// Close releases the stack's descriptors.
func (s *Stack) Close() {
	if s == nil {
		return
	}
	for _, fd := range s.fds {
		unix.Close(fd)
	}
	s.fds = nil
}

// Entry is the lower object a name resolves to.
type Entry struct {
	Dirfd int // the lower directory holding it (owned by the stack)
	Name  string
	Stat  unix.Stat_t
}

// IsDir reports whether the entry is a directory.
func (e *Entry) IsDir() bool { return e.Stat.Mode&unix.S_IFMT == unix.S_IFDIR }

// Lookup returns the topmost lower object called name that the lower layers show, if any: the search stops at a
// whiteout, and a non-directory hides what lies below it.
func (s *Stack) Lookup(name string) (Entry, bool) {
	if s == nil || whiteout.IsMarkerName(name) {
		return Entry{}, false
	}
	for _, fd := range s.fds {
		e := Entry{Dirfd: fd, Name: name}
		err := sysx.Fstatat(fd, name, &e.Stat)
		if err != nil {
			if whiteout.HasAufsWhiteout(fd, name) {
				return Entry{}, false
			}
			continue
		}
		if whiteout.IsOverlayWhiteout(&e.Stat) {
			return Entry{}, false
		}
		return e, true
	}
	return Entry{}, false
}

// Child returns the stack of the lower directories called name below s: the topmost and those it merges with,
// down to an opaque one or a non-directory.
func (s *Stack) Child(name string) *Stack {
	out := &Stack{}
	if s == nil || whiteout.IsMarkerName(name) {
		return out
	}
	for _, fd := range s.fds {
		var st unix.Stat_t
		if err := sysx.Fstatat(fd, name, &st); err != nil {
			if whiteout.HasAufsWhiteout(fd, name) {
				break
			}
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			break
		}
		d, err := sysx.OpenDir(fd, name)
		if err != nil {
			continue
		}
		out.fds = append(out.fds, d)
		if op, _ := whiteout.DirOpacity(fd, name); op == whiteout.Opaque || whiteout.HasAufsWhiteout(fd, name) {
			break
		}
	}
	return out
}

// Names returns every name the stack shows (each once, markers and whiteouts excluded).
func (s *Stack) Names() ([]string, error) {
	if s == nil {
		return nil, nil
	}
	seen := map[string]bool{}
	var names []string
	for _, fd := range s.fds {
		ents, err := ReadDir(fd)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if seen[e.Name] || whiteout.IsMarkerName(e.Name) {
				continue
			}
			seen[e.Name] = true
			if _, ok := s.Lookup(e.Name); ok {
				names = append(names, e.Name)
			}
		}
	}
	return names, nil
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
	return HasAnyXattr(dirfd, name, whiteout.MetacopyXattrs)
}

// HasAnyXattr reports whether name in dirfd has one of attrs.
func HasAnyXattr(dirfd int, name string, attrs []string) bool {
	for _, a := range attrs {
		if _, err := sysx.Getxattrat(dirfd, name, a, nil); err == nil {
			return true
		}
	}
	return false
}

// removeXattrs removes attrs from name in dirfd; missing ones are not an error.
func removeXattrs(dirfd int, name string, attrs []string) error {
	for _, a := range attrs {
		if err := sysx.Removexattrat(dirfd, name, a); err != nil && !errors.Is(err, syscall.ENODATA) {
			return err
		}
	}
	return nil
}

// RemoveXattrs removes attrs from name in dirfd; missing ones are not an error.
func RemoveXattrs(dirfd int, name string, attrs []string) error {
	return removeXattrs(dirfd, name, attrs)
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
