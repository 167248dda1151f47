package changes

import (
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/stack"
)

// upperLayer is the upper layer directory, opened.
type upperLayer struct {
	path string
	fd   int  // O_PATH descriptor of the root
	aufs bool // its root declares aufs markers: .wh.NAME whites NAME out
	meta int  // its unionfs-fuse meta directory, or -1
	// metaName is the name of the meta directory, "" if none.
	metaName string
}

// openUpper opens the upper layer directory at path (which may be given through symlinks: it is the caller's
// argument) and reads which marker formats it declares.
func openUpper(path string) (*upperLayer, error) {
	fd, err := stack.OpenLayerDir(path)
	if err != nil {
		return nil, err
	}
	l := &upperLayer{path: path, fd: fd}
	l.aufs, l.metaName, l.meta = stack.Declarations(fd)
	return l, nil
}

func (l *upperLayer) close() {
	unix.Close(l.fd)
	if l.meta >= 0 {
		unix.Close(l.meta)
	}
}

// joinPath joins an absolute directory path and a name.
func joinPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}
