package unionfs

import (
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
)

// forgetGrace is how long a forgotten node keeps its descriptors (see OnForget).
const forgetGrace = 2 * time.Second

// OnForget is called when the kernel has forgotten the node. Its descriptors are closed after forgetGrace, if
// the node is still forgotten then; only the descriptor of an upper object that has no name left goes at once
// (closeNameless), since no lookup can find the node again through it.
//
// Why not at once: go-fuse calls OnForget after it has dropped the node's registration, outside its locks. A
// LOOKUP that found the node just before (as the parent's child, or by its identity in NewInode) registers it
// again under its old node ID, before or after this call, and the kernel then uses a node whose descriptors
// would be closed: every request on it, and the kernel's LOOKUP_REVAL retry (which gets the same node back),
// would fail with ESTALE. Such a lookup registers the node within microseconds; a node registered again is
// closed at its next OnForget instead.
func (n *Node) OnForget() {
	n.root.stats.count(opForget)
	if n.isStale() {
		n.forgetStale()
	}
	n.closeNameless()
	n.root.forgotten.add(n)
}

// closeNameless closes at once the descriptor of a forgotten node's upper object if the object has no name left
// (unlinked, or an O_TMPFILE file never linked): no lookup can register the node again, which is all the grace
// period guards against, and holding one descriptor per removed file for the grace period would let an rm -rf of
// a large tree run the daemon out of descriptors (EMFILE for every program). A process that still uses the file
// (an open or O_PATH descriptor, a mapping) keeps the kernel from forgetting the node.
func (n *Node) closeNameless() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.anon < 0 {
		return
	}
	var st unix.Stat_t
	if sysx.Fstat(n.anon, &st) == nil && st.Nlink == 0 {
		unix.Close(n.anon)
		n.anon = -1
	}
}

// closeIfForgotten closes n's descriptors unless the kernel knows n again. A node a lookup registered again is in
// its parent's directory again (go-fuse takes every node out of its parents when the kernel forgets it); nodes
// the kernel knows without a name (O_TMPFILE files) cannot be looked up again.
func (n *Node) closeIfForgotten() {
	if _, p := n.Parent(); p != nil {
		return
	}
	n.mu.Lock()
	n.dirs, n.metas = nil, nil
	anon := n.anon
	n.anon = -1
	n.mu.Unlock()
	if n.owned != nil {
		n.owned.close()
	}
	if anon >= 0 {
		unix.Close(anon) // no request can use it any more: the kernel forgets a node no request holds
	}
}

// forgetQueue holds forgotten nodes until their grace period ends, then closes the descriptors of those the
// kernel has not looked up again. One queue and at most one timer per mount, not a timer per node: dropping the
// kernel's caches forgets tens of thousands of nodes at once, and a timer costs about 170 bytes and 2 us to set,
// an entry here 32 bytes.
type forgetQueue struct {
	mu        sync.Mutex
	pending   []forgottenNode // in the order of forgetting, so of their deadlines; protected by mu
	scheduled bool            // a sweep is due; protected by mu
}

// sweepEvery is the shortest time between two sweeps of a forgetQueue.
const sweepEvery = forgetGrace / 4

type forgottenNode struct {
	n   *Node
	due time.Time
}

// add queues n, forgotten now.
func (q *forgetQueue) add(n *Node) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.pending = append(q.pending, forgottenNode{n, time.Now().Add(forgetGrace)})
	if !q.scheduled {
		q.scheduled = true
		time.AfterFunc(forgetGrace, q.sweep)
	}
}

// sweep closes the nodes whose grace period is over (see closeIfForgotten) and schedules itself again for the
// rest.
func (q *forgetQueue) sweep() {
	q.mu.Lock()
	now := time.Now()
	i := 0
	for i < len(q.pending) && !q.pending[i].due.After(now) {
		i++
	}
	due := append([]forgottenNode(nil), q.pending[:i]...)
	clear(q.pending[:i]) // the array's swept part must not keep the nodes alive
	q.pending = q.pending[i:]
	if len(q.pending) == 0 {
		q.pending = nil
		q.scheduled = false
	} else {
		// At most a few sweeps a second however the deadlines spread: a node closes up to sweepEvery late.
		time.AfterFunc(max(q.pending[0].due.Sub(now), sweepEvery), q.sweep)
	}
	q.mu.Unlock()
	for _, f := range due {
		f.n.closeIfForgotten()
	}
}
