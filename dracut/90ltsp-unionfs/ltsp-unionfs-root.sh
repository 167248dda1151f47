#!/bin/sh
# ltsp-unionfs-root [NEWROOT] - stack a writable union on the mounted root filesystem, in the initramfs.
#
# With rd.ltsp.unionfs=1 on the kernel command line, the root filesystem mounted at NEWROOT (default /sysroot)
# becomes the read-only lower layer of a union whose upper layer is a tmpfs:
#
#   NEWROOT                  bound to /run/initramfs/ltsp/ro   (read-only layer; /run/initramfs survives shutdown)
#   tmpfs                    mounted on /run/initramfs/ltsp/rw (size from rd.ltsp.unionfs.size=, default 50%)
#   ltsp-unionfs ro=... rw=... NEWROOT                         (the union, stacked on NEWROOT)
#
# rd.ltsp.unionfs.opts= adds ltsp-unionfs mount options (comma-separated). If anything fails, what was done is
# undone and a warning logged: the machine boots without the union, as it would without this module.
# The kernel command line is read from $LTSP_UNIONFS_CMDLINE if set (for tests), else /proc/cmdline.

newroot=${1:-/sysroot}
base=${LTSP_UNIONFS_BASE:-/run/initramfs/ltsp}
cmdline=${LTSP_UNIONFS_CMDLINE-$(cat /proc/cmdline 2>/dev/null)}

say() {
    echo "ltsp-unionfs-root: $*" >&2
    if [ -w /dev/kmsg ]; then
        echo "ltsp-unionfs-root: $*" > /dev/kmsg 2>/dev/null
    fi
}

# arg NAME prints the value of NAME=VALUE on the kernel command line ("1" for a bare NAME); the last one wins.
arg() {
    value=
    for word in $cmdline; do
        case "$word" in
            "$1") value=1 ;;
            "$1"=*) value=${word#"$1"=} ;;
        esac
    done
    printf '%s' "$value"
}

# mounted DIR succeeds if DIR is a mount point; fstype DIR prints the type of the topmost mount on DIR.
mounted() {
    [ -n "$(fstype "$1")" ]
}
fstype() {
    awk -v d="$1" '$5 == d { t = "" ; for (i = 7; i <= NF; i++) if ($i == "-") { t = $(i + 1); break } } END { print t }' \
        /proc/self/mountinfo
}

case "$(arg rd.ltsp.unionfs)" in
    1 | yes | on | true) ;;
    *) exit 0 ;;
esac

if ! mounted "$newroot"; then
    say "$newroot is not a mount point: no union"
    exit 0
fi
if [ "$(fstype "$newroot")" = fuse.ltsp-unionfs ]; then
    exit 0
fi

# /dev/fuse appears with the module; an initramfs-tools image may not have loaded it yet (dracut's has).
modprobe -q fuse 2> /dev/null

size=$(arg rd.ltsp.unionfs.size)
size=${size:-50%}
opts=$(arg rd.ltsp.unionfs.opts)

undo() {
    say "$1; booting without the union"
    umount "$base/rw" 2>/dev/null
    umount "$base/ro" 2>/dev/null
    exit 0
}

# The layer mounts are private: systemd makes every mount shared, so a bind of $newroot would be a peer of
# $newroot and receive the union mounted there by propagation, hiding the image it is meant to show.
mkdir -p "$base/ro" "$base/rw" || undo "cannot create $base"
mount --bind "$newroot" "$base/ro" || undo "cannot bind $newroot to $base/ro"
mount --make-private "$base/ro" || undo "cannot make $base/ro a private mount"
mount -o remount,bind,ro "$base/ro" 2>/dev/null
mount -t tmpfs -o "mode=0755,size=$size" ltsp-unionfs-rw "$base/rw" || undo "cannot mount a tmpfs of size $size on $base/rw"
mount --make-private "$base/rw" || undo "cannot make $base/rw a private mount"
# The command returns once the union answers, or fails with a one-line reason, kept for the warning.
errors="$base/ltsp-unionfs.err"
if ! ltsp-unionfs ${opts:+-o "$opts"} -o fsname=ltsp-unionfs "ro=$base/ro" "rw=$base/rw" "$newroot" 2> "$errors"; then
    reason=
    while IFS= read -r line; do reason=$line; done < "$errors"
    rm -f "$errors"
    undo "ltsp-unionfs failed${reason:+: $reason}"
fi
rm -f "$errors"
say "$newroot is a union of $base/ro (read-only) and a tmpfs of size $size"
exit 0
