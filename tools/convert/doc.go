// Package convert rewrites the markers of an upper layer from any whiteout format (or a mix of them) into one
// format, in place, so that another union (kernel overlayfs, aufs, unionfs-fuse, ltsp-unionfs in that format)
// shows the same merged view.
//
// # Contract
//
// Convert refuses (inuse.BusyError) an upper layer that a mount uses (inuse.InUse). Otherwise it walks the upper
// layer and its unionfs-fuse meta trees and, object by object:
//
//   - for a whiteout of a name the upper layer does not have, writes the target's whiteout (with the
//     whiteout.Format writers: each marker appears at once, by mknod, an O_EXCL create, or, for an object
//     replacing another, a rename) and only then removes the markers of the other formats: at no moment is the
//     name shown;
//   - for an opaque directory (overlay xattr, aufs ".wh..wh..opq", a marker beside the directory), writes the
//     target's opaque marker, then removes the others;
//   - drops aufs and unionfs-fuse whiteouts beside an upper non-directory (they hide nothing more).
//
// Overlay redirects (renamed directories) and metadata-only copies exist only in the overlay format. Converting
// them to another format needs the lower layers: the lower content a redirected directory shows is copied up
// (package cow, atomically per object, as the union does for formats without redirects), then the directory is
// made opaque and loses its redirect; a metadata-only copy is replaced, by a rename, with a complete copy holding
// the lower data and its own metadata. unionfs-fuse whiteouts below a directory the upper layer lacks need the
// lower directory copied up to hold an overlay or aufs marker. Without lowers such an upper is refused before
// anything changes (*NeedLowersError, naming the first object).
//
// The times of every directory changed are kept, so the merged view is the same before and after, times
// included. Finally the other formats' declarations go: the other meta trees (empty by then) and, unless the
// target is aufs, aufs's root entries; the target's own is written first (aufs's ".wh..wh.aufs", the
// unionfs-fuse meta directory). A failure leaves every object converted so far converted and the rest as it was,
// which the union reads the same; running Convert again completes the job.
package convert
