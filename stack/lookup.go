package stack

import (
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Reader resolves names in a stack of layers (see the package documentation for the rules). Its fields are set
// once and never changed; a Reader is safe for concurrent use.
type Reader struct {
	// Layers are the layers, topmost first.
	Layers []Layer
	// Redirects and Metacopies are the xattrs whose redirect and metadata-only-copy marks count: the daemon's own
	// namespace (overlayfs with the trusted namespace ignores user.overlay.* attributes, which are then a user's),
	// or for the offline tools, which cannot know which namespace a mount used, every namespace.
	Redirects, Metacopies []string
	// Origin, if set, is the xattr in which the top layer's non-directories record the lower object they were
	// copied from; Lookup reads it into Object.Origin.
	Origin string
	// Probed, if set, is called each time a layer directory is asked for a name (the daemon counts them).
	Probed func(layer int)
	// Listed, if set, is called each time List reads a layer directory.
	Listed func(layer int)
}

// ToolReader returns a Reader for the offline tools over layers: marks of every namespace count.
func ToolReader(layers []Layer) *Reader {
	return &Reader{Layers: layers, Redirects: whiteout.RedirectXattrs, Metacopies: whiteout.MetacopyXattrs}
}

// View is one merged directory as each layer holds it.
type View interface {
	// Dir returns layer li's part of the directory.
	Dir(li int) Dir
}

// Dir is one layer's part of a merged directory.
type Dir struct {
	// Fd is the layer's directory, -1 if the layer has none, or if it is a mount point in its layer (which shows
	// empty).
	Fd int
	// Meta is the layer's unionfs-fuse marker directory for the directory, -1 if none. A layer may have it without
	// having the directory: unionfs-fuse whites out lower names without copying their parents up.
	Meta int
	// Opacity is the directory's (read only where a layer below has the directory; Transparent otherwise).
	Opacity whiteout.Opacity
	// AtRoot says that Fd is the layer's root directory, whose meta directories are never shown.
	AtRoot bool
}

// NoDir is the part of a layer that has nothing of a directory.
var NoDir = Dir{Fd: -1, Meta: -1}

// Object is one layer's object for a name.
type Object struct {
	Layer int         // its layer's index
	Dirfd int         // the directory holding it, valid until the Result is closed
	Name  string      // its name there: another than the name looked up under a redirect
	Stat  unix.Stat_t // its attributes
	// Opacity and Redirect are set on directories with a layer below: how they limit the merge, and their
	// redirect as found ("" if none, or if the directory is opaque).
	Opacity  whiteout.Opacity
	Redirect string
	// Origin is the top layer's non-directories' origin mark (see Reader.Origin), "" if none.
	Origin string
	// Metacopy says that a regular file is a metadata-only copy whose data lies below (Result.Data).
	Metacopy bool
}

// IsDir reports whether o is a directory.
func (o *Object) IsDir() bool { return o.Stat.Mode&unix.S_IFMT == unix.S_IFDIR }

// Kind is what a name resolves to.
type Kind uint8

const (
	// KindNone: no layer has the name.
	KindNone Kind = iota
	// KindWhiteout: a layer's whiteout hides the name from the layers below (Result.Whiteout says which).
	KindWhiteout
	// KindFile: a non-directory (Result.Found[0]; Result.Data for a metadata-only copy).
	KindFile
	// KindDir: a directory, merged from Result.Found.
	KindDir
)

// Result is what a name resolves to.
type Result struct {
	// Found are the objects, topmost first: one for a non-directory, every directory that merges for a directory.
	Found []Object
	// Data is, for a metadata-only copy, the lower file holding its data.
	Data *Object
	// DataMoved says that Data is not at the copy's own name: an overlay redirect on the copy (kernel overlayfs
	// writes one when it renames a metadata-only copy) named it.
	DataMoved bool
	// Whiteout is the layer whose whiteout ended the search, or -1. It can be set beside found directories, when
	// a layer below them whites the name out.
	Whiteout int

	tmpfds []int // descriptors opened to follow absolute redirects
}

// Kind says what the name resolved to.
func (res *Result) Kind() Kind {
	switch {
	case len(res.Found) > 0 && res.Found[0].IsDir():
		return KindDir
	case len(res.Found) > 0:
		return KindFile
	case res.Whiteout >= 0:
		return KindWhiteout
	}
	return KindNone
}

// Exists reports whether the name resolved to an object.
func (res *Result) Exists() bool { return len(res.Found) > 0 }

// IsDir reports whether the name resolved to a directory.
func (res *Result) IsDir() bool { return len(res.Found) > 0 && res.Found[0].IsDir() }

// OwnsDescriptors reports whether the lookup opened descriptors of its own (following an absolute redirect):
// only then do the objects' Dirfd fields depend on res staying open rather than on the View's directories.
func (res *Result) OwnsDescriptors() bool { return len(res.tmpfds) > 0 }

// Close releases the descriptors the lookup opened; the objects' Dirfd fields are invalid afterwards.
func (res *Result) Close() {
	for _, fd := range res.tmpfds {
		unix.Close(fd)
	}
	res.tmpfds = nil
}

// Lookup resolves name in the directory v into res (whose previous content is dropped; the caller closes it,
// also on error). A layer that cannot be read is an *Error.
func (rd *Reader) Lookup(v View, name string, res *Result) error {
	return rd.lookup(v, name, nil, res)
}

// LookupPath resolves the absolute path p (from every layer's root, as an absolute redirect is followed) into res,
// as Lookup does.
func (rd *Reader) LookupPath(p string, res *Result) error {
	comps, ok := whiteout.SplitRedirect(p)
	if !ok || len(comps) == 0 {
		*res = Result{Whiteout: -1, Found: res.Found[:0]}
		return nil
	}
	return rd.lookup(nil, comps[len(comps)-1], comps, res)
}

// lookup resolves name in v, or if absPath is set at that path from every layer's root.
func (rd *Reader) lookup(v View, name string, absPath []string, res *Result) error {
	*res = Result{Whiteout: -1, Found: res.Found[:0]}
	layers := rd.Layers
	last := len(layers) - 1
	target := name // the name to look for in the next layer; absPath is set while following an absolute redirect
	for li := 0; li <= last; li++ {
		l := &layers[li]
		var dirfd, meta int
		var pdOpacity whiteout.Opacity
		below := false // whether layers below this one can contribute
		if absPath != nil {
			fd, ok := rd.walk(li, absPath[:len(absPath)-1], res)
			if !ok {
				continue
			}
			dirfd, target, meta = fd, absPath[len(absPath)-1], -1
			below = li < last
		} else {
			d := v.Dir(li)
			dirfd, pdOpacity, meta = d.Fd, d.Opacity, d.Meta
			if dirfd < 0 {
				// The layer has no such directory, but its marker tree may white the name out.
				if target == name {
					if hidden, err := markedHidden(li, false, -1, meta, target); err != nil {
						return err
					} else if hidden {
						res.Whiteout = li
						break
					}
				}
				continue
			}
			below = hasBelow(v, li, last)
		}
		if rd.Probed != nil {
			rd.Probed(li)
		}
		p := Object{Layer: li, Dirfd: dirfd, Name: target}
		err := sysx.Fstatat(dirfd, target, &p.Stat)
		if err == syscall.ENOENT || err == syscall.ENOTDIR {
			if hidden, err := markedHidden(li, l.Aufs, dirfd, meta, target); err != nil {
				return err
			} else if hidden {
				res.Whiteout = li
				break
			}
			continue
		}
		if err != nil {
			return &Error{Layer: li, Op: "lookup", Name: target, Err: err}
		}
		if whiteout.IsOverlayWhiteout(&p.Stat) ||
			pdOpacity == whiteout.Xwhiteouts && whiteout.IsXwhiteout(dirfd, target, &p.Stat) {
			res.Whiteout = li
			break
		}
		isDir := p.IsDir()
		if !isDir {
			rd.readMarks(&p, li < last)
		}
		if len(res.Found) > 0 && res.Found[0].Metacopy {
			// The data of a metadata-only copy: the next non-directory below it that is not one itself.
			if isDir {
				break
			}
			if !p.Metacopy {
				d := p // p stays on the stack: only the data object is kept
				res.Data = &d
				break
			}
			target, absPath = rd.followData(dirfd, target, absPath, res)
			continue
		}
		if len(res.Found) > 0 && !isDir {
			break // a non-directory below a directory is hidden
		}
		if !isDir {
			res.Found = append(res.Found, p)
			if p.Metacopy {
				target, absPath = rd.followData(dirfd, target, absPath, res)
				continue
			}
			break
		}
		if li < last {
			// A redirect leads to the lower layers even where the parent has no directory in them (an
			// absolute one is looked up from each layer's root); opacity matters where something lies below.
			p.Redirect = rd.Redirect(dirfd, target)
			if below || p.Redirect != "" {
				op, err := whiteout.DirOpacity(dirfd, target)
				if err != nil && err != syscall.EXDEV {
					return &Error{Layer: li, Op: "reading opacity of", Name: target, Err: err}
				}
				if op != whiteout.Opaque {
					// aufs and unionfs-fuse: a marker beside a directory makes it opaque
					if marked, err := markedHidden(li, l.Aufs, dirfd, meta, target); err != nil {
						return err
					} else if marked {
						op = whiteout.Opaque
					}
				}
				p.Opacity = op
			}
			if p.Opacity == whiteout.Opaque {
				p.Redirect = ""
			}
		}
		res.Found = append(res.Found, p)
		if p.Opacity == whiteout.Opaque {
			break
		}
		switch {
		case strings.HasPrefix(p.Redirect, "/"):
			absPath, _ = whiteout.SplitRedirect(p.Redirect)
			if len(absPath) == 0 {
				absPath = nil // a redirect to the root: ignore it
			}
		case p.Redirect != "" && sysx.CheckName(p.Redirect) == nil:
			target = p.Redirect
		}
	}
	if len(res.Found) > 0 && res.Found[0].Metacopy && res.Data == nil {
		// The data of a metadata-only copy is gone from the lower layers: show the (empty) copy rather than fail
		// every access; `check` reports it.
		res.Found[0].Metacopy = false
	}
	return nil
}

// hasBelow reports whether a layer below li has the directory v.
func hasBelow(v View, li, last int) bool {
	for lj := li + 1; lj <= last; lj++ {
		if v.Dir(lj).Fd >= 0 {
			return true
		}
	}
	return false
}

// markedHidden reports whether layer li whites name out with a marker: an aufs ".wh." file in its directory dirfd
// (only where the layer declares aufs) or a unionfs-fuse marker in its meta directory meta (-1 for none). A marker
// that cannot be read is an *Error: a guess of "absent" would show what the user deleted.
func markedHidden(li int, aufs bool, dirfd, meta int, name string) (bool, error) {
	if aufs && dirfd >= 0 {
		if hidden, err := whiteout.HasAufsWhiteout(dirfd, name); err != nil || hidden {
			return hidden, errorIf(err, li, "reading the aufs whiteout of", name)
		}
	}
	if meta >= 0 {
		hidden, err := whiteout.HasUnionfsWhiteout(meta, name)
		return hidden, errorIf(err, li, "reading the unionfs-fuse whiteout of", name)
	}
	return false, nil
}

// errorIf returns nil for a nil err, else err as an *Error of layer li.
func errorIf(err error, li int, op, name string) error {
	if err == nil {
		return nil
	}
	return &Error{Layer: li, Op: op, Name: name, Err: err}
}

// walk opens the directory at the path comps from the root of layer li, remembering the descriptor in res; ok is
// false if the layer has no directory there.
func (rd *Reader) walk(li int, comps []string, res *Result) (int, bool) {
	fd, err := sysx.OpenDir(rd.Layers[li].Root, "")
	if err != nil {
		return -1, false
	}
	for _, c := range comps {
		next, err := sysx.OpenDir(fd, c)
		unix.Close(fd)
		if err != nil {
			return -1, false
		}
		fd = next
	}
	res.tmpfds = append(res.tmpfds, fd)
	return fd, true
}

// Redirect returns the redirect of name in dirfd (the first of rd.Redirects it has), or "".
func (rd *Reader) Redirect(dirfd int, name string) string {
	for _, attr := range rd.Redirects {
		if v, err := sysx.GetxattrAll(dirfd, name, attr); err == nil && len(v) > 0 {
			return string(v)
		}
	}
	return ""
}

// readMarks reads the marks of the non-directory p: whether a regular file is a metadata-only copy (only where
// a layer lies below, to hold its data), and in the top layer its origin.
func (rd *Reader) readMarks(p *Object, below bool) {
	metacopy := below && p.Stat.Mode&unix.S_IFMT == unix.S_IFREG
	origin := rd.Origin != "" && p.Layer == 0
	if !metacopy && !origin {
		return
	}
	// Most files have no xattrs at all: one listxattr says so, instead of a getxattr per mark.
	if n, err := sysx.Listxattrat(p.Dirfd, p.Name, nil); err == nil && n == 0 {
		return
	}
	if origin {
		if v, err := sysx.GetxattrAll(p.Dirfd, p.Name, rd.Origin); err == nil {
			p.Origin = string(v)
		}
	}
	if metacopy {
		p.Metacopy = HasMark(p.Dirfd, p.Name, rd.Metacopies)
	}
}

// HasMark reports whether name in dirfd carries one of the xattrs attrs (whatever their values).
func HasMark(dirfd int, name string, attrs []string) bool {
	for _, attr := range attrs {
		if _, err := sysx.Getxattrat(dirfd, name, attr, nil); err == nil {
			return true
		}
	}
	return false
}

// followData returns where the layers below a metadata-only copy (name in dirfd) hold its data: as its redirect
// says, else under the same name. It returns the name to look for next and the absolute path to walk in each
// layer (nil if none), given the current ones.
func (rd *Reader) followData(dirfd int, name string, absPath []string, res *Result) (string, []string) {
	switch r := rd.Redirect(dirfd, name); {
	case strings.HasPrefix(r, "/"):
		if comps, _ := whiteout.SplitRedirect(r); len(comps) > 0 {
			res.DataMoved = true
			return name, comps
		}
	case r != "" && sysx.CheckName(r) == nil:
		res.DataMoved = true
		if absPath != nil { // a name beside the copy, on the path being walked
			return r, append(append([]string{}, absPath[:len(absPath)-1]...), r)
		}
		return r, nil
	}
	return name, absPath
}

// RedirectPath returns the absolute lower path that the redirect r of a directory names, given the lower path of
// the directory's parent (dirPath, "/" for the root): r itself if absolute, else r beside the directory. ok is
// false for a redirect Lookup ignores (malformed, or to the root).
func RedirectPath(dirPath, r string) (p string, ok bool) {
	switch {
	case strings.HasPrefix(r, "/"):
		if comps, _ := whiteout.SplitRedirect(r); len(comps) > 0 {
			return "/" + strings.Join(comps, "/"), true
		}
	case r != "" && sysx.CheckName(r) == nil:
		if dirPath == "/" {
			return "/" + r, true
		}
		return dirPath + "/" + r, true
	}
	return "", false
}
