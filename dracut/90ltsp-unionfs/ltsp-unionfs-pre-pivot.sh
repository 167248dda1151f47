#!/bin/sh
# dracut pre-pivot hook (initramfs without systemd): stack the union on $NEWROOT. Sourced by dracut: no exit.
# shellcheck disable=SC2154 # $NEWROOT comes from dracut
/sbin/ltsp-unionfs-root "${NEWROOT:-/sysroot}"
