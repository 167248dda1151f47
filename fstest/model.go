package fstest

import (
	"fmt"
	"path"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// A model is what one stress worker's directory must hold: every name, what it is, and for files their bytes.
// Names that are hard links share one *mobj. Operations update the model only after they succeeded on the
// filesystem; an update the model finds impossible (rmdir of a non-empty directory that the filesystem allowed)
// is a failure in itself.
type model struct {
	names map[string]*mobj // path relative to the worker's directory -> object
	umask uint32
}

// mobj is one object of the model.
type mobj struct {
	typ    uint32 // unix.S_IFREG, S_IFDIR, S_IFLNK or S_IFIFO
	perm   uint32 // mode bits below S_IFMT
	data   []byte
	target string
	xattrs map[string]string // user.* xattrs, name without the prefix
}

func newModel(umask uint32) *model { return &model{names: map[string]*mobj{}, umask: umask} }

// dirOK reports whether the parent of p is a directory in the model (the worker's root always is).
func (m *model) dirOK(p string) bool {
	dir := path.Dir(p)
	if dir == "." {
		return true
	}
	o := m.names[dir]
	return o != nil && o.typ == unix.S_IFDIR
}

// children returns the names directly under directory p ("" for the worker's root), sorted.
func (m *model) children(p string) []string {
	var out []string
	for name := range m.names {
		dir := path.Dir(name)
		if dir == "." {
			dir = ""
		}
		if dir == p {
			out = append(out, path.Base(name))
		}
	}
	sort.Strings(out)
	return out
}

// links counts the names that refer to o.
func (m *model) links(o *mobj) int {
	n := 0
	for _, x := range m.names {
		if x == o {
			n++
		}
	}
	return n
}

// under lists p and every name beneath it.
func (m *model) under(p string) []string {
	var out []string
	for name := range m.names {
		if name == p || strings.HasPrefix(name, p+"/") {
			out = append(out, name)
		}
	}
	return out
}

// move renames p and its subtree to p2.
func (m *model) move(p, p2 string) {
	moved := map[string]*mobj{}
	for _, name := range m.under(p) {
		moved[p2+strings.TrimPrefix(name, p)] = m.names[name]
		delete(m.names, name)
	}
	for k, v := range moved {
		m.names[k] = v
	}
}

// fileOf returns the regular file at p, or an error naming why the successful operation op is impossible.
func (m *model) fileOf(p, op string) (*mobj, error) {
	o := m.names[p]
	if o == nil || o.typ != unix.S_IFREG {
		return nil, fmt.Errorf("%s %s succeeded, but the model has no regular file there", op, p)
	}
	return o, nil
}

// apply records the effect of op, which succeeded on the filesystem. It returns an error when the model says
// the operation could not have succeeded.
func (m *model) apply(op Op) error {
	p, p2 := op.Path, op.Path2
	src := m.names[p]
	switch op.Kind {
	case "create":
		if src == nil {
			if !m.dirOK(p) {
				return fmt.Errorf("create %s succeeded without a parent directory", p)
			}
			m.names[p] = &mobj{typ: unix.S_IFREG, perm: uint32(op.N) &^ m.umask, data: []byte(op.Data),
				xattrs: map[string]string{}}
			return nil
		}
		o, err := m.fileOf(p, "create")
		if err != nil {
			return err
		}
		o.data = []byte(op.Data)
	case "write":
		o, err := m.fileOf(p, "write")
		if err != nil {
			return err
		}
		o.data = writeAt(o.data, op.N, []byte(op.Data))
	case "append":
		o, err := m.fileOf(p, "append")
		if err != nil {
			return err
		}
		o.data = append(o.data, op.Data...)
	case "mmapwrite":
		o, err := m.fileOf(p, "mmapwrite")
		if err != nil {
			return err
		}
		if off, data := mmapRegion(int64(len(o.data)), op.N, op.Data); len(data) > 0 {
			copy(o.data[off:], data)
		}
	case "truncate":
		o, err := m.fileOf(p, "truncate")
		if err != nil {
			return err
		}
		o.data = resize(o.data, op.N)
	case "fsync", "read":
		if src == nil {
			return fmt.Errorf("%s %s succeeded, but the model has nothing there", op.Kind, p)
		}
	case "mkdir", "mkfifo", "symlink":
		if src != nil || !m.dirOK(p) {
			return fmt.Errorf("%s %s succeeded where the name exists or its parent is no directory", op.Kind, p)
		}
		o := &mobj{xattrs: map[string]string{}}
		switch op.Kind {
		case "mkdir":
			o.typ, o.perm = unix.S_IFDIR, uint32(op.N)&^m.umask
		case "mkfifo":
			o.typ, o.perm = unix.S_IFIFO, uint32(op.N)&^m.umask
		default:
			o.typ, o.perm, o.target = unix.S_IFLNK, 0777, op.Data
		}
		m.names[p] = o
	case "unlink":
		if src == nil || src.typ == unix.S_IFDIR {
			return fmt.Errorf("unlink %s succeeded, but the model has no non-directory there", p)
		}
		delete(m.names, p)
	case "rmdir":
		if src == nil || src.typ != unix.S_IFDIR || len(m.children(p)) > 0 {
			return fmt.Errorf("rmdir %s succeeded, but the model has no empty directory there", p)
		}
		delete(m.names, p)
	case "link":
		if src == nil || src.typ == unix.S_IFDIR || m.names[p2] != nil || !m.dirOK(p2) {
			return fmt.Errorf("link %s %s succeeded against the model", p, p2)
		}
		m.names[p2] = src
	case "rename":
		return m.rename(p, p2, uint(op.N))
	case "chmod":
		if src == nil || src.typ == unix.S_IFLNK {
			return fmt.Errorf("chmod %s succeeded, but the model has no object there a chmod reaches", p)
		}
		src.perm = uint32(op.N) & 07777
	case "setxattr", "removexattr":
		if src == nil || src.typ == unix.S_IFLNK {
			return fmt.Errorf("%s %s succeeded on a name the model has no xattrs for", op.Kind, p)
		}
		if op.Kind == "setxattr" {
			src.xattrs[op.Path2] = op.Data
		} else {
			if _, ok := src.xattrs[op.Path2]; !ok {
				return fmt.Errorf("removexattr %s %s succeeded, but the model has no such xattr", p, op.Path2)
			}
			delete(src.xattrs, op.Path2)
		}
	default:
		return fmt.Errorf("the model does not know %q", op.Kind)
	}
	return nil
}

// rename applies renameat2(p, p2, flags).
func (m *model) rename(p, p2 string, flags uint) error {
	src, dst := m.names[p], m.names[p2]
	bad := func(why string) error {
		return fmt.Errorf("rename %s %s (flags %d) succeeded, but %s", p, p2, flags, why)
	}
	if src == nil {
		return bad("the source does not exist")
	}
	if !m.dirOK(p2) {
		return bad("the target's parent is no directory")
	}
	if p2 == p || strings.HasPrefix(p2, p+"/") && flags&unix.RENAME_EXCHANGE == 0 {
		if p2 == p {
			return nil
		}
		return bad("the target lies inside the source")
	}
	switch {
	case flags&unix.RENAME_EXCHANGE != 0:
		if dst == nil {
			return bad("the target does not exist")
		}
		if strings.HasPrefix(p2, p+"/") || strings.HasPrefix(p, p2+"/") {
			return bad("one lies inside the other")
		}
		tmp := "\x00exchange"
		m.move(p, tmp)
		m.move(p2, p)
		m.move(tmp, p2)
		return nil
	case flags&unix.RENAME_NOREPLACE != 0 && dst != nil:
		return bad("the target exists")
	}
	if dst == src {
		return nil // two links to one file: rename does nothing
	}
	if dst != nil {
		switch {
		case src.typ == unix.S_IFDIR && (dst.typ != unix.S_IFDIR || len(m.children(p2)) > 0):
			return bad("the target is not an empty directory")
		case src.typ != unix.S_IFDIR && dst.typ == unix.S_IFDIR:
			return bad("the target is a directory")
		}
		delete(m.names, p2)
	}
	m.move(p, p2)
	return nil
}

// writeAt returns b with data written at off, zero-filled up to off.
func writeAt(b []byte, off int64, data []byte) []byte {
	if end := off + int64(len(data)); end > int64(len(b)) {
		b = resize(b, end)
	}
	copy(b[off:], data)
	return b
}

// resize returns b cut or zero-extended to n bytes.
func resize(b []byte, n int64) []byte {
	if n <= int64(len(b)) {
		return b[:n:n]
	}
	return append(b, make([]byte, n-int64(len(b)))...)
}

// mmapRegion is where a "mmapwrite" of data at off lands in a file of size bytes: a mapping cannot extend the
// file, so the write is moved and cut to fit (nothing when the file is empty).
func mmapRegion(size, off int64, data string) (int64, []byte) {
	if size == 0 {
		return 0, nil
	}
	off %= size
	if int64(len(data)) > size-off {
		data = data[:size-off]
	}
	return off, []byte(data)
}
