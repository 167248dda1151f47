#!/bin/bash
# dracut module ltsp-unionfs: the root filesystem becomes a union of the root image (read-only) and a tmpfs, served by
# ltsp-unionfs, so that a diskless client can write anywhere. Enabled at boot with rd.ltsp.unionfs=1 (see README.md).
# shellcheck disable=SC2154 # $moddir, $initdir, $systemdsystemunitdir and $SYSTEMCTL come from dracut

# Included only when asked for (dracut -a ltsp-unionfs, or add_dracutmodules+=" ltsp-unionfs "), and only if the
# program is installed.
check() {
    require_binaries ltsp-unionfs || return 1
    return 255
}

depends() {
    echo base
    return 0
}

installkernel() {
    hostonly='' instmods fuse
}

install() {
    # The program, and every tool its root script runs (not all of them are in every initramfs).
    inst_multiple ltsp-unionfs awk cat grep mkdir mount umount rm
    inst_script "$moddir/ltsp-unionfs-root.sh" /sbin/ltsp-unionfs-root
    # In the initramfs of the shutdown (dracut's shutdown module), after the union: unmount the layers.
    inst_hook shutdown 20 "$moddir/ltsp-unionfs-shutdown.sh"
    if dracut_module_included "systemd"; then
        inst_simple "$moddir/ltsp-unionfs-root.service" "$systemdsystemunitdir/ltsp-unionfs-root.service"
        # Wanted by initrd-root-fs.target (linked directly: systemctl add-wants needs the target in the image).
        mkdir -p "$initdir$systemdsystemunitdir/initrd-root-fs.target.wants"
        ln_r "$systemdsystemunitdir/ltsp-unionfs-root.service" \
            "$systemdsystemunitdir/initrd-root-fs.target.wants/ltsp-unionfs-root.service"
    else
        # Before 98usrmount (pre-pivot 50) mounts /usr from the new root's fstab: it must see the union.
        inst_hook pre-pivot 10 "$moddir/ltsp-unionfs-pre-pivot.sh"
    fi
}
