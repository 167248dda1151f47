// Package stack reads a stack of layers the way the union shows it. It is the one place that knows what a stack
// of layers means: the daemon (package unionfs) and every offline tool (diff, merge, check, convert) resolve names
// and read layer directories through it, so that they cannot disagree about what is there.
//
// The rules are kernel overlayfs's, widened to the three marker formats package whiteout knows:
//
//   - Layers are searched topmost first. A whiteout of any format ends the search for its name: an overlay
//     whiteout (a character device 0/0, or an xwhiteout in a directory of "x" opacity), an aufs marker ".wh.NAME"
//     in a layer whose root declares aufs, a unionfs-fuse marker "NAME_HIDDEN~" in the layer's meta tree.
//   - A non-directory hides everything below it. A directory merges with the directories of the same name below
//     unless it is opaque (overlay opaque xattr "y", aufs ".wh..wh..opq", or an aufs or unionfs-fuse whiteout of
//     its own name beside it).
//   - A directory's redirect xattr makes the layers below be searched at the path it names: absolute from each
//     layer's root, or a name in the same parent.
//   - A regular file marked as a metadata-only copy takes its data from the next non-directory below that is not
//     one itself, at the path its redirect names if it has one. Without data below, the copy shows as it is.
//
// A Reader resolves one name (Lookup) in a View, the directories one merged directory has in each layer. ReadDir
// and ReadMeta classify the entries of one layer directory and of one meta-tree directory. Tree opens a stack of
// layers from paths for the tools, with the views and listings they need.
package stack
