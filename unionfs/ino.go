package unionfs

import "sync"

// Inode numbers.
//
// Layers live on different filesystems, so a layer's own st_ino is not unique in the union. Like overlayfs's xino,
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
