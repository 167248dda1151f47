#!/bin/sh
# dracut shutdown hook: in the initramfs the machine returns to at shutdown, once the union (the old root) is
# unmounted, unmount its layers, undoing what ltsp-unionfs-root did at boot. dracut's own loop unmounts only what
# lies below /oldroot; the layers were moved to /oldsys/run with the rest of /run. Sourced by dracut: no exit.
# Returns non-zero while the union still holds the layers, so that dracut calls it again.

for ltsp_unionfs_layer in /oldsys/run/initramfs/ltsp/ro /oldsys/run/initramfs/ltsp/rw; do
    # Propagation can have stacked the same mount more than once.
    while umount "$ltsp_unionfs_layer" 2> /dev/null; do
        echo "ltsp-unionfs-shutdown: unmounted $ltsp_unionfs_layer" > /dev/kmsg
    done
done
! grep -q " /oldsys/run/initramfs/ltsp/r[ow] " /proc/mounts
