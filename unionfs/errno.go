package unionfs

import (
	"errors"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
)

// toErrno converts an error from the layers into the errno the FUSE caller gets. Errors wrapped with %w keep
// their errno; anything that carries none becomes EIO.
func toErrno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	return fs.ToErrno(err)
}

// unexpected lists errnos that mean something is wrong with a layer or the daemon rather than with the caller's
// request; they are logged.
var unexpected = map[syscall.Errno]bool{
	syscall.EIO: true, syscall.ESTALE: true, syscall.EBADF: true, syscall.EFAULT: true,
	syscall.ENOMEM: true, syscall.EMFILE: true, syscall.ENFILE: true, syscall.EUCLEAN: true,
}

// layerErrno converts err from an operation op on name in layer l, logging it if it is unexpected. Logging is
// limited to one line per second so that a failing layer cannot flood the log.
func (r *Root) layerErrno(l *Layer, op, name string, err error) syscall.Errno {
	errno := toErrno(err)
	r.stats.countErr(errno)
	if unexpected[errno] {
		now := time.Now().Unix()
		if last := r.lastLog.Load(); now != last && r.lastLog.CompareAndSwap(last, now) {
			r.logf("%s: %s %q: %v", l, op, name, err)
		}
	}
	return errno
}
