package unionfs

import (
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// serialOpens wraps the raw filesystem the FUSE server calls so that the OPEN and RELEASE requests of one kernel
// node run one at a time, each from the node's decision (Node.Open, file.Release) through go-fuse's bookkeeping of
// the node's passthrough backing file.
//
// Why: go-fuse (v2.12.1, fs/bridge.go) keeps one backing ID per node with a reference count that Open increments
// only for passthrough handles but Release decrements for every handle, after the node's Release has returned.
// The node counts its opens by mode (register, unregister) and may give a passthrough open as soon as its last
// cached open is released; without this wrapper that passthrough open could take the backing ID in the window
// between the cached handle's Release and go-fuse's decrement, which then drops the ID under it. The kernel
// either fails the open (the ID is gone before it attaches the file) or keeps the old backing file while later
// opens register a second one, and every open of the file fails with EIO (fs/fuse/iomode.c: one backing file per
// inode) until all its descriptors are closed. Serialized, go-fuse's count is zero whenever the node's passthrough
// count is, and the decrement of a cached handle never meets a backing ID.
//
// It also makes the node's counts agree with go-fuse's at every OPEN: when the node has no live passthrough open,
// go-fuse holds no backing file for it either, so an open may use another file (the upper copy) without a new
// node (see Open).
//
// Create and Tmpfile need no lock: they open a node the kernel does not know yet, so no RELEASE of it can run.
type serialOpens struct {
	fuse.RawFileSystem
	locks nodeLocks
}

func newSerialOpens(raw fuse.RawFileSystem) *serialOpens {
	return &serialOpens{RawFileSystem: raw}
}

func (s *serialOpens) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	defer s.locks.lock(in.NodeId)()
	return s.RawFileSystem.Open(cancel, in, out)
}

func (s *serialOpens) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	defer s.locks.lock(in.NodeId)()
	s.RawFileSystem.Release(cancel, in)
}

// nodeLocks is a set of mutexes keyed by kernel node ID, each alive while someone holds or waits for it.
type nodeLocks struct {
	mu sync.Mutex
	m  map[uint64]*nodeLock // protected by mu
}

type nodeLock struct {
	sync.Mutex
	users int // holders and waiters; protected by nodeLocks.mu
}

// lock locks the mutex of node id and returns its unlock.
func (l *nodeLocks) lock(id uint64) func() {
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[uint64]*nodeLock)
	}
	nl := l.m[id]
	if nl == nil {
		nl = &nodeLock{}
		l.m[id] = nl
	}
	nl.users++
	l.mu.Unlock()
	nl.Lock()
	return func() {
		nl.Unlock()
		l.mu.Lock()
		if nl.users--; nl.users == 0 {
			delete(l.m, id)
		}
		l.mu.Unlock()
	}
}
