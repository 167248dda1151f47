package main

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// Root filesystem integration: mount(8) and fstab, the initramfs daemon ('@', SIGTERM), switch_root, SIGSTOP.
// The tests that change mounts outside a temporary directory run in private mount namespaces (unshare), so the
// machine's own mounts are never touched.

var (
	staticOnce   sync.Once
	staticBinary string
	staticErr    error
)

// buildStatic builds the binary as `make` does (CGO_ENABLED=0), once: the one an initramfs holds.
func buildStatic(t *testing.T) string {
	t.Helper()
	staticOnce.Do(func() {
		staticBinary = filepath.Join(packageTmp, "ltsp-unionfs-static")
		cmd := exec.Command("go", "build", "-trimpath", "-o", staticBinary, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			staticErr = fmt.Errorf("building a static binary: %v: %s", err, out)
		}
	})
	if staticErr != nil {
		t.Fatal(staticErr)
	}
	return staticBinary
}

// TestStaticBinary checks that the binary `make` builds needs no dynamic loader: it must run from an initramfs
// and keep running after switch_root deleted every file of it.
func TestStaticBinary(t *testing.T) {
	f, err := elf.Open(buildStatic(t))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatal("the binary has a program interpreter: it is dynamically linked")
		}
	}
}

// inNamespace runs a bash script as root in a private mount namespace (and, with pid, a private PID namespace
// whose init is the script) and returns its combined output. The script gets the arguments as $1...
func inNamespace(t *testing.T, pid bool, script string, args ...string) (string, error) {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireFUSE(t)
	uargs := []string{"-m", "--propagation", "private"}
	if pid {
		uargs = append(uargs, "-p", "-f", "--mount-proc")
	}
	uargs = append(uargs, "bash", "-euo", "pipefail", "-c", script, "script")
	cmd := exec.Command("unshare", append(uargs, args...)...)
	done := make(chan struct{})
	var out []byte
	var err error
	go func() {
		out, err = cmd.CombinedOutput()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("the script did not finish within two minutes; output:\n%s", out)
	}
	return string(out), err
}

// TestMountHelperAndFstab mounts through mount(8): with the mount.fuse.ltsp-unionfs helper (installed into a
// private overlay of /usr/sbin), through mount.fuse3 without the helper, and from fstab lines (mount -T). Each
// mount must be live when mount(8) returns 0, show in findmnt, take writes into the upper layer, and end its
// daemon on umount; a bad line must make mount(8) fail with the helper's exit code and leave no mount.
func TestMountHelperAndFstab(t *testing.T) {
	bin := buildStatic(t)
	l := newLayout(t)
	testutil.WriteFile(t, filepath.Join(l.lower, "hello"), []byte("hello\n"), 0644)
	binDir := filepath.Join(l.dir, "bin")
	testutil.Mkdirs(t, binDir)
	if err := os.Symlink(bin, filepath.Join(binDir, "ltsp-unionfs")); err != nil {
		t.Fatal(err)
	}
	fstab := filepath.Join(l.dir, "fstab")
	os.WriteFile(fstab, []byte(fmt.Sprintf(
		"# a comment\nro=%[1]s,rw=%[2]s %[3]s fuse.ltsp-unionfs defaults,nofail,_netdev,x-systemd.requires=x.mount,noatime 0 0\n"+
			"union %[3]s/sub fuse.ltsp-unionfs lowerdir=%[1]s,upperdir=%[2]s,nodev 0 0\n", l.lower, l.upper, l.mnt)), 0644)
	script := `
bin=$1 bindir=$2 lower=$3 upper=$4 mnt=$5 fstab=$6 work=$7
check() { # check MNT TAG: the mount is a live union, writes land in the upper layer, umount ends the daemon
	findmnt -n -o FSTYPE "$1" | grep -qx fuse.ltsp-unionfs || { echo "FAIL $2: not mounted"; exit 1; }
	[ "$(cat "$1/hello")" = hello ] || { echo "FAIL $2: cannot read"; exit 1; }
	echo "$2" > "$1/written-$2"
	[ -f "$upper/written-$2" ] || [ -f "$upper/sub/written-$2" ] || { echo "FAIL $2: write not in the upper layer"; exit 1; }
	[ ! -e "$lower/written-$2" ] || { echo "FAIL $2: the lower layer changed"; exit 1; }
	umount "$1"
	for i in $(seq 50); do pgrep -f "$1\$" > /dev/null || break; sleep 0.1; done
	! findmnt -n "$1" > /dev/null || { echo "FAIL $2: still mounted"; exit 1; }
	echo "ok $2"
}
# Installed as make install does, into a private overlay of /usr/sbin (the machine's own is untouched): mount(8)
# looks for helpers in /sbin only, and mount.fuse3 runs the program with its own PATH.
mkdir -p "$work/u" "$work/w"
mount -t overlay overlay -o "lowerdir=/usr/sbin,upperdir=$work/u,workdir=$work/w" /usr/sbin
ln -s "$bin" /usr/sbin/ltsp-unionfs
# 1. Through mount.fuse3 (no helper installed): it runs ltsp-unionfs with /bin/sh.
mount -t fuse.ltsp-unionfs "ro=$lower,rw=$upper" "$mnt" -o rw,nofail
check "$mnt" mount.fuse3
# 2. The legacy type#source form of mount.fuse3.
mount -t fuse "ltsp-unionfs#ro=$lower,rw=$upper" "$mnt"
check "$mnt" type-hash-source
# 3. The helper, found by mount(8) in /sbin: no mount.fuse3 and no shell involved.
ln -s "$bin" /usr/sbin/mount.fuse.ltsp-unionfs
env -i PATH=/usr/sbin:/usr/bin mount -t fuse.ltsp-unionfs -o ro "ro=$lower,rw=$upper" "$mnt"
findmnt -n -o OPTIONS "$mnt" | grep -q '^ro,' || { echo "FAIL helper: -o ro not honoured"; exit 1; }
[ "$(cat "$mnt/hello")" = hello ] || { echo "FAIL helper-ro: cannot read"; exit 1; }
! touch "$mnt/x" 2> /dev/null || { echo "FAIL helper: a read-only mount took a write"; exit 1; }
umount "$mnt"; sleep 0.3
env -i PATH=/usr/sbin:/usr/bin mount -t fuse.ltsp-unionfs "ro=$lower,rw=$upper" "$mnt"
check "$mnt" helper
# 4. fstab lines, as mount -a and systemd's fstab generator see them (mount -T FILE).
env -i PATH=/usr/sbin:/usr/bin mount -T "$fstab" "$mnt"
findmnt -n -o OPTIONS "$mnt" | grep -q noatime || { echo "FAIL fstab: noatime not honoured"; exit 1; }
mkdir -p "$mnt/sub"
env -i PATH=/usr/sbin:/usr/bin mount -T "$fstab" "$mnt/sub"
findmnt -n -o OPTIONS "$mnt/sub" | grep -q nodev || { echo "FAIL fstab: nodev not honoured"; exit 1; }
[ "$(findmnt -n -o SOURCE "$mnt/sub")" = union ] || { echo "FAIL fstab: the source is not the mount's name"; exit 1; }
umount "$mnt/sub"
check "$mnt" fstab
# 5. Failures: mount(8) returns the helper's code and nothing is mounted.
set +e
env -i PATH=/usr/sbin:/usr/bin mount -t fuse.ltsp-unionfs "ro=$lower/missing,rw=$upper" "$mnt" 2> "$work/err"
rc=$?
set -e
[ $rc = 3 ] || { echo "FAIL: a missing lower gave exit $rc, want 3: $(cat "$work/err")"; exit 1; }
grep -q "does not exist" "$work/err" || { echo "FAIL: error message: $(cat "$work/err")"; exit 1; }
! findmnt -n "$mnt" > /dev/null || { echo "FAIL: mounted after a failure"; exit 1; }
set +e
env -i PATH=/usr/sbin:/usr/bin mount -t fuse.ltsp-unionfs -o bogus "ro=$lower,rw=$upper" "$mnt" 2> "$work/err"
rc=$?
set -e
[ $rc = 2 ] && grep -q bogus "$work/err" || { echo "FAIL: an unknown option gave exit $rc: $(cat "$work/err")"; exit 1; }
# mount -f (fake) checks and mounts nothing; -s (sloppy) ignores the unknown option.
env -i PATH=/usr/sbin:/usr/bin mount -f -t fuse.ltsp-unionfs "ro=$lower,rw=$upper" "$mnt"
! findmnt -n "$mnt" > /dev/null || { echo "FAIL: mount -f mounted"; exit 1; }
env -i PATH=/usr/sbin:/usr/bin mount -s -t fuse.ltsp-unionfs -o bogus "ro=$lower,rw=$upper" "$mnt"
check "$mnt" sloppy
echo ALL-OK
`
	out, err := inNamespace(t, false, script, bin, binDir, l.lower, l.upper, l.mnt, fstab, l.dir)
	if err != nil || !strings.Contains(out, "ALL-OK") {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestInitramfsDaemon starts the daemon where /etc/initrd-release exists (in a private overlay of /etc in a
// private mount namespace): its command line starts with '@' (systemd spares it; the oracle is systemd's
// ignore_proc(): uid 0 and '@'), its process name does not, it leaves the cgroup it was started in, and SIGTERM
// and SIGHUP leave the mount alone.
func TestInitramfsDaemon(t *testing.T) {
	bin := buildStatic(t)
	if _, err := os.Stat("/etc/initrd-release"); err == nil {
		t.Fatal("/etc/initrd-release exists on this machine: every daemon started here believes it runs in an initramfs")
	}
	t.Cleanup(func() {
		if _, err := os.Stat("/etc/initrd-release"); err == nil {
			t.Error("the test left /etc/initrd-release on the host")
		}
	})
	l := newLayout(t)
	testutil.WriteFile(t, filepath.Join(l.lower, "hello"), []byte("hello\n"), 0644)
	for _, fg := range []string{"background", "foreground"} {
		t.Run(fg, func(t *testing.T) {
			script := `
bin=$1 lower=$2 upper=$3 mnt=$4 work=$5 fg=$6
# On any failure: no daemon, mount or cgroup is left behind (the daemon ignores SIGTERM, SIGINT unmounts).
service= pid=
cleanup() {
	set +e
	if [ -n "$pid" ]; then
		kill -INT "$pid" 2> /dev/null
		for i in $(seq 100); do kill -0 "$pid" 2> /dev/null || break; sleep 0.05; done
		kill -KILL "$pid" 2> /dev/null
	fi
	umount -l "$mnt" 2> /dev/null
	if [ -n "$service" ]; then
		echo $$ > "$cg/cgroup.procs"
		for i in $(seq 50); do rmdir "$service" 2> /dev/null && break; sleep 0.1; done
	fi
}
trap cleanup EXIT
# /etc gets a private overlay in this namespace: the host's /etc is never touched, so no daemon outside the
# test ever sees an initramfs.
mkdir -p "$work/etc"
mount -t tmpfs tmpfs "$work/etc"
mkdir "$work/etc/u" "$work/etc/w"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$work/etc/u,workdir=$work/etc/w" /etc
touch /etc/initrd-release
# Started from a "service" cgroup, as a unit of the initrd starts it: the daemon must leave it (systemd kills a
# stopped unit's cgroup) for init.scope, or the root cgroup where there is none.
cg=$(findmnt -n -t cgroup2 -o TARGET | head -n 1)
want=/
[ -n "$cg" ] && [ -d "$cg/init.scope" ] && want=/init.scope
if [ -n "$cg" ]; then
	service=$cg/ltsp-unionfs-test-$$.service
	mkdir "$service"
	echo $$ > "$service/cgroup.procs"
fi
if [ "$fg" = foreground ]; then
	"$bin" -f "ro=$lower" "rw=$upper" "$mnt" > "$work/log" 2>&1 &
	for i in $(seq 100); do findmnt -n "$mnt" > /dev/null && break; sleep 0.05; done
else
	"$bin" "ro=$lower" "rw=$upper" "$mnt"
fi
pid=$(pgrep -f -- "$mnt\$" | head -1)
[ -n "$pid" ] || { echo "FAIL: no daemon"; exit 1; }
cmd=$(tr '\0' ' ' < /proc/$pid/cmdline)
case "$cmd" in @*) ;; *) echo "FAIL: cmdline $cmd"; exit 1 ;; esac
[ "$(stat -c %u /proc/$pid)" = 0 ] || { echo "FAIL: not root"; exit 1; }
case "$(cat /proc/$pid/comm)" in @*) echo "FAIL: comm changed"; exit 1 ;; esac
if [ -n "$service" ]; then
	echo $$ > "$cg/cgroup.procs"
	grep -qx "0::$want" /proc/$pid/cgroup || { echo "FAIL: the daemon is in $(grep '^0::' /proc/$pid/cgroup)"; exit 1; }
	rmdir "$service" || { echo "FAIL: the service cgroup is not empty"; exit 1; }
	service=
	echo "left the service cgroup"
fi
kill -TERM $pid; kill -HUP $pid; sleep 0.5
kill -0 $pid || { echo "FAIL: SIGTERM killed the daemon"; exit 1; }
[ "$(cat "$mnt/hello")" = hello ] || { echo "FAIL: the mount is gone after SIGTERM"; exit 1; }
umount "$mnt"
for i in $(seq 100); do kill -0 $pid 2> /dev/null || break; sleep 0.05; done
! kill -0 $pid 2> /dev/null || { echo "FAIL: the daemon outlived umount"; exit 1; }
pid=
echo ALL-OK
`
			out, err := inNamespace(t, false, script, bin, l.lower, l.upper, l.mnt, l.dir, fg)
			if err != nil || !strings.Contains(out, "ALL-OK") {
				t.Fatalf("%v\n%s", err, out)
			}
			if !strings.Contains(out, "left the service cgroup") {
				t.Errorf("the cgroup check did not run (no cgroup2 hierarchy):\n%s", out)
			}
		})
	}
}

// TestSwitchRoot boots a fake initramfs in private mount and PID namespaces: a tmpfs holding bash, util-linux's
// switch_root and the static binary, with the image (a mini root) bound at run/initramfs/ltsp/ro and a tmpfs at
// run/initramfs/ltsp/rw. It mounts the union on /sysroot and switch_roots into it; from inside, the checks are
// that / is the union, reads come from the image, writes land in the tmpfs, /proc works, the initramfs is gone,
// and the daemon lives, marked '@', through SIGTERM.
func TestSwitchRoot(t *testing.T) {
	bin := buildStatic(t)
	dir := t.TempDir()
	image, initramfs := filepath.Join(dir, "image"), filepath.Join(dir, "initramfs")
	tools := []string{"/bin/bash", "/bin/cat", "/bin/grep", "/bin/ls", "/bin/sleep", "/bin/kill", "/bin/stat",
		"/bin/mkdir", "/bin/tr", "/bin/sed", "/bin/pgrep", "/bin/mount"}
	for _, d := range []string{image, initramfs} {
		testutil.Mkdirs(t, d)
		copyWithLibs(t, d, tools...)
		for _, sub := range []string{"proc", "sys", "dev", "run", "etc", "tmp", "sysroot"} {
			testutil.Mkdirs(t, filepath.Join(d, sub))
		}
	}
	copyWithLibs(t, initramfs, "/sbin/switch_root", "/bin/umount", "/bin/findmnt")
	testutil.WriteFile(t, filepath.Join(image, "etc/hello"), []byte("hello from the image\n"), 0644)
	testutil.WriteFile(t, filepath.Join(initramfs, "etc/initrd-release"), nil, 0644)
	testutil.WriteFile(t, filepath.Join(initramfs, "initramfs-marker"), nil, 0644)
	if out, err := exec.Command("cp", bin, filepath.Join(initramfs, "bin/ltsp-unionfs")).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	checks := `
set -u
fail() { echo "FAIL: $*"; exit 1; }
grep -q ' / / .* - fuse.ltsp-unionfs ' /proc/self/mountinfo || fail "/ is not the union: $(grep ' / / ' /proc/self/mountinfo)"
[ "$(cat /etc/hello)" = "hello from the image" ] || fail "reading the image"
echo written > /etc/written
[ "$(cat /run/initramfs/ltsp/rw/etc/written)" = written ] || fail "the write is not in the upper layer"
[ ! -e /run/initramfs/ltsp/ro/etc/written ] || fail "the write reached the image"
[ -e /proc/self/stat ] || fail "/proc does not work"
mkdir -p /tmp/p && mount -t proc proc /tmp/p && [ -e /tmp/p/self/stat ] || fail "cannot mount proc on the union"
[ ! -e /initramfs-marker ] || fail "the initramfs shows through"
pid=$(pgrep -o -x ltsp-unionfs)
[ -n "$pid" ] || fail "no daemon"
case "$(tr '\0' ' ' < /proc/$pid/cmdline)" in @*) ;; *) fail "daemon cmdline $(tr '\0' ' ' < /proc/$pid/cmdline)" ;; esac
[ ! -e /proc/$pid/root/initramfs-marker ] || fail "switch_root did not empty the initramfs"
kill -TERM $pid; sleep 0.5
kill -0 $pid || fail "SIGTERM killed the daemon"
[ "$(cat /etc/hello)" = "hello from the image" ] || fail "the union is gone after SIGTERM"
echo ALL-OK
`
	testutil.WriteFile(t, filepath.Join(image, "checks.sh"), []byte(checks), 0755)
	init := `
set -e
cd /
mkdir -p /run/initramfs/ltsp/ro /run/initramfs/ltsp/rw
ltsp-unionfs ro=/run/initramfs/ltsp/ro rw=/run/initramfs/ltsp/rw /sysroot
exec switch_root /sysroot /bin/bash /checks.sh
`
	testutil.WriteFile(t, filepath.Join(initramfs, "init"), []byte(init), 0755)
	script := `
initramfs=$1 image=$2
mount -t tmpfs -o mode=0755 initramfs "$initramfs.mnt"
cp -a "$initramfs/." "$initramfs.mnt/"
mount -t tmpfs -o mode=0755 run "$initramfs.mnt/run"
mkdir -p "$initramfs.mnt/run/initramfs/ltsp/ro" "$initramfs.mnt/run/initramfs/ltsp/rw"
mount --bind "$image" "$initramfs.mnt/run/initramfs/ltsp/ro"
mount -t tmpfs -o mode=0755 rw "$initramfs.mnt/run/initramfs/ltsp/rw"
mount --rbind /dev "$initramfs.mnt/dev"
mkdir -p "$initramfs.mnt/oldroot"
cd "$initramfs.mnt"
pivot_root . oldroot
exec /bin/bash -c 'mount -t proc proc /proc && umount -l /oldroot && exec /bin/bash /init'
`
	testutil.Mkdirs(t, initramfs+".mnt")
	out, err := inNamespace(t, true, script, initramfs, image)
	if err != nil || !strings.Contains(out, "ALL-OK") {
		t.Fatalf("%v\n%s", err, out)
	}
}

// copyWithLibs copies programs and the shared libraries ldd lists for them into root, at the same paths.
func copyWithLibs(t *testing.T, root string, programs ...string) {
	t.Helper()
	copyOne := func(src string) {
		real, err := filepath.EvalSymlinks(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		for _, p := range []string{src, real} {
			dst := filepath.Join(root, p)
			if _, err := os.Lstat(dst); err == nil {
				continue
			}
			testutil.Mkdirs(t, filepath.Dir(dst))
			if out, err := exec.Command("cp", "-L", real, dst).CombinedOutput(); err != nil {
				t.Fatalf("cp %s: %v: %s", real, err, out)
			}
		}
	}
	for _, p := range programs {
		copyOne(p)
		out, _ := exec.Command("ldd", p).Output()
		for _, f := range strings.Fields(string(out)) {
			if strings.HasPrefix(f, "/") {
				copyOne(f)
			}
		}
	}
}

// TestStoppedDaemonDoesNotHangCachedPaths SIGSTOPs the daemon (as systemd's killing spree does, before its
// SIGTERM): path walks, stat and listings of paths looked up before must still answer, from the kernel's caches,
// within seconds, so that a stopped root filesystem daemon does not freeze the machine. (Opening a file and
// reading an xattr, as ls -l does for security.selinux, always ask the daemon: FUSE caches neither.)
func TestStoppedDaemonDoesNotHangCachedPaths(t *testing.T) {
	l := newLayout(t)
	testutil.Mkdirs(t, filepath.Join(l.lower, "proc-like/self"))
	testutil.WriteFile(t, filepath.Join(l.lower, "proc-like/self/stat"), []byte("x"), 0644)
	mountBG(t, l)
	paths := []string{l.mnt, filepath.Join(l.mnt, "proc-like"), filepath.Join(l.mnt, "proc-like/self/stat")}
	commands := func(p string) [][]string {
		return [][]string{{"stat", p}, {"ls", filepath.Dir(p)}, {"find", p, "-maxdepth", "1", "-printf", "%s %m %u\n"}}
	}
	// What the kernel has looked up and cached (the same requests: stat(1) also asks for the birth time). Twice:
	// the first read of a directory drops its cached atime, and the next stat of it asks the daemon once more.
	for round := 0; round < 2; round++ {
		for _, p := range paths {
			for _, cmd := range commands(p) {
				if out, err := exec.Command(cmd[0], cmd[1:]...).CombinedOutput(); err != nil {
					t.Fatalf("%v: %v: %s", cmd, err, out)
				}
			}
		}
	}
	pids := daemonPIDs(l.mnt)
	if len(pids) != 1 {
		t.Fatalf("daemons: %v", pids)
	}
	proc, _ := os.FindProcess(pids[0])
	proc.Signal(syscall.SIGSTOP)
	defer proc.Signal(syscall.SIGCONT)
	for _, p := range paths {
		for _, cmd := range commands(p) {
			out, err := exec.Command("timeout", append([]string{"5"}, cmd...)...).CombinedOutput()
			if err != nil {
				t.Errorf("%v with the daemon stopped: %v: %s", cmd, err, out)
			}
		}
	}
}

// TestAnonymousUpper mounts without rw=: the upper layer is a tmpfs of the given size that no path reaches, which
// takes the writes and is gone with the mount; the lower is untouched.
func TestAnonymousUpper(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLayout(t)
	testutil.WriteFile(t, filepath.Join(l.lower, "hello"), []byte("hello\n"), 0644)
	r := runCLI(t, "", "-o", "size=64M", "ro="+l.lower, l.mnt)
	if r.code != 0 {
		t.Fatalf("mount: exit %d: %s", r.code, r.stderr)
	}
	t.Cleanup(func() { unmountAndWait(t, l.mnt) })
	if err := os.WriteFile(filepath.Join(l.mnt, "hello"), []byte("changed\n"), 0644); err != nil {
		t.Fatal(err)
	}
	testutil.Mkdirs(t, filepath.Join(l.mnt, "dir"))
	if got, _ := os.ReadFile(filepath.Join(l.lower, "hello")); string(got) != "hello\n" {
		t.Errorf("the lower changed: %q", got)
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(l.mnt, &st); err != nil {
		t.Fatal(err)
	}
	if size := st.Blocks * uint64(st.Bsize); size != 64<<20 {
		t.Errorf("the union reports %d bytes, want the 64 MiB of its tmpfs", size)
	}
	// Too big for the tmpfs: ENOSPC, not a silent loss.
	big := make([]byte, 65<<20)
	if err := os.WriteFile(filepath.Join(l.mnt, "big"), big, 0644); !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("writing more than the tmpfs holds: %v, want ENOSPC", err)
	}
	// No mount of the tmpfs is visible anywhere, and nothing is left after the unmount.
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Count(string(mounts), "tmpfs tmpfs rw,size=65536k") > 0 {
		t.Errorf("the anonymous tmpfs is attached somewhere:\n%s", mounts)
	}
	unmountAndWait(t, l.mnt)
	if ents, _ := os.ReadDir(l.mnt); len(ents) != 0 {
		t.Errorf("after the unmount the mount point holds %v", ents)
	}
	if got, _ := os.ReadFile(filepath.Join(l.lower, "hello")); string(got) != "hello\n" {
		t.Errorf("the lower changed: %q", got)
	}
}

// TestMountOverItsOwnLower mounts the union on its own lower directory, as an initramfs does with
// ro=/sysroot ... /sysroot: the daemon holds the lower open from before the mount, so the union shows the lower's
// files, writes land in the upper, and the lower underneath is untouched.
func TestMountOverItsOwnLower(t *testing.T) {
	testutil.RequireFUSE(t)
	l := newLayout(t)
	testutil.WriteFile(t, filepath.Join(l.lower, "etc-hostname"), []byte("image\n"), 0644)
	if r := runCLI(t, "", "ro="+l.lower, "rw="+l.upper, l.lower); r.code != 0 {
		t.Fatalf("mount over the lower: exit %d: %s", r.code, r.stderr)
	}
	defer unmountAndWait(t, l.lower)
	if got, err := os.ReadFile(filepath.Join(l.lower, "etc-hostname")); err != nil || string(got) != "image\n" {
		t.Fatalf("through the union: %q, %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(l.lower, "etc-hostname"), []byte("client\n"), 0644); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(filepath.Join(l.upper, "etc-hostname")); string(got) != "client\n" {
		t.Errorf("the write did not land in the upper: %q", got)
	}
	if m, ok := testutil.MountAt(l.lower); !ok || m.FSType != "fuse.ltsp-unionfs" {
		t.Fatalf("no union on %s", l.lower)
	}
	unmountAndWait(t, l.lower)
	if got, _ := os.ReadFile(filepath.Join(l.lower, "etc-hostname")); string(got) != "image\n" {
		t.Errorf("the lower itself changed: %q", got)
	}
}
