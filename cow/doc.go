// Package cow builds copies of lower-layer objects in the upper layer (copy-up) and new objects in general,
// invisibly, and publishes them atomically.
//
// # Contract
//
// A copy is built unnamed (O_TMPFILE, for regular files where the upper filesystem supports it) or under a
// temporary marker name that the merged view never shows, and becomes visible only when it is published by a
// single link or rename. Until then, and after any failure, the merged view is unchanged: the lower object stays
// visible and readable, and the temporary object is removed. Nothing partial is ever visible, ENOSPC included; a
// copy of a regular file checks the upper filesystem's free space before copying and fails at once with ENOSPC
// if the data cannot fit.
//
// A copy preserves: data, with holes (SEEK_DATA/SEEK_HOLE) and the exact size; the file type and device number;
// the symlink target; owner and group; the mode with setuid, setgid and sticky bits; atime and mtime; and every
// xattr the lower object has, security.capability and POSIX ACLs included, except the union's private ones
// (trusted.overlay.*, user.overlay.*) and system.nfs4_acl, which describes NFS server permissions that no upper
// filesystem can hold. A lower layer without xattr support (ENOTSUP) simply has none. An upper filesystem that
// refuses an xattr the lower has fails the copy if the xattr carries permissions (capabilities, ACLs), and
// otherwise drops it, as overlayfs does.
//
// The order of steps matters: the owner is set before the xattrs because chown(2) removes security.capability,
// and the mode after both because chown clears setuid and setgid bits; times come last.
//
// A metadata-only copy of a regular file (for chmod, chown, utimes and xattr changes) has the right size but no
// data; CopyData fills it in later, before the first write.
package cow
