package unionfs

import (
	"hash/fnv"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/ltsp/ltsp-unionfs/stack"
)

// Identity: what a node is, and what number and generation the kernel knows it by.
//
// Which object. A union object is named by one layer object's (device, inode) pair (resolution.identity): a
// directory that a lower layer has by its topmost lower directory, so that it keeps its number when the upper
// layer gains a copy of it; a copied-up non-directory by its lower original, which its origin mark records
// (formatOrigin: the lower layer's index and inode number, stable across mounts of the same layers); anything else
// by its topmost object.
//
// Which number. Layers live on different filesystems, so a layer's own st_ino is not unique in the union. Like overlayfs's xino,
// the union keeps the real inode number in the low bits and puts a small tag for the device it came from in the
// high bits:
//
//	bit 63      bits 62..48      bits 47..0
//	  0         device tag       real st_ino        (real st_ino < 2^48, the usual case)
//	  1         spill counter ......................  (real st_ino >= 2^48, e.g. some NFS servers)
//
// Tag 0 is the device of the topmost lower layer, so most files of a typical one-lower union keep their real inode
// number. Tags are handed out in order of first use and never reused, and spilled numbers are remembered for the
// life of the mount: a (device, inode) pair always maps to the same union inode number while mounted.
//
// Which generation. go-fuse identifies a node by (inode number, generation). Hard links share a node, but a
// lower file's hard links split when one of them is copied up (as in overlayfs without index), so each name of a
// multiply linked lower file gets a node of its own, told apart by a generation derived from its name
// (generation).
//
// The stale protocol. A node that can no longer serve its name gives it up, for good: a file whose copy-up the
// kernel's passthrough backing file of the lower object prevents (see Open), a directory whose layer descriptor
// an NFS server invalidated (staleDir). markStale records it; the request answers ESTALE, which the kernel
// retries once with a fresh lookup; that lookup makes a new node of the same number with a generation after the
// stale one's (afterStale), since go-fuse would hand the stale node back for the same pair. Stale nodes keep
// serving the descriptors already open on them; the record goes when the kernel forgets the node (forgetStale).

const (
	inoBits   = 48
	inoMask   = 1<<inoBits - 1
	tagLimit  = 1 << (63 - inoBits)
	spillBase = 1 << 63
)

// devIno identifies an object of some layer.
type devIno struct {
	dev, ino uint64
}

// inoMap turns layer (device, inode) pairs into union inode numbers. It is safe for concurrent use.
type inoMap struct {
	mu    sync.Mutex
	tags  map[uint64]uint64 // device → tag; protected by mu
	spill map[devIno]uint64 // spilled pairs → number; protected by mu
	next  uint64            // next spill number; protected by mu
}

func newInoMap() *inoMap {
	return &inoMap{tags: make(map[uint64]uint64), spill: make(map[devIno]uint64), next: spillBase}
}

// register assigns the next tag to dev if it has none yet. Registering the layers' devices in a fixed order at
// mount makes their tags independent of the order in which files are looked up.
func (m *inoMap) register(dev uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.tagLocked(dev)
}

// tagLocked returns dev's tag, assigning one if needed; ok is false when all tags are in use.
//
// Preconditions: m.mu is held.
func (m *inoMap) tagLocked(dev uint64) (tag uint64, ok bool) {
	if t, ok := m.tags[dev]; ok {
		return t, true
	}
	t := uint64(len(m.tags))
	if t >= tagLimit {
		return 0, false
	}
	m.tags[dev] = t
	return t, true
}

// ino returns the union inode number for id. It is never 0 and never go-fuse's reserved ^0.
func (m *inoMap) ino(id devIno) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	if id.ino != 0 && id.ino <= inoMask {
		if tag, ok := m.tagLocked(id.dev); ok {
			return tag<<inoBits | id.ino
		}
	}
	if n, ok := m.spill[id]; ok {
		return n
	}
	n := m.next
	m.next++
	m.spill[id] = n
	return n
}

// formatOrigin encodes the identity of a lower object as the origin mark of its copy: the lower layer's index
// and the inode number, which stay the same across mounts of the same layers.
func (r *Root) formatOrigin(l *Layer, ino uint64) []byte {
	return []byte(strconv.Itoa(l.Index) + ":" + strconv.FormatUint(ino, 10))
}

// parseOrigin decodes an origin mark; nil if it is malformed or names no lower layer of this union.
func (r *Root) parseOrigin(v string) *devIno {
	idx, ino, ok := strings.Cut(v, ":")
	if !ok {
		return nil
	}
	i, err1 := strconv.Atoi(idx)
	n, err2 := strconv.ParseUint(ino, 10, 64)
	if err1 != nil || err2 != nil || i < 1 || i >= len(r.layers.all) {
		return nil
	}
	return &devIno{r.layers.all[i].dev, n}
}

// identity returns the object whose (device, inode) pair names the union object res found: for a directory that
// a lower layer has, the topmost lower directory, so that the number survives a copy of the directory into the
// upper layer; for a copied-up non-directory, its lower original; otherwise the topmost object.
func (res *resolution) identity() devIno {
	top := &res.Found[0]
	if res.origin != nil {
		return *res.origin
	}
	if top.IsDir() {
		for _, p := range res.Found {
			if p.Layer != 0 {
				return devIno{p.Stat.Dev, p.Stat.Ino}
			}
		}
	}
	return devIno{top.Stat.Dev, top.Stat.Ino}
}

// stackIdentity is identity for an open directory stack.
func stackIdentity(dirs []layerDir) devIno {
	for _, d := range dirs {
		if !d.layer.IsUpper() {
			return devIno{d.dev, d.ino}
		}
	}
	return devIno{dirs[0].dev, dirs[0].ino}
}

// generation returns the go-fuse generation for a name. Objects are identified by (inode number, generation),
// and hard links share a node; but a lower file's hard links split when one of them is copied up (as in
// overlayfs without index), so each name of a multiply linked lower file gets a node of its own, told apart by
// a generation derived from its name.
func generation(parent *Node, name string, top *stack.Object) uint64 {
	if top.Layer == 0 || top.Stat.Nlink <= 1 || top.IsDir() {
		return 1
	}
	h := fnv.New64a()
	h.Write([]byte(strconv.FormatUint(parent.StableAttr().Ino, 16) + "/" + name))
	return 2 + h.Sum64()%(1<<62)
}

// afterStale returns gen, or a generation after those of the stale nodes of inode number ino still registered.
func (r *Root) afterStale(ino, gen uint64) uint64 {
	r.staleMu.Lock()
	defer r.staleMu.Unlock()
	if g, ok := r.staleGens[ino]; ok && g >= gen {
		return g + 1
	}
	return gen
}

// markStale records that n gives its name up to a new node: lookups of its object make nodes of a later
// generation while n lives. It reports whether n was not stale before.
func (n *Node) markStale() bool {
	if !n.stale.CompareAndSwap(false, true) {
		return false
	}
	id := n.StableAttr()
	r := n.root
	r.staleMu.Lock()
	defer r.staleMu.Unlock()
	if r.staleGens == nil {
		r.staleGens = make(map[uint64]uint64)
	}
	if g := r.staleGens[id.Ino]; g < id.Gen {
		r.staleGens[id.Ino] = id.Gen
	}
	return true
}

// forgetStale drops the record of a stale node the kernel has forgotten.
func (n *Node) forgetStale() {
	id := n.StableAttr()
	r := n.root
	r.staleMu.Lock()
	defer r.staleMu.Unlock()
	if r.staleGens[id.Ino] == id.Gen {
		delete(r.staleGens, id.Ino)
	}
}

// staleDir handles an errno from an operation on directory n's layer descriptors: ESTALE means one of them no
// longer reaches its directory (an NFS server replaced it), for good. n is marked stale and the kernel told to
// forget its name, so that the next lookup of the name (the kernel retries a lookup that failed with ESTALE
// once, by name) makes a new node with fresh descriptors. It returns errno.
func (n *Node) staleDir(errno syscall.Errno) syscall.Errno {
	if errno != syscall.ESTALE || n.IsRoot() {
		return errno
	}
	if p, name := n.parentNode(); n.markStale() && p != nil {
		// Not from within the request: the kernel may hold locks the notification needs.
		go p.NotifyEntry(name)
	}
	return errno
}

// parentStale is staleDir for the parent of the non-directory n, through whose layer descriptor n is reached.
func (n *Node) parentStale(errno syscall.Errno) syscall.Errno {
	if errno == syscall.ESTALE {
		if p, _ := n.parentNode(); p != nil {
			p.staleDir(errno)
		}
	}
	return errno
}

// isStale reports whether n gave its name up to a new node (see Open).
func (n *Node) isStale() bool {
	return n.stale.Load()
}

// live reports whether n can still serve requests: a forgotten directory has closed its descriptors.
func (n *Node) live() bool {
	if n.owned == nil {
		return true
	}
	n.owned.mu.Lock()
	defer n.owned.mu.Unlock()
	return !n.owned.closed
}
