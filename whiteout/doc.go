// Package whiteout knows the on-disk markers with which a union records, in its upper layer, that a lower name is
// deleted (a whiteout) or that a directory hides all lower content beneath its name (an opaque directory).
//
// Three formats exist in the wild and all three are recognised when a layer is read:
//
//   - overlay (kernel overlayfs): a whiteout is a character device 0/0 with the hidden name; an opaque directory
//     carries the xattr trusted.overlay.opaque="y" (user.overlay.opaque for userxattr mounts). A directory whose
//     opaque xattr is "x" is not opaque but may hold "xwhiteouts": empty regular files carrying the xattr
//     trusted.overlay.whiteout, used by composefs-style lower layers.
//   - aufs: a whiteout is a file ".wh.NAME" beside the hidden name; an opaque directory holds ".wh..wh..opq". Every
//     name beginning with ".wh." is a marker and never shown.
//   - unionfs-fuse: whiteouts live in a separate tree under the upper's root, ".unionfs/PATH_HIDDEN~" (unionfs-fuse
//     1.0, as in Debian 12, uses ".unionfs-fuse/"). The meta directory is never shown.
//
// Package stack, which resolves names and lists directories for the daemon and the tools, asks this package what
// an entry means; no other package tests marker names or xattrs itself.
package whiteout
