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
// non-directory below a directory is hidden. Marker names of every whiteout format are never visible. The rules
// (with redirects and metadata-only copies) are package stack's, which the offline tools read layers with too;
// this package adds its descriptors, counters and inode numbers (resolve, listView).
//
// # Identity and inode numbers
//
// Which layer object names a union object, its inode number (the layer's number with a device tag in the high
// bits, like overlayfs's xino), its generation and the stale protocol by which a node gives its name up to a new
// one are described in one place, at the top of identity.go. readdir reports the same numbers as stat. Like
// overlayfs, a merged directory reports st_nlink 1.
//
// # Nodes, names and open modes
//
// A directory node holds descriptors of its layer directories, so it is found wherever it moves. A non-directory
// node is reached by its parent's layer directory and its name, with two exceptions that keep a descriptor of the
// upper object instead (Node.anon): a file that lost its name while the kernel knew it (unlinked, renamed over,
// O_TMPFILE), and a regular file that was renamed. The second exists because go-fuse moves a node in its tree
// only after Rename returns; in between, the node's name still says where the file was. Requests that find the
// name gone re-read where the node is and try again there (openIn, statSelf, Setattr), so a rename racing with
// an open through a descriptor (/proc/self/fd, fanotify) or an fchmod is never seen as ESTALE or ENOENT.
//
// With FUSE passthrough the kernel keeps one I/O mode (page cache or passthrough) and one backing file per inode
// while any descriptor of it is open; an open that breaks either fails with EIO. The node counts its live opens
// by mode and hands out what fits (registerLocked): passthrough while passthrough opens are live, cached while cached
// ones are. Releases reach the daemon after the kernel has dropped the file, so the daemon's counts never show
// fewer opens than the kernel's; serialOpens keeps go-fuse's backing-file bookkeeping in step with them.
//
// One case cannot be served on the same inode: an open for writing of a lower file that passthrough readers hold
// open. The copy-up gives the file a new object, the readers' backing file is the lower one, and the kernel
// refuses a second. Open then answers ESTALE after marking the node stale; the kernel's open path (do_filp_open)
// retries once with LOOKUP_REVAL, the lookup makes a new node for the name (same inode number, later
// generation), and the retried open lands there. The old descriptors keep reading the lower file, as overlayfs's
// do. This retry is the only ESTALE a program's open relies on; Stats.StaleRetries counts it, and the tests check
// that the program never sees it (TestPassthroughConcurrentOpens; TestStaleRetryUnderEviction, while caches are
// being dropped).
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
// # Locking
//
// Locks are taken in this order, outermost first; none is taken while a later one is held.
//
//  1. serialOpens' lock of a kernel node ID, held across a whole OPEN or RELEASE, go-fuse's backing-file
//     bookkeeping included.
//  2. dirHandle.mu, held while a listing is built (go-fuse's lock of the directory handle is outside it).
//  3. Node.openMu, of one node: taken by Open, Release and Create only. Lookups and listings never wait for it
//     (a node's staleness is an atomic flag), so a long copy-up made by an open delays no stat or ls.
//  4. Node.copyMu. Copy-ups run from the root down: each ancestor's copyMu is taken and released in turn,
//     then the node's own, so no goroutine holds two. A child's openMu may be held meanwhile (Open).
//  5. Node.mu, of one node at a time. A node's copyMu may be held while its parent's mu is read.
//  6. fdSet.mu, under Node.mu (addMeta) or copyMu (ensureUpperDir).
//
// Leaves, under which nothing is taken: file.mu, Root.staleMu, inoMap.mu and forgetQueue.mu.
// handleFreeDirs.mu and nodeLocks.mu are never held together with any other lock.
//
// go-fuse's Inode.mu and identity-table lock, taken by Parent, GetChild, AddChild, Children, Path and
// NewInode, are innermost: go-fuse never calls into the union while it holds them, so those calls are safe
// under any lock above. RmChild, MvChild, ForgetPersistent and RmAllChildren may call OnForget, which takes
// staleMu and forgetQueue.mu: never make them while holding a Node lock. go-fuse itself calls the union under
// its backingMu (ptFile.PassthroughFd takes file.mu) and under a directory handle's lock (Readdirent and
// Seekdir take dirHandle.mu, READDIRPLUS lookups what lookups take): both rank between 1 and 2.
//
// Notifications are writes to /dev/fuse that the kernel carries out before the write returns. NotifyContent
// with a negative offset only drops cached attributes, under spinlocks, so attrsChanged may run under any
// lock and inside any request. With an offset of 0 or more it waits for page locks that reads hold while they
// wait for the daemon; NotifyEntry and NotifyDelete lock the directory's inode, which the kernel holds across
// LOOKUP, READDIR, CREATE, UNLINK, RENAME and the like. Send those from a goroutine of their own that holds
// no lock, as staleDir does.
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
