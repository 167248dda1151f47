package unionfs

import (
	"sync"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// maxDirCursors bounds the directory listings kept open between READDIR requests (see handleFreeDirs).
const maxDirCursors = 64

// handleFreeDirs wraps go-fuse's node bridge so that the kernel never opens or releases directories.
//
// It answers OPENDIR with ENOSYS. The kernel then stops sending OPENDIR and RELEASEDIR for the life of the
// mount (FUSE_NO_OPENDIR_SUPPORT, Linux 5.1) and opens every directory as if the daemon had said
// FOPEN_KEEP_CACHE|FOPEN_CACHE_DIR, so a directory listed once is listed again from the kernel's cache. That
// saves two round trips per opendir(3): on a warm tree walk they are nearly all the requests left.
//
// READDIR and READDIRPLUS then arrive without a handle (fh 0). The wrapper opens one through the bridge itself and
// keeps it, keyed by directory, while a listing is read in several requests; the next request at the offset where
// the last one stopped continues on it. A listing read to its end releases its handle; listings abandoned half
// way are released when more than maxDirCursors are open. A request at any other offset gets a handle whose
// snapshot is repositioned (Seekdir), which is what a fresh opendir(3) at that offset would see.
type handleFreeDirs struct {
	fuse.RawFileSystem

	mu      sync.Mutex
	cursors map[uint64]*dirCursor // by node ID; protected by mu. A cursor in use is out of the map.
	order   []parked              // parked cursors, oldest first, including some since taken; protected by mu
	seq     uint64                // protected by mu
}

// parked names a cursor in the order it was parked.
type parked struct{ id, seq uint64 }

// dirCursor is an open directory handle of the bridge and the offset its next entry has.
type dirCursor struct {
	fh   uint64
	next uint64
	seq  uint64 // when it was last parked
}

func newHandleFreeDirs(raw fuse.RawFileSystem) *handleFreeDirs {
	return &handleFreeDirs{RawFileSystem: raw, cursors: map[uint64]*dirCursor{}}
}

// OpenDir - FUSE call. Refuses, so the kernel stops asking (see handleFreeDirs).
func (h *handleFreeDirs) OpenDir(cancel <-chan struct{}, input *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

// ReadDir - FUSE call.
func (h *handleFreeDirs) ReadDir(cancel <-chan struct{}, input *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return h.read(cancel, input, out, h.RawFileSystem.ReadDir)
}

// ReadDirPlus - FUSE call.
func (h *handleFreeDirs) ReadDirPlus(cancel <-chan struct{}, input *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return h.read(cancel, input, out, h.RawFileSystem.ReadDirPlus)
}

func (h *handleFreeDirs) read(cancel <-chan struct{}, input *fuse.ReadIn, out *fuse.DirEntryList,
	read func(<-chan struct{}, *fuse.ReadIn, *fuse.DirEntryList) fuse.Status) fuse.Status {
	if input.Fh != 0 {
		return read(cancel, input, out)
	}
	c, st := h.take(cancel, input)
	if !st.Ok() {
		return st
	}
	in := *input
	in.Fh = c.fh
	st = read(cancel, &in, out)
	if !st.Ok() || out.Offset == input.Offset {
		// An error or the end of the listing: nothing will continue from here.
		h.release(input.NodeId, c.fh)
		return st
	}
	c.next = out.Offset
	h.park(input.NodeId, c)
	return st
}

// take returns the parked cursor of the directory if it stopped at the requested offset, or a new handle.
func (h *handleFreeDirs) take(cancel <-chan struct{}, input *fuse.ReadIn) (*dirCursor, fuse.Status) {
	h.mu.Lock()
	c := h.cursors[input.NodeId]
	if c != nil && c.next == input.Offset {
		delete(h.cursors, input.NodeId)
		h.mu.Unlock()
		return c, fuse.OK
	}
	h.mu.Unlock()
	var out fuse.OpenOut
	st := h.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: input.InHeader, Flags: input.Flags}, &out)
	if !st.Ok() {
		return nil, st
	}
	return &dirCursor{fh: out.Fh}, fuse.OK
}

// park keeps c for the next request on directory id, replacing an older cursor of the same directory and
// releasing the oldest cursors beyond maxDirCursors.
func (h *handleFreeDirs) park(id uint64, c *dirCursor) {
	type handle struct{ id, fh uint64 }
	var drop []handle
	h.mu.Lock()
	if old := h.cursors[id]; old != nil {
		drop = append(drop, handle{id, old.fh})
	}
	h.seq++
	c.seq = h.seq
	h.cursors[id] = c
	h.order = append(h.order, parked{id, c.seq})
	for len(h.cursors) > maxDirCursors {
		p := h.order[0]
		h.order = h.order[1:]
		if oc := h.cursors[p.id]; oc != nil && oc.seq == p.seq {
			delete(h.cursors, p.id)
			drop = append(drop, handle{p.id, oc.fh})
		}
	}
	if len(h.order) > 4*maxDirCursors {
		// Drop the entries of cursors taken or replaced since they were parked.
		kept := h.order[:0]
		for _, p := range h.order {
			if oc := h.cursors[p.id]; oc != nil && oc.seq == p.seq {
				kept = append(kept, p)
			}
		}
		h.order = kept
	}
	h.mu.Unlock()
	for _, d := range drop {
		h.release(d.id, d.fh)
	}
}

func (h *handleFreeDirs) release(id, fh uint64) {
	h.RawFileSystem.ReleaseDir(&fuse.ReleaseIn{InHeader: fuse.InHeader{NodeId: id}, Fh: fh})
}

// Forget - FUSE call. The kernel forgets a node when it evicts its inode, and the bridge then drops the node's
// entry, open handles and all: a handle of the wrapper's own still parked on it would be released on a node the
// bridge no longer knows (go-fuse panics, and the READDIR whose request released it was answered EIO). So the
// node's cursor goes first. No READDIR of the node can be in flight: the kernel evicts no inode a request uses.
func (h *handleFreeDirs) Forget(nodeid, nlookup uint64) {
	h.mu.Lock()
	c := h.cursors[nodeid]
	delete(h.cursors, nodeid)
	h.mu.Unlock()
	if c != nil {
		h.release(nodeid, c.fh)
	}
	h.RawFileSystem.Forget(nodeid, nlookup)
}

// FsyncDir - FUSE call. Without a handle from the kernel, syncs through a handle of its own.
func (h *handleFreeDirs) FsyncDir(cancel <-chan struct{}, input *fuse.FsyncIn) fuse.Status {
	if input.Fh != 0 {
		return h.RawFileSystem.FsyncDir(cancel, input)
	}
	var out fuse.OpenOut
	if st := h.RawFileSystem.OpenDir(cancel, &fuse.OpenIn{InHeader: input.InHeader}, &out); !st.Ok() {
		return st
	}
	defer h.release(input.NodeId, out.Fh)
	in := *input
	in.Fh = out.Fh
	return h.RawFileSystem.FsyncDir(cancel, &in)
}
