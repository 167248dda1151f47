package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// The dracut module (dracut/90ltsp-unionfs): its scripts pass shellcheck, dracut builds images with it in both
// flavours, and its root script turns a mounted root into the union, or leaves it alone when told to or when
// something fails.

// moduleDir is the dracut module in the source tree.
var moduleDir = filepath.Join("..", "..", "dracut", "90ltsp-unionfs")

// initramfsToolsDir holds the initramfs-tools hook and boot script, which run the same root script.
var initramfsToolsDir = filepath.Join("..", "..", "initramfs-tools")

func TestDracutShellcheck(t *testing.T) {
	testutil.RequireTool(t, "shellcheck", "shellcheck")
	scripts, _ := filepath.Glob(filepath.Join(moduleDir, "*.sh"))
	if len(scripts) < 3 {
		t.Fatalf("found only %v", scripts)
	}
	scripts = append(scripts, filepath.Join(initramfsToolsDir, "hooks", "ltsp-unionfs"),
		filepath.Join(initramfsToolsDir, "scripts", "ltsp-unionfs-bottom"))
	for _, s := range scripts {
		shell := "sh"
		if filepath.Base(s) == "module-setup.sh" {
			shell = "bash"
		}
		if out, err := exec.Command("shellcheck", "-s", shell, s).CombinedOutput(); err != nil {
			t.Errorf("shellcheck %s: %v\n%s", s, err, out)
		}
	}
}

// TestDracutImage builds initramfs images with the module (dracut-core, with the binary installed into a private
// overlay of /usr/sbin, where dracut looks for it) and lists them: without systemd the pre-pivot hook, with it
// the unit wanted by initrd-root-fs.target; both hold the binary and the root script.
func TestDracutImage(t *testing.T) {
	testutil.RequireTool(t, "dracut", "dracut-core")
	bin := buildStatic(t)
	dir := t.TempDir()
	base := filepath.Join(dir, "dracut")
	if out, err := exec.Command("cp", "-a", "/usr/lib/dracut", base).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if out, err := exec.Command("cp", "-a", moduleDir, filepath.Join(base, "modules.d")).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	script := `
bin=$1 base=$2 dir=$3
mkdir -p "$dir/u" "$dir/w"
mount -t overlay overlay -o "lowerdir=/usr/sbin,upperdir=$dir/u,workdir=$dir/w" /usr/sbin
cp "$bin" /usr/sbin/ltsp-unionfs
build() { # build IMAGE MODULES
	dracutbasedir=$base dracut --no-kernel --no-compress --no-hostonly --force --tmpdir "$dir" -m "$2" "$1" \
		> "$1.log" 2>&1 || { cat "$1.log"; echo "FAIL: dracut -m $2"; exit 1; }
	lsinitrd "$1" > "$1.list" 2>&1
}
build "$dir/plain.img" "base ltsp-unionfs"
build "$dir/systemd.img" "base systemd ltsp-unionfs"
echo ALL-OK
`
	out, err := inNamespace(t, false, script, bin, base, dir)
	if err != nil || !strings.Contains(out, "ALL-OK") {
		t.Fatalf("%v\n%s", err, out)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	plain, systemd := read("plain.img.list"), read("systemd.img.list")
	for _, want := range []string{"usr/sbin/ltsp-unionfs\n", "usr/sbin/ltsp-unionfs-root\n", "hooks/pre-pivot/10-ltsp-unionfs-pre-pivot.sh",
		"hooks/shutdown/20-ltsp-unionfs-shutdown.sh"} {
		if !strings.Contains(plain, want) {
			t.Errorf("the image without systemd lacks %s:\n%s", want, plain)
		}
	}
	for _, want := range []string{"usr/sbin/ltsp-unionfs\n", "usr/sbin/ltsp-unionfs-root\n", "ltsp-unionfs-root.service",
		"initrd-root-fs.target.wants/ltsp-unionfs-root.service", "hooks/shutdown/20-ltsp-unionfs-shutdown.sh"} {
		if !strings.Contains(systemd, want) {
			t.Errorf("the systemd image lacks %s:\n%s", want, systemd)
		}
	}
	// The root script's tools, which the module installs: a minimal initramfs lacks some of them (Debian's has no
	// tail, and awk only where a network module brings it).
	for _, tool := range []string{"awk", "cat", "grep", "mkdir", "mount", "umount", "rm"} {
		for name, list := range map[string]string{"without systemd": plain, "with systemd": systemd} {
			if !regexp.MustCompile(`(?m)bin/` + tool + `( |$)`).MatchString(list) {
				t.Errorf("the image %s lacks %s, which the root script runs", name, tool)
			}
		}
	}
	if strings.Contains(systemd, "hooks/pre-pivot/10-ltsp-unionfs") {
		t.Error("the systemd image has the pre-pivot hook as well as the unit")
	}
}

// TestDracutRootScript runs the module's root script against a fake new root (a tmpfs mounted in a private mount
// namespace), as the hook and the unit do: with rd.ltsp.unionfs=1 the root becomes the union (image below,
// tmpfs of the requested size above), and the layer mounts keep showing the layers although every mount is
// shared, as under systemd; a second run changes nothing; without the switch, or when ltsp-unionfs
// fails, the root is left as it was and nothing stays mounted.
func TestDracutRootScript(t *testing.T) {
	testutil.RequireRoot(t)
	bin := buildStatic(t)
	dir := t.TempDir()
	binDir := filepath.Join(dir, "bin")
	failDir := filepath.Join(dir, "failbin")
	testutil.Mkdirs(t, binDir)
	testutil.Mkdirs(t, failDir)
	testutil.Symlink(t, bin, filepath.Join(binDir, "ltsp-unionfs"))
	testutil.WriteFile(t, filepath.Join(failDir, "ltsp-unionfs"), []byte("#!/bin/sh\necho broken >&2\nexit 5\n"), 0755)
	rootScript, err := filepath.Abs(filepath.Join(moduleDir, "ltsp-unionfs-root.sh"))
	if err != nil {
		t.Fatal(err)
	}
	script := `
root_script=$1 bindir=$2 failbin=$3 dir=$4
newroot=$dir/sysroot base=$dir/run/initramfs/ltsp
mkdir -p "$newroot"
# As under systemd, every mount is shared: a careless bind of the root would receive the union by propagation.
mount --make-rshared /
mount -t tmpfs -o mode=0755 image "$newroot"
mkdir -p "$newroot/etc" && echo image > "$newroot/etc/hello"
export LTSP_UNIONFS_BASE=$base
fstype() { findmnt -n -o FSTYPE --mountpoint "$1" | tail -1; }
# Not asked for: nothing happens.
LTSP_UNIONFS_CMDLINE="quiet rd.ltsp.unionfs=0" PATH=$bindir:$PATH sh "$root_script" "$newroot"
[ "$(fstype "$newroot")" = tmpfs ] || { echo "FAIL: acted without rd.ltsp.unionfs"; exit 1; }
# ltsp-unionfs fails: undone, the root is as it was.
LTSP_UNIONFS_CMDLINE="rd.ltsp.unionfs=1" PATH=$failbin:$PATH sh "$root_script" "$newroot" 2> "$dir/err"
grep -q "ltsp-unionfs failed: broken; booting without the union" "$dir/err" || { echo "FAIL: no warning: $(cat "$dir/err")"; exit 1; }
[ "$(fstype "$newroot")" = tmpfs ] || { echo "FAIL: the root changed after a failure"; exit 1; }
! findmnt -n --mountpoint "$base/ro" > /dev/null && ! findmnt -n --mountpoint "$base/rw" > /dev/null ||
	{ echo "FAIL: layers left mounted after a failure"; exit 1; }
# Asked for: the root becomes the union.
LTSP_UNIONFS_CMDLINE="ro rd.ltsp.unionfs rd.ltsp.unionfs.size=32M rd.ltsp.unionfs.opts=noatime" PATH=$bindir:$PATH \
	sh "$root_script" "$newroot"
[ "$(fstype "$newroot")" = fuse.ltsp-unionfs ] || { echo "FAIL: the root is $(fstype "$newroot")"; exit 1; }
findmnt -n -o OPTIONS --mountpoint "$newroot" | grep -q noatime || { echo "FAIL: rd.ltsp.unionfs.opts ignored"; exit 1; }
[ "$(cat "$newroot/etc/hello")" = image ] || { echo "FAIL: the image does not show"; exit 1; }
[ "$(fstype "$base/ro")" = tmpfs ] && [ "$(fstype "$base/rw")" = tmpfs ] ||
	{ echo "FAIL: the union propagated onto a layer: ro/ is $(fstype "$base/ro"), rw/ is $(fstype "$base/rw")"; exit 1; }
echo changed > "$newroot/etc/hello"
[ "$(cat "$base/rw/etc/hello")" = changed ] || { echo "FAIL: the write is not in the tmpfs"; exit 1; }
[ "$(cat "$base/ro/etc/hello")" = image ] || { echo "FAIL: the image changed"; exit 1; }
size=$(findmnt -n -o SIZE --mountpoint "$base/rw" | tr -d ' ')
[ "$size" = 32M ] || { echo "FAIL: tmpfs size $size"; exit 1; }
# Again: nothing more is stacked.
LTSP_UNIONFS_CMDLINE="rd.ltsp.unionfs=1" PATH=$bindir:$PATH sh "$root_script" "$newroot"
[ "$(findmnt -n --mountpoint "$newroot" | wc -l)" = 2 ] || { echo "FAIL: stacked twice"; findmnt --mountpoint "$newroot"; exit 1; }
umount "$newroot"
for i in $(seq 50); do pgrep -f -- "$newroot\$" > /dev/null || break; sleep 0.1; done
echo ALL-OK
`
	out, err := inNamespace(t, false, script, rootScript, binDir, failDir, dir)
	if err != nil || !strings.Contains(out, "ALL-OK") {
		t.Fatalf("%v\n%s", err, out)
	}
}
