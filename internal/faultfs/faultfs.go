// Package faultfs is a fault-injecting loopback filesystem for tests: it mounts a directory with go-fuse's
// loopback node and can be told at run time to fail lookups, opens, reads and getattrs of chosen paths with an
// errno (always, or only the first N times), to refuse every xattr operation with EOPNOTSUPP (as an NFS export
// without xattr support does), to report DT_UNKNOWN in directory listings, and to answer every request slowly.
//
// The mount caches nothing in the kernel (entry and attribute timeouts 0, no passthrough, no readdirplus), so
// every access of a client reaches the rules.
package faultfs

import (
	"fmt"
	"io"
	"log"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// Op is a set of operations a Rule applies to.
type Op uint32

// The operations a Rule can fail.
const (
	OpLookup   Op = 1 << iota // LOOKUP of the path (the name in its parent)
	OpOpen                    // OPEN of the path
	OpRead                    // READ of an open file of the path
	OpGetattr                 // GETATTR of the path
	OpCreate                  // CREATE, MKDIR, MKNOD, SYMLINK, LINK of the new path, and RENAME with RENAME_WHITEOUT
	OpWrite                   // WRITE to an open file of the path
	OpSetxattr                // SETXATTR of the path
	OpRename                  // RENAME of the path (the source)
	OpReaddir                 // OPENDIR of the path (so its listing fails)
)

// Rule makes operations on matching paths fail.
type Rule struct {
	// Pattern is matched with path.Match against the path relative to the mount's root, without a leading
	// slash ("dir/file", "dir/*"); "" matches every path.
	Pattern string
	// Ops are the operations that fail.
	Ops Op
	// Errno is what they fail with.
	Errno syscall.Errno
	// Skip lets the first Skip matching operations pass (a quota that runs out after so many allocations).
	Skip int
	// Times limits the failures to the first Times matching operations after those skipped; 0 means every time.
	Times int
}

type rule struct {
	Rule
	hits atomic.Int64 // matching operations seen
}

// FS is a mounted fault-injecting loopback filesystem. Its methods may be called at any time from any goroutine.
type FS struct {
	// Dir is the directory served; Mountpoint is where it is mounted.
	Dir, Mountpoint string

	server  *fuse.Server
	root    *node
	connDir string // /sys/fs/fuse/connections/N of the mount

	mu        sync.Mutex
	rules     []*rule                // protected by mu
	stale     map[fs.StableAttr]bool // nodes made stale; protected by mu
	noXattr   atomic.Bool
	dtUnknown atomic.Bool
	zeroBlk   atomic.Bool
	latency   atomic.Int64 // nanoseconds added to every operation

	injected atomic.Int64 // failures injected so far
	ops      atomic.Int64 // operations seen (those the rules or the latency apply to)
}

// Mount serves dir at mountpoint (both must exist). It needs root (the mount is made with mount(2)).
func Mount(dir, mountpoint string) (*FS, error) {
	if err := mountFusectl(); err != nil {
		return nil, err
	}
	f := &FS{Dir: dir, Mountpoint: mountpoint}
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return nil, err
	}
	lr := &fs.LoopbackRoot{Path: dir, Dev: uint64(st.Dev)}
	root := &node{LoopbackNode: &fs.LoopbackNode{RootData: lr}, fs: f}
	lr.RootNode = root
	f.root = root
	zero := time.Duration(0)
	opts := &fs.Options{
		EntryTimeout:    &zero,
		AttrTimeout:     &zero,
		NegativeTimeout: &zero,
		MountOptions: fuse.MountOptions{
			AllowOther:         true,
			DirectMountStrict:  true,
			FsName:             "faultfs",
			Name:               "faultfs",
			DisableReadDirPlus: true,
			// Reads must reach the daemon, which fails them.
			DisabledCapabilities: fuse.CAP_PASSTHROUGH,
			// After Abort, go-fuse complains about every reply it can no longer send.
			Logger: log.New(io.Discard, "", 0),
		},
	}
	server, err := fs.Mount(mountpoint, root, opts)
	if err != nil {
		return nil, err
	}
	f.server = server
	if err := syscall.Stat(mountpoint, &st); err != nil {
		f.server.Unmount()
		return nil, err
	}
	f.connDir = fmt.Sprintf("%s/%d", fusectlDir, unix.Minor(st.Dev))
	if _, err := os.Stat(f.connDir + "/abort"); err != nil {
		f.server.Unmount()
		return nil, fmt.Errorf("faultfs needs the FUSE control filesystem to abort its connection: %w", err)
	}
	return f, nil
}

// fusectlDir is where the FUSE control filesystem lists connections.
const fusectlDir = "/sys/fs/fuse/connections"

// mountFusectl mounts the FUSE control filesystem unless it is mounted. systemd mounts it at boot; a machine
// without systemd (a container, a minimal CI image) may not have it, and without it a connection cannot be
// aborted: Unmount would wait for a client that holds the layer open, for ever.
func mountFusectl() error {
	var st, parent unix.Stat_t
	if err := unix.Stat(fusectlDir, &st); err != nil {
		return fmt.Errorf("%s: %w (is the fuse module loaded?)", fusectlDir, err)
	}
	if err := unix.Stat(fusectlDir+"/..", &parent); err == nil && parent.Dev != st.Dev {
		return nil // mounted
	}
	if err := unix.Mount("fusectl", fusectlDir, "fusectl", 0, ""); err != nil && err != unix.EBUSY {
		return fmt.Errorf("mounting fusectl on %s: %w", fusectlDir, err)
	}
	return nil
}

// Unmount aborts the FUSE connection and unmounts. Aborting first matters: a client holding descriptors or a
// clone of the mount (ltsp-unionfs clones its layers' mounts) would otherwise keep the connection alive, and
// the server would wait for it forever. Clients get ENOTCONN from then on.
func (f *FS) Unmount() error {
	f.Abort()
	err := f.server.Unmount()
	if err != nil {
		// Unmounted already (a test detached it): the aborted connection ends the server anyway.
		err = syscall.Unmount(f.Mountpoint, syscall.MNT_DETACH)
		if err == syscall.EINVAL {
			err = nil
		}
	}
	f.server.Wait()
	return err
}

// Abort cuts the FUSE connection, as if the server died: every operation of a client fails with ENOTCONN.
func (f *FS) Abort() {
	if f.connDir != "" {
		os.WriteFile(f.connDir+"/abort", []byte("1\n"), 0)
	}
}

// AddRule adds a failure rule.
func (f *FS) AddRule(r Rule) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = append(f.rules, &rule{Rule: r})
}

// Hits returns how many operations matched the rules so far (skipped and failed ones included).
func (f *FS) Hits() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n int64
	for _, r := range f.rules {
		n += r.hits.Load()
	}
	return n
}

// ClearRules removes every rule.
func (f *FS) ClearRules() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rules = nil
}

// MarkStale makes the node the kernel knows for path p (relative to the root, looked up before) answer ESTALE
// to every operation on it or in it, as an NFS file handle does once the server has replaced the object: a
// client holding a descriptor of it gets ESTALE for good, while a fresh lookup of the name finds the object
// again, as a new node. It reports whether the node was known.
func (f *FS) MarkStale(p string) bool {
	in := f.root.EmbeddedInode()
	for _, c := range strings.Split(path.Clean(p), "/") {
		if in = in.GetChild(c); in == nil {
			return false
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stale == nil {
		f.stale = map[fs.StableAttr]bool{}
	}
	f.stale[in.StableAttr()] = true
	return true
}

// isStale reports whether the node with identity id was made stale.
func (f *FS) isStale(id fs.StableAttr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stale[id] {
		f.injected.Add(1)
		return true
	}
	return false
}

// SetNoXattr makes every xattr operation fail with EOPNOTSUPP (on) or pass through (off).
func (f *FS) SetNoXattr(on bool) { f.noXattr.Store(on) }

// SetDTUnknown makes directory listings report DT_UNKNOWN for every entry (on), as some NFS servers do.
func (f *FS) SetDTUnknown(on bool) { f.dtUnknown.Store(on) }

// SetZeroBlocks makes attributes report no allocated blocks (on), as compressing or deduplicating servers may
// for files that do hold data.
func (f *FS) SetZeroBlocks(on bool) { f.zeroBlk.Store(on) }

// SetLatency adds d to every operation.
func (f *FS) SetLatency(d time.Duration) { f.latency.Store(int64(d)) }

// Injected returns how many operations failed because of a rule or SetNoXattr.
func (f *FS) Injected() int64 { return f.injected.Load() }

// Ops returns how many operations the filesystem answered.
func (f *FS) Ops() int64 { return f.ops.Load() }

// fault returns the errno the operation op on the path p must fail with, or 0, after the configured latency.
func (f *FS) fault(op Op, p string) syscall.Errno {
	f.ops.Add(1)
	if d := f.latency.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, r := range f.rules {
		if r.Ops&op == 0 {
			continue
		}
		if ok, _ := path.Match(r.Pattern, p); !ok && r.Pattern != "" {
			continue
		}
		n := r.hits.Add(1) - int64(r.Skip)
		if n > 0 && (r.Times == 0 || n <= int64(r.Times)) {
			f.injected.Add(1)
			return r.Errno
		}
	}
	return 0
}

// xattrFault returns EOPNOTSUPP while SetNoXattr is on.
func (f *FS) xattrFault() syscall.Errno {
	f.ops.Add(1)
	if d := f.latency.Load(); d > 0 {
		time.Sleep(time.Duration(d))
	}
	if f.noXattr.Load() {
		f.injected.Add(1)
		return syscall.EOPNOTSUPP
	}
	return 0
}
