package unionfs

import (
	"fmt"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hanwen/go-fuse/v2/splice"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/stack"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Config holds the mount-wide settings of a union. The zero value is not useful; start from DefaultConfig.
type Config struct {
	// EntryTimeout, AttrTimeout and NegativeTimeout say how long the kernel may cache names, attributes and
	// absent names (flags --entry-timeout, --attr-timeout, --negative-timeout). Every change goes through the
	// daemon, which tells the kernel what it changed, so long timeouts are safe.
	EntryTimeout, AttrTimeout, NegativeTimeout time.Duration

	// ReadOnly refuses every change with EROFS (mount option ro).
	ReadOnly bool

	// Passthrough lets the kernel read and write layer files itself (FUSE passthrough) where it can (mount
	// option nopassthrough turns it off).
	Passthrough bool
	// PassthroughMinSize is the size from which files opened only for reading use passthrough (mount option
	// passthrough_min_size); smaller ones go through the page cache, which costs fewer requests per open (see
	// Node.register). Files opened for writing use passthrough whatever their size.
	PassthroughMinSize int64

	// Whiteout names the marker format written into the upper layer (flag --whiteout): "overlay", "aufs" or
	// "unionfs-fuse". Empty means the format the upper layer already holds, else overlay for a root daemon and aufs
	// for others (they can neither make the character devices nor set the trusted xattrs overlay markers are).
	Whiteout string
	// DefaultWhiteout is the format written when Whiteout is empty and the upper layer holds no markers yet;
	// empty means overlay for a root daemon and aufs for others. The unionfs-fuse command line sets
	// "unionfs-fuse", so that the upper layer stays readable by unionfs-fuse.
	DefaultWhiteout string

	// Logger receives diagnostics: unexpected errors of layer filesystems, and with Debug every FUSE request.
	Logger *log.Logger
	// Debug logs every FUSE request and reply (flag --debug).
	Debug bool

	// MountOptions are passed to go-fuse: permissions, allow_other, suid and dev, the FUSE device name. See
	// package main for what ltsp-unionfs sets.
	MountOptions fuse.MountOptions
}

// DefaultConfig returns the settings ltsp-unionfs mounts with unless told otherwise.
func DefaultConfig() Config {
	return Config{
		EntryTimeout:    time.Hour,
		AttrTimeout:     time.Hour,
		NegativeTimeout: time.Hour,
		Passthrough:     true,
		// Shared libraries and executables below 1 MiB are most of what a boot opens; the large ones, and
		// data files, stream without a request per read.
		PassthroughMinSize: 1 << 20,
		Logger:             log.New(log.Writer(), "ltsp-unionfs: ", 0),
	}
}

// Root is the root directory of a union and holds the mount-wide state.
type Root struct {
	Node

	layers *Layers         // immutable
	inos   *inoMap         // union inode numbers
	cfg    Config          // immutable
	rootID uint64          // inode number of the root directory
	format whiteout.Format // the marker format written into the upper layer; immutable
	priv   string          // prefix of the union's private xattrs: trusted.overlay. (root) or user.overlay.
	reader *stack.Reader   // reads the layers (lookups, listings); immutable

	lastLog     atomic.Int64 // Unix second of the last logged layer error
	stats       stats        // the counters of Stats
	passthrough atomic.Bool  // opens may use FUSE passthrough (set once the kernel has said it supports it)
	procfd      int          // /proc, opened at start: it must still work after switch_root moves /proc; or -1

	forgotten forgetQueue // nodes the kernel forgot, whose descriptors close after forgetGrace

	staleMu   sync.Mutex
	staleGens map[uint64]uint64 // inode number → latest generation of a stale node still registered; protected by staleMu
}

// New makes the root of a union of layers. The union takes over the layers' descriptors.
func New(layers *Layers, cfg Config) (*Root, error) {
	r := &Root{layers: layers, inos: newInoMap(), cfg: cfg, priv: "trusted.overlay.", procfd: -1}
	if fd, err := unix.Open("/proc", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		r.procfd = fd
	}
	if r.cfg.Logger == nil {
		r.cfg.Logger = log.New(log.Writer(), "ltsp-unionfs: ", 0)
	}
	if os.Geteuid() != 0 {
		r.priv = "user.overlay."
	}
	if err := r.chooseFormat(); err != nil {
		return nil, err
	}
	r.reader = r.newReader()
	// Fixed tag order: the topmost lower's device gets tag 0, so its files keep their inode numbers.
	for _, l := range layers.Lowers() {
		r.inos.register(l.dev)
	}
	r.inos.register(layers.Upper().dev)

	// The root directory merges the layer roots, subject to the same opacity rules as any directory.
	var dirs []layerDir
	for i, l := range layers.all {
		fd, err := sysx.OpenDir(l.fd, "")
		if err != nil {
			for _, d := range dirs {
				unix.Close(d.fd)
			}
			return nil, fmt.Errorf("%s: %w", l, err)
		}
		d := layerDir{layer: l, fd: fd, dev: l.dev, ino: l.ino}
		stop := false
		if i < len(layers.all)-1 {
			op, err := whiteout.DirOpacity(fd, "")
			if err != nil {
				r.logf("%s: reading opacity: %v", l, err)
			}
			d.opacity = op
			stop = op == whiteout.Opaque
		}
		dirs = append(dirs, d)
		if stop {
			break
		}
	}
	r.root, r.dirs, r.anon, r.owned = r, dirs, -1, &fdSet{}
	for _, d := range dirs {
		r.owned.fds = append(r.owned.fds, d.fd)
	}
	for _, l := range layers.all {
		if l.meta >= 0 {
			if m, err := sysx.OpenDir(l.meta, ""); err == nil {
				r.metas = append(r.metas, metaDir{layer: l, fd: m})
				r.owned.fds = append(r.owned.fds, m)
			}
		}
	}
	r.rootID = r.inos.ino(stackIdentity(dirs))
	return r, nil
}

// chooseFormat settles the marker format written into the upper layer (see Config.Whiteout) and prepares the
// upper layer for it.
func (r *Root) chooseFormat() error {
	up := r.layers.Upper()
	switch {
	case r.cfg.Whiteout != "":
		f, err := whiteout.ByName(r.cfg.Whiteout)
		if err != nil {
			return err
		}
		r.format = f
	default:
		if f, ok := whiteout.Detect(up.fd); ok {
			r.format = f
		} else if r.cfg.DefaultWhiteout != "" {
			f, err := whiteout.ByName(r.cfg.DefaultWhiteout)
			if err != nil {
				return err
			}
			r.format = f
		} else if os.Geteuid() == 0 {
			r.format = whiteout.Overlay{}
		} else {
			r.format = whiteout.Aufs{}
		}
	}
	r.format = whiteout.ForUpper(r.format, up.fd)
	if !r.cfg.ReadOnly {
		if err := r.format.Declare(up.fd); err != nil {
			return fmt.Errorf("%s: preparing it for %s markers: %w", up, r.format.Name(), err)
		}
	}
	up.readDeclarations()
	return nil
}

// Format returns the marker format the union writes.
func (r *Root) Format() whiteout.Format { return r.format }

// Layers returns the layers of the union.
func (r *Root) Layers() *Layers { return r.layers }

// FSOptions returns the go-fuse options for mounting r.
func (r *Root) FSOptions() *fs.Options {
	entry, attr, neg := r.cfg.EntryTimeout, r.cfg.AttrTimeout, r.cfg.NegativeTimeout
	opts := &fs.Options{
		MountOptions:    r.cfg.MountOptions,
		EntryTimeout:    &entry,
		AttrTimeout:     &attr,
		NegativeTimeout: &neg,
		// Permissions are the kernel's business (default_permissions); mode 0 must stay 0.
		NullPermissions: true,
		RootStableAttr:  &fs.StableAttr{Ino: r.rootID, Gen: 1},
	}
	opts.MountOptions.Debug = r.cfg.Debug
	// O_TRUNC comes with OPEN instead of a separate SETATTR: a lower file truncated on open needs no data copy.
	opts.MountOptions.ExtraCapabilities |= fuse.CAP_ATOMIC_O_TRUNC
	// The daemon clears setuid/setgid on writes (killpriv.go), so the kernel need not ask for
	// security.capability before every write.
	opts.MountOptions.ExtraCapabilities |= fuse.CAP_HANDLE_KILLPRIV_V2
	// The kernel enforces POSIX ACLs (lower files have them; file capabilities and ACLs must work as on tmpfs).
	opts.MountOptions.EnableAcl = true
	// A symlink's target never changes (a new target is a new inode), so the kernel may keep what it read. Without
	// this every readlink is a round trip and also invalidates the link's cached atime, costing a GETATTR more.
	opts.MountOptions.EnableSymlinkCaching = true
	if opts.MountOptions.Logger == nil {
		opts.MountOptions.Logger = r.cfg.Logger
	}
	opts.Logger = r.cfg.Logger
	opts.MountOptions.PanicHandler = r.panicReply
	return opts
}

// Mount mounts the union r on mountpoint and starts serving it. It returns once the kernel has answered the
// mount, so the mount is live when it returns without error.
func Mount(mountpoint string, r *Root) (*fuse.Server, error) {
	// go-fuse empties its splice pipes into /dev/null, which it opens the first time it needs to, and panics if
	// it cannot: after switch_root, /dev is no longer where the daemon's root is. Open it now.
	if p, err := splice.Get(); err == nil {
		splice.Done(p)
	}
	opts := r.FSOptions()
	server, err := fuse.NewServer(newReplyCounter(newSerialOpens(newHandleFreeDirs(fs.NewNodeFS(r, opts))), &r.stats), mountpoint,
		&opts.MountOptions)
	if err != nil {
		return nil, err
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		server.Unmount()
		return nil, err
	}
	if why := r.enablePassthrough(server); why != "" && r.cfg.Passthrough {
		r.logf("FUSE passthrough off: %s", why)
	}
	return server, nil
}

func (r *Root) logf(format string, args ...any) {
	r.cfg.Logger.Printf(format, args...)
}
