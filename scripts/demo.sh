#!/usr/bin/env bash
# make demo: mount a union over a sample read-only tree, show that a write lands in the upper layer and that the
# lower layer is unchanged, then unmount. Runs as root (mount(2)) or as a user who may use fusermount3.
set -euo pipefail

bin=${1:-./ltsp-unionfs}
work=$(mktemp -d /tmp/ltsp-unionfs-demo.XXXXXX)
lower=$work/lower upper=$work/upper mnt=$work/mnt
cleanup() {
	if mountpoint -q "$mnt" 2>/dev/null; then
		if [ "$(id -u)" = 0 ]; then umount "$mnt"; else fusermount3 -u "$mnt"; fi
	fi
	rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "A sample read-only tree (the lower layer) and an empty upper layer"
mkdir -p "$lower/etc" "$lower/usr/share/doc" "$upper" "$mnt"
echo "demo-client" > "$lower/etc/hostname"
printf 'line one\nline two\n' > "$lower/usr/share/doc/README"
chmod -R a-w "$lower"
before=$(cd "$lower" && find . -type f -exec sha256sum {} + | sort)
(cd "$lower" && find . | sort)

step "Mount: $bin ro=$lower rw=$upper $mnt"
"$bin" ro="$lower" rw="$upper" "$mnt"
findmnt -no SOURCE,FSTYPE,OPTIONS "$mnt"

step "The merged view shows the lower layer"
ls -la "$mnt" "$mnt/etc"
cat "$mnt/etc/hostname"

step "Write through the union: change a lower file, add files, delete a lower file"
echo "demo-client-renamed" > "$mnt/etc/hostname"
echo "written through the union" > "$mnt/etc/motd"
mkdir -p "$mnt/var/log"
echo "boot ok" > "$mnt/var/log/demo.log"
rm "$mnt/usr/share/doc/README"
cat "$mnt/etc/hostname" "$mnt/etc/motd" "$mnt/var/log/demo.log"
ls -la "$mnt/usr/share/doc"

step "The changes landed in the upper layer (copies, new files, a whiteout for the deleted file)"
(cd "$upper" && find . -printf '%y %p\n' | sort -k2)

step "The lower layer is unchanged"
after=$(cd "$lower" && find . -type f -exec sha256sum {} + | sort)
if [ "$before" = "$after" ]; then
	echo "lower layer unchanged: $(echo "$after" | wc -l) files, same checksums"
else
	echo "THE LOWER LAYER CHANGED" >&2
	exit 1
fi
[ ! -e "$lower/etc/motd" ] && echo "no etc/motd in the lower layer; etc/hostname still says $(cat "$lower/etc/hostname")"

step "Unmount"
pid=$(pgrep -f -- "rw=$upper $mnt\$" || true)
if [ "$(id -u)" = 0 ]; then umount "$mnt"; else fusermount3 -u "$mnt"; fi
mountpoint -q "$mnt" && { echo "still mounted" >&2; exit 1; }
for _ in $(seq 50); do [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then echo "the daemon ($pid) did not exit" >&2; exit 1; fi
echo "unmounted; the daemon${pid:+ ($pid)} has exited"
