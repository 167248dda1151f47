// Package changes reads what an upper layer changes relative to its lower layers, and applies those changes to a
// writable copy of the lower layers.
//
// # Contract
//
// Diff walks an upper layer offline and read-only, together with the lower layers when they are given, and
// classifies every object of the upper layer the way a union (package unionfs, kernel overlayfs, unionfs-fuse)
// interprets it. All three marker formats of package whiteout are read, in any mix: overlay (character device 0/0
// whiteouts, trusted.overlay.opaque, trusted.overlay.redirect, trusted.overlay.metacopy, and their user.overlay.*
// forms), aufs (.wh.NAME, .wh..wh..opq) and unionfs-fuse (.unionfs/PATH_HIDDEN~ or .unionfs-fuse/PATH_HIDDEN~,
// including whiteouts under directories the upper layer does not have). Marker names, meta directories and the
// union's temporary objects are never reported. Every layer access is an *at system call on a descriptor opened
// below the layer root (package sysx): a symlink in a layer is never followed, and nothing is written, not even
// access times where O_NOATIME is allowed.
//
// A Change is one of:
//
//   - Added: the upper object has nothing of its name below it.
//   - Modified: the upper object replaces a lower object with other data (content, symlink target, device number)
//     or of another type.
//   - Metadata: only the mode, owner, modification time or xattrs differ; the data is the lower object's. An overlay
//     metadata-only copy (trusted.overlay.metacopy) is always of this kind.
//   - Deleted: a whiteout that hides a lower object.
//   - Opaque: an upper directory that hides a lower directory of the same name; everything in it is listed as added.
//   - Renamed: an upper directory that takes its lower content from another lower path (overlay redirect); the
//     whiteout left at the old path is listed as deleted.
//   - Changed: without lower layers to compare with, an upper object that is not marked otherwise: added or
//     modified, which only the lower layers could tell.
//
// Without lower layers Diff reports what the upper layer alone says: whiteouts as deleted, marked opaque
// directories as opaque, redirects as renamed, metadata-only copies as metadata, and everything else as changed.
// With lower layers (topmost first, read with the same rules, their own markers included), a whiteout that hides
// nothing and an opaque directory that hides nothing are not changes, and objects are compared: data byte by byte
// when sizes agree, metadata by mode, owner, mtime and xattrs (the union's private xattrs and system.nfs4_acl
// excluded). Access times are never compared: reading a file changes them. A directory whose only difference is
// its times is not listed, since its mtime follows its content, which is listed.
//
// Merge applies the changes of an upper layer to a directory that holds a writable copy of the lower layers (an
// image under construction), so that the directory then shows what the union showed: see Merge.
package changes
