// Package unionfs is the FUSE node tree of ltsp-unionfs: it merges one writable upper layer and one or more
// read-only lower layers into one directory tree, with kernel overlayfs's rules.
//
// # Model
//
// Layers are directories opened once before mounting (see Layer). A directory of the merged view is a stack of
// layer directories, topmost first, each held as an O_PATH descriptor; a non-directory lives in exactly one layer
// and is reached as a name in its parent's directory of that layer. Every access is a *at system call on a held
// descriptor with a single name that is never followed if it is a symlink, so nothing a user puts into a layer can
// make the daemon act outside it.
//
// # Lookup (overlayfs's ovl_lookup)
//
// A name is looked up in each layer directory of its parent, topmost first. A whiteout ends the search: the name
// does not exist. A non-directory ends it too: it is the result, and lower objects of the same name are hidden. A
// directory continues the search unless it is opaque; the directories found form the child's stack. A
// non-directory below a directory is hidden. Marker names of every whiteout format are never visible.
//
// # Inode numbers
//
// st_ino is the layer's inode number with a per-device tag in the high bits (see ino.go), unique across layers and
// stable while mounted. A directory that exists in a lower layer takes its number from the topmost lower layer
// that has it, so it keeps its number when the upper layer gains a copy of it; otherwise the number of the
// topmost object is used. readdir reports the same numbers as stat. Like overlayfs, a merged directory reports
// st_nlink 1.
//
// # Changes
//
// Every change lands in the upper layer (create.go, remove.go, rename.go, setattr.go). A lower object is copied up
// before it changes (copyup.go, using package cow): parents first, under the node's copyMu, the node changing in
// place so that its inode number, its kernel node and its open files stay; open read-only files are re-pointed at
// the copy. chmod, chown, utimes and xattr changes of a lower regular file make a metadata-only copy (overlay
// format). Deleting a lower name writes a whiteout in the format of package whiteout that the mount writes;
// renaming a lower directory redirects it (overlay) or copies its subtree (aufs, unionfs-fuse).
//
// # Caching
//
// The lower layers are immutable and every change goes through the daemon, so the kernel may cache entries,
// attributes, negative lookups, directory listings and lower file contents for long; see Config.
//
// # Deviations from overlayfs
//
//   - A read-only descriptor opened before a copy-up reads the copy afterwards; overlayfs's keeps reading the
//     lower file.
//   - Hard links of a lower file split when one of them is copied up (as overlayfs without index=on); each name
//     gets its own node (see generation).
//   - As root, every layer is reached through a private clone of its mount (read-only and noatime for lowers), so
//     a mount point inside a layer shows the directory underneath, as in overlayfs. A daemon without the
//     privilege to clone mounts never crosses into a mount inside a layer either: such a directory shows as
//     empty, with the attributes of the mounted filesystem's root.
//   - overlay xwhiteouts (a directory whose opaque xattr is "x") are honoured only where a lower layer lies below
//     the directory that holds them.
package unionfs
