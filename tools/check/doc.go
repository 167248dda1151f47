// Package check checks an upper layer offline, and repairs what can be repaired without changing the merged
// view. It reads the markers of every whiteout format (see package whiteout) the way package unionfs does, never
// follows a symlink (every access is an *at call relative to a directory descriptor of the layer) and never
// writes a lower layer.
//
// # Contract
//
// Check walks the upper layer (and, with Options.Lowers, the lower directories each upper directory merges with,
// following redirects and honouring opaque directories and the lowers' own whiteouts) and reports each problem
// with a stable kind (the Kind* constants) and the path at fault:
//
//   - temporary objects of the union (whiteout.IsTempName) left by a crash: removed by a repair;
//   - markers of more than one format in one upper (overlay whiteouts or overlay opaque, redirect or metacopy
//     xattrs; aufs ".wh." entries; each unionfs-fuse meta tree): reported, convert fixes it;
//   - whiteouts (of any format) of a name no lower layer has at that path, only with lowers: removed;
//   - aufs or unionfs-fuse whiteouts beside an upper non-directory of the same name: removed;
//   - metadata-only copies (trusted.overlay.metacopy) whose lower data is gone, only with lowers: reported, the
//     data is lost;
//   - redirects that are neither an absolute path nor a plain name (as overlayfs defines them): reported; and,
//     with lowers, redirects leading to no lower directory: the directory then shows only its upper content, so
//     a repair makes it opaque and removes the redirect, which shows the same;
//   - unionfs-fuse meta directories for a directory that exists in no layer, only with lowers: removed;
//     entries of a meta tree that are no marker: reported;
//   - overlay opaque xattrs on non-directories: removed.
//
// A repair never changes what the union shows, and keeps the times of the directories it changes. It is refused
// (*inuse.BusyError) while a mount uses the upper layer (inuse.InUse), since changing a mounted upper underneath its union is
// undefined. A missing or unreadable layer is a *stack.LayerError.
//
// The lower-layer view (Lowers, Stack) and InUse are shared with package convert.
package check
