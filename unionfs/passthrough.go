package unionfs

import (
	"os"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
)

// enablePassthrough turns FUSE passthrough on if the configuration asks for it, the kernel offers it (Linux 6.9),
// the daemon may register backing files (CAP_SYS_ADMIN) and every layer can back one: a layer on a stacked
// filesystem (overlayfs, another FUSE mount) cannot, and a failure at the first real open would turn
// passthrough off for the whole mount behind the daemon's back. It reports why not, or "".
func (r *Root) enablePassthrough(server *fuse.Server) string {
	switch {
	case !r.cfg.Passthrough:
		return "turned off"
	case os.Geteuid() != 0:
		return "needs root"
	case server.KernelSettings().Flags64()&fuse.CAP_PASSTHROUGH == 0:
		return "the kernel does not offer it (Linux 6.9 or later has it)"
	}
	for _, l := range r.layers.all {
		fd, ok := sampleFile(l)
		if !ok {
			continue // no regular file to try: the layer will not need to back one before one appears
		}
		id, errno := server.RegisterBackingFd(&fuse.BackingMap{Fd: int32(fd)})
		unix.Close(fd)
		if errno != 0 {
			return l.String() + " cannot back passthrough files: " + errno.Error()
		}
		server.UnregisterBackingFd(id)
	}
	r.passthrough.Store(true)
	return ""
}

// sampleFile opens a regular file of layer l for reading: an unnamed one in the upper layer, the first one a
// short breadth-first walk finds in a lower layer.
func sampleFile(l *Layer) (int, bool) {
	if l.IsUpper() {
		fd, err := sysx.Openat(l.fd, ".", unix.O_TMPFILE|unix.O_RDWR, 0600)
		return fd, err == nil
	}
	queue := []int{l.fd}
	var opened []int
	defer func() {
		for _, fd := range opened {
			unix.Close(fd)
		}
	}()
	for seen := 0; len(queue) > 0 && seen < 500; {
		dir := queue[0]
		queue = queue[1:]
		rfd, err := sysx.Openat(dir, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME, 0)
		if err != nil {
			continue
		}
		var names []string
		sysx.Getdents(rfd, func(name string, _ uint64, typ uint8) {
			if name != "." && name != ".." && (typ == unix.DT_REG || typ == unix.DT_DIR) {
				names = append(names, name)
			}
		})
		unix.Close(rfd)
		for _, name := range names {
			seen++
			var st unix.Stat_t
			if sysx.Fstatat(dir, name, &st) != nil {
				continue
			}
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFREG:
				if fd, err := sysx.Openat(dir, name, unix.O_RDONLY|unix.O_NOATIME, 0); err == nil {
					return fd, true
				}
			case unix.S_IFDIR:
				if fd, err := sysx.OpenDir(dir, name); err == nil {
					opened = append(opened, fd)
					queue = append(queue, fd)
				}
			}
		}
	}
	return -1, false
}
