package changes

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// layer is one layer directory, opened.
type layer struct {
	path string
	fd   int  // O_PATH descriptor of the root
	aufs bool // its root holds aufs markers: absent names may be whited out by .wh.NAME
	meta int  // its unionfs-fuse meta directory, or -1
	// metaName is the name of the meta directory, "" if none.
	metaName string
}

// LayerError is the error of a layer directory that is missing, not a directory or unreadable.
type LayerError struct {
	Path string
	Err  error
}

func (e *LayerError) Error() string { return fmt.Sprintf("layer %s: %v", e.Path, e.Err) }
func (e *LayerError) Unwrap() error { return e.Err }

// openLayer opens the layer directory at path (which may be given through symlinks: it is the caller's
// argument) and reads which marker formats it may hold.
func openLayer(path string) (*layer, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &LayerError{path, err}
	}
	// A directory that cannot be listed is of no use: say so now rather than in the middle of the walk.
	rfd, err := sysx.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME, 0)
	if err == syscall.EPERM {
		rfd, err = sysx.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY, 0)
	}
	if err != nil {
		unix.Close(fd)
		return nil, &LayerError{path, err}
	}
	l := &layer{path: path, fd: fd, meta: -1}
	sysx.Getdents(rfd, func(name string, _ uint64, _ uint8) {
		if whiteout.IsMarkerName(name) && !whiteout.IsTempName(name) {
			l.aufs = true
		}
	})
	unix.Close(rfd)
	// The meta directory the daemon reads: unionfs-fuse 2.0's name first, then 1.0's.
	for _, name := range []string{whiteout.UnionfsMetaDir, whiteout.UnionfsLegacyMetaDir} {
		if mfd, err := sysx.OpenDir(fd, name); err == nil {
			l.meta, l.metaName = mfd, name
			break
		}
	}
	return l, nil
}

func (l *layer) close() {
	unix.Close(l.fd)
	if l.meta >= 0 {
		unix.Close(l.meta)
	}
}

// ldir is one lower layer's part of a directory of the lower view: the directory itself and its unionfs-fuse
// marker directory, either of which may be missing (-1).
type ldir struct {
	layer int // index into the lower layers
	fd    int
	meta  int
	opq   whiteout.Opacity
}

// stack is a directory of the lower view: its ldirs, topmost first.
type stack []ldir

func (s stack) close() {
	for _, d := range s {
		if d.fd >= 0 {
			unix.Close(d.fd)
		}
		if d.meta >= 0 {
			unix.Close(d.meta)
		}
	}
}

// find returns the ldir of lower layer li in s.
func (s stack) find(li int) (ldir, bool) {
	for _, d := range s {
		if d.layer == li {
			return d, true
		}
	}
	return ldir{}, false
}

// object is what a name means in the lower view.
type object struct {
	found  bool
	st     unix.Stat_t
	dirfd  int    // the lower directory holding it (owned by a stack or by the object's tmp list)
	name   string // its name there
	layer  int
	data   *object // a lower metadata-only copy: the object holding its data
	sub    stack   // a directory: its lower view, for the names inside it (owned by the caller)
	tmpfds []int
}

// release closes what o opened, except its sub stack.
func (o *object) release() {
	for _, fd := range o.tmpfds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	o.tmpfds = nil
	if o.data != nil {
		o.data.release()
	}
}

// lowerView resolves names in the lower layers with the rules of package unionfs: a whiteout (of any format) ends
// the search, a non-directory hides everything below it, directories merge unless opaque, redirects are followed.
type lowerView struct {
	layers []*layer
}

// root returns the lower view of the root directory.
func (v *lowerView) root() (stack, error) {
	var s stack
	for i, l := range v.layers {
		fd, err := sysx.OpenDir(l.fd, "")
		if err != nil {
			s.close()
			return nil, &LayerError{l.path, err}
		}
		meta := -1
		if l.meta >= 0 {
			meta, _ = sysx.OpenDir(l.meta, "")
		}
		op, _ := whiteout.DirOpacity(fd, "")
		s = append(s, ldir{layer: i, fd: fd, meta: meta, opq: op})
		if op == whiteout.Opaque {
			break
		}
	}
	return s, nil
}

// walkTo opens the directory at the path comps from the root of lower layer li, or returns -1.
func (v *lowerView) walkTo(li int, comps []string) int {
	fd, err := sysx.OpenDir(v.layers[li].fd, "")
	if err != nil {
		return -1
	}
	for _, c := range comps {
		next, err := sysx.OpenDir(fd, c)
		unix.Close(fd)
		if err != nil {
			return -1
		}
		fd = next
	}
	return fd
}

// lookupPath resolves an absolute path in the lower view (a redirect's target).
func (v *lowerView) lookupPath(p string) (object, error) {
	comps, _ := whiteout.SplitRedirect(p)
	if len(comps) == 0 {
		return object{}, nil
	}
	s, err := v.root()
	if err != nil {
		return object{}, err
	}
	for i, c := range comps {
		o, err := v.lookup(s, c)
		if err != nil {
			s.close()
			return object{}, err
		}
		if i == len(comps)-1 {
			// The object lives in s's directories: they are the object's to release now.
			for _, d := range s {
				o.tmpfds = append(o.tmpfds, d.fd, d.meta)
			}
			return o, nil
		}
		s.close()
		if !o.found || o.st.Mode&unix.S_IFMT != unix.S_IFDIR {
			o.release()
			o.sub.close()
			return object{}, nil
		}
		s = o.sub
		o.sub = nil
		o.release()
	}
	return object{}, nil
}

// lookup resolves name in the directory of the lower view s. The caller releases the result and closes its sub
// stack.
func (v *lowerView) lookup(s stack, name string) (object, error) {
	var res object
	target := name
	var abs []string // set while following an absolute redirect
	var dirs []ldir  // directories found so far
	done := false
	for li := range v.layers {
		if done {
			break
		}
		var dirfd, meta int
		var pOpq whiteout.Opacity
		if abs != nil {
			dirfd = v.walkTo(li, abs[:len(abs)-1])
			if dirfd < 0 {
				continue
			}
			res.tmpfds = append(res.tmpfds, dirfd)
			target, meta = abs[len(abs)-1], -1
		} else {
			d, ok := s.find(li)
			if !ok {
				continue
			}
			dirfd, meta, pOpq = d.fd, d.meta, d.opq
		}
		if dirfd < 0 {
			if target == name && hiddenByMeta(meta, target) {
				break
			}
			continue
		}
		var st unix.Stat_t
		err := sysx.Fstatat(dirfd, target, &st)
		if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ENOTDIR) {
			if v.layers[li].aufs && whiteout.HasAufsWhiteout(dirfd, target) || hiddenByMeta(meta, target) {
				break
			}
			continue
		}
		if err != nil {
			res.release()
			closeLdirs(dirs)
			return object{}, &LayerError{v.layers[li].path, fmt.Errorf("%s: %w", target, err)}
		}
		if whiteout.IsOverlayWhiteout(&st) || pOpq == whiteout.Xwhiteouts && whiteout.IsXwhiteout(dirfd, target, &st) {
			break
		}
		isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
		if res.found && len(dirs) == 0 {
			// res is a lower metadata-only copy: the next non-directory holds its data.
			if !isDir {
				res.data = &object{found: true, st: st, dirfd: dirfd, name: target, layer: li}
			}
			break
		}
		if res.found && !isDir {
			break
		}
		if !isDir {
			res = object{found: true, st: st, dirfd: dirfd, name: target, layer: li, tmpfds: res.tmpfds}
			if isMetacopy(dirfd, target, &st) {
				continue
			}
			break
		}
		if !res.found {
			res.found, res.st, res.dirfd, res.name, res.layer = true, st, dirfd, target, li
		}
		fd, err := sysx.OpenDir(dirfd, target)
		if err != nil {
			// A mount point inside a lower layer (EXDEV) shows as an empty directory, as in the daemon.
			fd = -1
		}
		op := whiteout.Transparent
		redirect := ""
		if li < len(v.layers)-1 {
			op, _ = whiteout.DirOpacity(dirfd, target)
			if op != whiteout.Opaque && (v.layers[li].aufs && whiteout.HasAufsWhiteout(dirfd, target) || hiddenByMeta(meta, target)) {
				op = whiteout.Opaque
			}
			if op != whiteout.Opaque {
				redirect = whiteout.ReadRedirect(dirfd, target)
			}
		}
		cmeta := -1
		if meta >= 0 && abs == nil {
			cmeta, _ = sysx.OpenDir(meta, target)
		}
		dirs = append(dirs, ldir{layer: li, fd: fd, meta: cmeta, opq: op})
		if op == whiteout.Opaque {
			done = true
		}
		switch {
		case strings.HasPrefix(redirect, "/"):
			abs, _ = whiteout.SplitRedirect(redirect)
			if len(abs) == 0 {
				abs = nil
			}
		case redirect != "" && sysx.CheckName(redirect) == nil:
			target = redirect
		}
	}
	if res.found && res.st.Mode&unix.S_IFMT == unix.S_IFDIR {
		res.sub = dirs
		// Marker directories of layers that have no directory of that name still hide names inside it.
		if abs == nil && target == name {
			for _, d := range s {
				if _, ok := res.sub.find(d.layer); ok || d.meta < 0 || d.layer < res.layer {
					continue
				}
				if m, err := sysx.OpenDir(d.meta, name); err == nil {
					res.sub = append(res.sub, ldir{layer: d.layer, fd: -1, meta: m})
				}
			}
			sortStack(res.sub)
		}
	} else {
		closeLdirs(dirs)
	}
	return res, nil
}

func closeLdirs(dirs []ldir) { stack(dirs).close() }

// sortStack orders a stack by layer, topmost first.
func sortStack(s stack) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j].layer < s[j-1].layer; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

// hiddenByMeta reports whether the unionfs-fuse marker directory meta (-1 for none) whites name out.
func hiddenByMeta(meta int, name string) bool {
	if meta < 0 || len(name)+len(whiteout.UnionfsHiddenSuffix) > 255 {
		return false
	}
	var st unix.Stat_t
	return sysx.Fstatat(meta, name+whiteout.UnionfsHiddenSuffix, &st) == nil
}

// isMetacopy reports whether the regular file name in dirfd is an overlay metadata-only copy.
func isMetacopy(dirfd int, name string, st *unix.Stat_t) bool {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return false
	}
	for _, attr := range whiteout.MetacopyXattrs {
		if _, err := sysx.Getxattrat(dirfd, name, attr, nil); err == nil {
			return true
		}
	}
	return false
}

// joinPath joins an absolute directory path and a name.
func joinPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}
