package unionfs

import (
	"errors"
	"fmt"
	"path/filepath"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/stack"
)

// Layer is one branch of the union: the upper (writable) layer or one of the read-only lowers. Its directory is
// opened once, before mounting, and every later access goes through that descriptor, so the union keeps working
// when the path it was started with disappears (switch_root) or is covered by the union itself.
//
// All fields are immutable after OpenLayers.
type Layer struct {
	// Path is the absolute path the layer was opened at. It is used in messages only, never for access.
	Path string
	// Index is the layer's position: 0 is the upper layer, 1.. are the lowers, topmost first.
	Index int

	fd   int    // O_PATH descriptor of the layer's root directory
	dev  uint64 // st_dev of the root directory
	ino  uint64 // st_ino of the root directory
	aufs bool   // aufs markers may occur in this layer: probe ".wh.NAME" for absent names
	meta int    // unionfs-fuse meta directory at the layer root (.unionfs or .unionfs-fuse), or -1

	private bool // fd is a private clone of the layer's mount (see privatize)
}

// IsUpper reports whether l is the writable layer.
func (l *Layer) IsUpper() bool { return l.Index == 0 }

func (l *Layer) String() string {
	if l.IsUpper() {
		return "upper layer " + l.Path
	}
	return fmt.Sprintf("lower layer %d %s", l.Index, l.Path)
}

// Layers is the ordered set of layers of one union: the upper layer first, then the lowers, topmost first.
type Layers struct {
	all []*Layer
}

// Upper returns the writable layer.
func (ls *Layers) Upper() *Layer { return ls.all[0] }

// Lowers returns the read-only layers, topmost first.
func (ls *Layers) Lowers() []*Layer { return ls.all[1:] }

// Close closes the layers' directory descriptors. Only a union that was never mounted may be closed.
func (ls *Layers) Close() {
	for _, l := range ls.all {
		if l.fd >= 0 {
			unix.Close(l.fd)
			l.fd = -1
		}
		if l.meta >= 0 {
			unix.Close(l.meta)
			l.meta = -1
		}
	}
}

// LayerError says which layer path is unusable and why. OpenLayers returns it for every refusal.
type LayerError struct {
	Path   string // the path as resolved
	Role   string // "upper layer" or "lower layer"
	Reason string // what is wrong, e.g. "does not exist"
	Err    error  // the underlying error, if any
}

func (e *LayerError) Error() string {
	s := e.Role
	if e.Path != "" {
		s += " " + e.Path
	}
	s += " " + e.Reason
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *LayerError) Unwrap() error { return e.Err }

// OpenLayers resolves and opens the upper directory and the lower directories (topmost first) and checks that they
// make a sound union: each exists, is a directory and is readable, the upper is writable, and no lower is the
// upper or contains it or lies inside it. Relative paths are resolved against the current directory.
func OpenLayers(upper string, lowers []string) (*Layers, error) {
	if len(lowers) == 0 {
		return nil, &LayerError{Role: "lower layer", Reason: "is missing: give at least one read-only layer"}
	}
	ls := &Layers{}
	ok := false
	defer func() {
		if !ok {
			ls.Close()
		}
	}()
	up, err := openLayer(upper, "upper layer", 0)
	if err != nil {
		return nil, err
	}
	ls.all = append(ls.all, up)
	if err := unix.Faccessat(up.fd, ".", unix.W_OK, unix.AT_EACCESS); err != nil {
		return nil, &LayerError{Path: up.Path, Role: "upper layer", Reason: "is not writable", Err: err}
	}
	for i, p := range lowers {
		l, err := openLayer(p, "lower layer", i+1)
		if err != nil {
			return nil, err
		}
		ls.all = append(ls.all, l)
		if err := checkDisjoint(up, l); err != nil {
			return nil, err
		}
	}
	for _, l := range ls.all {
		l.privatize()
		l.readDeclarations()
	}
	ok = true
	return ls, nil
}

// privatize replaces the layer's descriptor with one of a private clone of its mount (see sysx.PrivateClone):
// read-only and noatime for a lower. Without the privilege to clone mounts, the layer keeps its descriptor; the
// daemon still never writes a lower, but reading a lower symlink then updates its access time as readlink(2)
// always does.
func (l *Layer) privatize() {
	fd, err := sysx.PrivateClone(l.fd, !l.IsUpper())
	if err != nil {
		return
	}
	unix.Close(l.fd)
	l.fd = fd
	l.private = true
}

func openLayer(path, role string, index int) (*Layer, error) {
	if path == "" {
		return nil, &LayerError{Role: role, Reason: "is missing: the path is empty"}
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &LayerError{Path: path, Role: role, Reason: "cannot be resolved", Err: err}
	}
	// The user's path may contain symlinks (e.g. /var/run); the layer is what it resolves to now.
	fd, err := unix.Open(abs, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		switch {
		case errors.Is(err, syscall.ENOENT):
			return nil, &LayerError{Path: abs, Role: role, Reason: "does not exist"}
		case errors.Is(err, syscall.ENOTDIR):
			return nil, &LayerError{Path: abs, Role: role, Reason: "is not a directory"}
		default:
			return nil, &LayerError{Path: abs, Role: role, Reason: "cannot be opened", Err: err}
		}
	}
	l := &Layer{Path: abs, Index: index, fd: fd, meta: -1}
	var st unix.Stat_t
	if err := sysx.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return nil, &LayerError{Path: abs, Role: role, Reason: "cannot be examined", Err: err}
	}
	l.dev, l.ino = st.Dev, st.Ino
	// Reading the directory proves the daemon can list it (a lower on NFS with root_squash may refuse).
	dfd, err := sysx.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME, 0)
	if err == nil {
		err = sysx.Getdents(dfd, func(string, uint64, uint8) {})
		unix.Close(dfd)
	}
	if err != nil {
		unix.Close(fd)
		return nil, &LayerError{Path: abs, Role: role, Reason: "is not readable", Err: err}
	}
	return l, nil
}

// checkDisjoint refuses a lower that is the upper, lies inside it or contains it. The test walks ".." from each
// directory and compares device and inode numbers, so symlinks and bind mounts of the same directory cannot hide an
// overlap.
func checkDisjoint(up, low *Layer) error {
	if up.dev == low.dev && up.ino == low.ino {
		return &LayerError{Path: low.Path, Role: "lower layer", Reason: "is the same directory as the upper layer " + up.Path}
	}
	if isAncestor(low, up) {
		return &LayerError{Path: up.Path, Role: "upper layer", Reason: "lies inside the lower layer " + low.Path}
	}
	if isAncestor(up, low) {
		return &LayerError{Path: low.Path, Role: "lower layer", Reason: "lies inside the upper layer " + up.Path}
	}
	return nil
}

// Contains reports whether the directory open at fd is the layer's directory or lies inside it.
func (l *Layer) Contains(fd int) bool {
	var st unix.Stat_t
	if err := sysx.Fstat(fd, &st); err != nil {
		return false
	}
	if st.Dev == l.dev && st.Ino == l.ino {
		return true
	}
	return isAncestorOf(l, fd, devIno{st.Dev, st.Ino})
}

// isAncestor reports whether the directory of a is a proper ancestor of the directory of b.
func isAncestor(a, b *Layer) bool {
	return isAncestorOf(a, b.fd, devIno{b.dev, b.ino})
}

// isAncestorOf reports whether the directory of a is a proper ancestor of the directory open at bfd, whose
// identity is bid.
func isAncestorOf(a *Layer, bfd int, bid devIno) bool {
	fd, err := unix.Openat(bfd, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	prev := bid
	for depth := 0; depth < 4096; depth++ {
		var st unix.Stat_t
		if err := sysx.Fstat(fd, &st); err != nil {
			break
		}
		cur := devIno{st.Dev, st.Ino}
		if cur == (devIno{a.dev, a.ino}) {
			unix.Close(fd)
			return true
		}
		if cur == prev {
			break // reached "/": its ".." is itself
		}
		prev = cur
		next, err := unix.Openat(fd, "..", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return false
		}
		fd = next
	}
	unix.Close(fd)
	return false
}

// readDeclarations reads which marker formats the layer declares (see stack.Declarations), keeping the meta
// directory it has open already.
func (l *Layer) readDeclarations() {
	aufs, _, meta := stack.Declarations(l.fd)
	l.aufs = aufs
	if l.meta < 0 {
		l.meta = meta
	} else if meta >= 0 {
		unix.Close(meta)
	}
}
