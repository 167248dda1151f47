package unionfs

import (
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// StatsXattr is the xattr of the union's root directory that holds the daemon's counters as JSON (see Stats).
// It is read-only, never listed, and readable by every user who may read the root directory: `ltsp-unionfs
// stats MNT` and `getfattr -n user.ltsp-unionfs.stats MNT` print it.
const StatsXattr = "user.ltsp-unionfs.stats"

// op names a FUSE operation for the request counters.
type op int

const (
	opLookup op = iota
	opGetattr
	opSetattr
	opReadlink
	opOpen
	opCreate
	opTmpfile
	opMkdir
	opMknod
	opSymlink
	opLink
	opUnlink
	opRmdir
	opRename
	opReaddir
	opGetxattr
	opListxattr
	opSetxattr
	opRemovexattr
	opStatfs
	opRead
	opWrite
	opFsync
	opRelease
	opLseek
	opFallocate
	opCopyFileRange
	opForget
	opCount
)

var opNames = [opCount]string{"lookup", "getattr", "setattr", "readlink", "open", "create", "tmpfile", "mkdir",
	"mknod", "symlink", "link", "unlink", "rmdir", "rename", "readdir", "getxattr", "listxattr",
	"setxattr", "removexattr", "statfs", "read", "write", "fsync", "release", "lseek", "fallocate",
	"copy_file_range", "forget"}

// stats are the daemon's counters. All fields are updated atomically.
type stats struct {
	ops              [opCount]atomic.Uint64
	lowerLookups     atomic.Uint64      // name lookups in lower layer directories
	upperLookups     atomic.Uint64      // name lookups in upper layer directories
	layerReaddirs    atomic.Uint64      // layer directories read for merged listings
	copyUps          atomic.Uint64      // non-directories copied up with their data
	copyUpBytes      atomic.Uint64      // data bytes those copies hold (holes excluded)
	metaCopyUps      atomic.Uint64      // metadata-only copies
	dirCopyUps       atomic.Uint64      // directories copied up
	passthroughOpens atomic.Uint64      // opens served by FUSE passthrough (reads and writes bypass the daemon)
	cachedOpens      atomic.Uint64      // opens served through the daemon and the kernel's page cache
	staleRetries     atomic.Uint64      // opens answered ESTALE so that the kernel looks a copied-up name up again
	errors           [256]atomic.Uint64 // errors that came from a layer, by errno
	replies          [256]atomic.Uint64 // every error reply sent to the kernel, by errno (replyCounter)
	panics           atomic.Uint64      // requests whose handler panicked (answered EIO; see panicReply)
}

// count records one request of operation o.
func (s *stats) count(o op) { s.ops[o].Add(1) }

// countErr records an errno returned because of a layer error. ENODATA (an absent xattr) is routine and not
// counted.
func (s *stats) countErr(errno syscall.Errno) {
	if errno > 0 && errno != syscall.ENODATA && int(errno) < len(s.errors) {
		s.errors[errno].Add(1)
	}
}

// Stats is a snapshot of the daemon's counters, as StatsXattr holds them.
type Stats struct {
	Requests         map[string]uint64 `json:"requests"`
	LowerLookups     uint64            `json:"lower_lookups"`
	UpperLookups     uint64            `json:"upper_lookups"`
	LayerReaddirs    uint64            `json:"layer_readdirs"`
	CopyUps          uint64            `json:"copy_ups"`
	CopyUpBytes      uint64            `json:"copy_up_bytes"`
	MetadataCopyUps  uint64            `json:"metadata_copy_ups"`
	DirCopyUps       uint64            `json:"dir_copy_ups"`
	PassthroughOpens uint64            `json:"passthrough_opens"`
	CachedOpens      uint64            `json:"cached_opens"`
	StaleRetries     uint64            `json:"stale_retries"`
	Panics           uint64            `json:"panics"` // requests whose handler panicked: bugs, answered EIO
	Passthrough      bool              `json:"passthrough"`
	Errors           map[string]uint64 `json:"errors"`  // errors that came from a layer, by errno
	Replies          map[string]uint64 `json:"replies"` // every error reply sent to the kernel, by errno
	// Health of the daemon process, for spotting leaks: its goroutines, open descriptors and resident memory.
	Goroutines int    `json:"goroutines"`
	OpenFiles  int    `json:"open_files"`
	RSSBytes   uint64 `json:"rss_bytes"`
}

// Stats returns a snapshot of the counters.
func (r *Root) Stats() Stats {
	s := &r.stats
	out := Stats{Requests: map[string]uint64{}, Errors: map[string]uint64{}, Replies: map[string]uint64{},
		LowerLookups: s.lowerLookups.Load(), UpperLookups: s.upperLookups.Load(), LayerReaddirs: s.layerReaddirs.Load(),
		CopyUps: s.copyUps.Load(), CopyUpBytes: s.copyUpBytes.Load(), MetadataCopyUps: s.metaCopyUps.Load(),
		DirCopyUps: s.dirCopyUps.Load(), PassthroughOpens: s.passthroughOpens.Load(), CachedOpens: s.cachedOpens.Load(),
		StaleRetries: s.staleRetries.Load(), Panics: s.panics.Load(), Passthrough: r.passthrough.Load()}
	out.Goroutines = runtime.NumGoroutine()
	out.OpenFiles, out.RSSBytes = r.processUsage()
	for i := range s.ops {
		if v := s.ops[i].Load(); v > 0 {
			out.Requests[opNames[i]] = v
		}
	}
	for i := range s.errors {
		if v := s.errors[i].Load(); v > 0 {
			out.Errors[errnoName(syscall.Errno(i))] = v
		}
		if v := s.replies[i].Load(); v > 0 {
			out.Replies[errnoName(syscall.Errno(i))] = v
		}
	}
	return out
}

// processUsage counts the daemon's open descriptors and reads its resident memory from /proc (through the
// descriptor opened at start); zeros where /proc is not there.
func (r *Root) processUsage() (files int, rss uint64) {
	if r.procfd < 0 {
		return 0, 0
	}
	if fd, err := unix.Openat(r.procfd, "self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		f := os.NewFile(uintptr(fd), "fd")
		names, _ := f.Readdirnames(-1)
		f.Close()
		files = len(names) - 1 // less the descriptor that read them
	}
	if fd, err := unix.Openat(r.procfd, "self/statm", unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
		f := os.NewFile(uintptr(fd), "statm")
		var size, resident uint64
		fmt.Fscan(f, &size, &resident)
		f.Close()
		rss = resident * uint64(os.Getpagesize())
	}
	return files, rss
}

// statsJSON renders the counters for StatsXattr.
func (r *Root) statsJSON() []byte {
	b, _ := json.Marshal(r.Stats())
	return b
}

// errnoName returns the symbolic name of an errno (ENOENT), or its number.
func errnoName(e syscall.Errno) string {
	if n, ok := errnoNames[e]; ok {
		return n
	}
	return e.Error()
}

var errnoNames = map[syscall.Errno]string{
	syscall.EPERM: "EPERM", syscall.ENOENT: "ENOENT", syscall.EIO: "EIO", syscall.EBADF: "EBADF",
	syscall.EACCES: "EACCES", syscall.EEXIST: "EEXIST", syscall.EXDEV: "EXDEV", syscall.ENOTDIR: "ENOTDIR",
	syscall.EISDIR: "EISDIR", syscall.EINVAL: "EINVAL", syscall.ENOSPC: "ENOSPC", syscall.EROFS: "EROFS",
	syscall.ENAMETOOLONG: "ENAMETOOLONG", syscall.ENOTEMPTY: "ENOTEMPTY", syscall.ELOOP: "ELOOP",
	syscall.ENODATA: "ENODATA", syscall.ESTALE: "ESTALE", syscall.EDQUOT: "EDQUOT", syscall.ENOTSUP: "EOPNOTSUPP",
	syscall.EMFILE: "EMFILE", syscall.ENFILE: "ENFILE", syscall.ENOMEM: "ENOMEM", syscall.ERANGE: "ERANGE",
	syscall.EBUSY: "EBUSY", syscall.EMLINK: "EMLINK", syscall.ETXTBSY: "ETXTBSY", syscall.EFBIG: "EFBIG",
	syscall.ENOSYS: "ENOSYS", syscall.ENOTTY: "ENOTTY", syscall.EINTR: "EINTR", syscall.EAGAIN: "EAGAIN",
	syscall.E2BIG: "E2BIG", syscall.ENXIO: "ENXIO", syscall.ENOTCONN: "ENOTCONN",
}
