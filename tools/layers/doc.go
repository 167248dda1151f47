// Package layers is what the offline tools check and convert share to walk an upper layer over its lower layers:
// the lower directories below each upper directory (Lowers, Stack, Entry: package stack's lookup, as the daemon
// reads the layers), the data of a metadata-only copy (MetacopyData), the unionfs-fuse meta directories that go
// with each upper directory (Metas), and the small changes both make to an upper layer without changing the
// times the merged view shows (RemoveXattrs, KeepTimes).
package layers
