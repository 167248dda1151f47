package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// TestExitCodes checks each refusal of the command line: its exit code, its one-line error naming what is at
// fault, and that no mount is left behind.
func TestExitCodes(t *testing.T) {
	l := newLayout(t)
	file := filepath.Join(l.dir, "file")
	testutil.WriteFile(t, file, nil, 0644)
	nested := filepath.Join(l.lower, "nested")
	testutil.Mkdirs(t, nested)
	mntInUpper := filepath.Join(l.upper, "mnt")
	testutil.Mkdirs(t, mntInUpper)
	ro, rw := "ro="+l.lower, "rw="+l.upper

	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown flag", []string{"--bogus", ro, rw, l.mnt}, exitUsage, "unknown flag: --bogus"},
		{"unknown option", []string{"-o", "allow_other,bogus", ro, rw, l.mnt}, exitUsage, `unknown mount option "bogus"`},
		{"option without its value", []string{"-o", "fsname", ro, rw, l.mnt}, exitUsage, "mount option fsname needs a value"},
		{"value for a flag option", []string{"-o", "suid=yes", ro, rw, l.mnt}, exitUsage, "mount option suid takes no value"},
		{"rw= in -o", []string{"-o", "rw=" + l.upper, ro, l.mnt}, exitUsage, "upperdir=DIR"},
		{"bad timeout", []string{"-o", "entry_timeout=soon", ro, rw, l.mnt}, exitUsage, "entry_timeout=soon: want a number"},
		{"missing mount point", []string{ro, rw}, exitUsage, "missing mount point"},
		{"no lower", []string{rw, l.mnt}, exitUsage, "no read-only layer"},
		{"size with an upper", []string{"-o", "size=1G", ro, rw, l.mnt}, exitUsage, "sets the size of the anonymous upper layer"},
		{"bad size", []string{"-o", "size=", ro, l.mnt}, exitUsage, "mount option size=: want a size"},
		{"unionfs-fuse: two writable branches", []string{"-o", "cow", l.upper + "=RW:" + l.lower2 + "=RW:" + l.lower + "=RO", l.mnt}, exitUsage, "more than one writable branch"},
		{"unionfs-fuse: writable branch below", []string{"-o", "cow", l.lower + "=RO:" + l.upper + "=RW", l.mnt}, exitUsage, "must come first"},
		{"unionfs-fuse: no read-only branch", []string{"-o", "cow", l.upper + "=RW", l.mnt}, exitUsage, "no read-only branch"},
		{"unionfs-fuse: branches twice", []string{"-o", "cow,dirs=" + l.upper + "=RW:" + l.lower + "=RO", l.upper + "=RW:" + l.lower + "=RO", l.mnt}, exitUsage, "the layers are already given"},
		{"unionfs-fuse: relaxed_permissions", []string{"-o", "cow,relaxed_permissions", l.upper + "=RW:" + l.lower + "=RO", l.mnt}, exitUsage, "relaxed_permissions is not supported"},
		{"unionfs-fuse: chroot after the branches", []string{"-o", "cow,dirs=" + l.upper + "=RW:" + l.lower + "=RO,chroot=/", l.mnt}, exitUsage, "must come before the branches"},
		{"two uppers", []string{ro, rw, "rw=" + l.lower2, l.mnt}, exitUsage, "the upper layer is given twice"},
		{"empty lower in list", []string{"ro=" + l.lower + "::" + l.lower2, rw, l.mnt}, exitUsage, "empty layer path"},
		{"stray argument", []string{ro, rw, "what", "ever", l.mnt}, exitUsage, "unexpected arguments"},
		{"missing lower", []string{"ro=" + l.dir + "/nope", rw, l.mnt}, exitLayer, "lower layer " + l.dir + "/nope does not exist"},
		{"missing upper", []string{ro, "rw=" + l.dir + "/nope", l.mnt}, exitLayer, "upper layer " + l.dir + "/nope does not exist"},
		{"lower is a file", []string{"ro=" + file, rw, l.mnt}, exitLayer, "lower layer " + file + " is not a directory"},
		{"same lower and upper", []string{ro, "rw=" + l.lower, l.mnt}, exitLayer, "is the same directory as the upper layer"},
		{"upper inside lower", []string{ro, "rw=" + nested, l.mnt}, exitLayer, "lies inside the lower layer " + l.lower},
		{"lower inside upper", []string{"ro=" + mntInUpper, rw, l.mnt}, exitLayer, "lies inside the upper layer " + l.upper},
		{"missing mount point dir", []string{ro, rw, l.dir + "/nope"}, exitMountPoint, "mount point " + l.dir + "/nope does not exist"},
		{"mount point is a file", []string{ro, rw, file}, exitMountPoint, "mount point " + file + " is not a directory"},
		{"mount point in upper", []string{ro, rw, mntInUpper}, exitMountPoint, "lies inside the upper layer"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, mode := range []string{"background", "foreground"} {
				args := c.args
				if mode == "foreground" {
					args = append([]string{"-f"}, args...)
				}
				r := runCLI(t, "", args...)
				if r.code != c.code {
					t.Errorf("%s: exit %d, want %d; stderr: %s", mode, r.code, c.code, r.stderr)
				}
				lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
				if len(lines) != 1 || !strings.HasPrefix(lines[0], "ltsp-unionfs: ") || !strings.Contains(lines[0], c.want) {
					t.Errorf("%s: stderr %q, want one line containing %q", mode, r.stderr, c.want)
				}
				if mounts := testutil.UnionMounts(l.dir); len(mounts) > 0 {
					t.Fatalf("%s: a failed invocation left mounts behind: %v", mode, mounts)
				}
			}
		})
	}
}

// TestExitCodesAsUser checks the refusals that need an unprivileged caller: a lower the daemon cannot read (root
// reads everything) and a mount that fusermount3 refuses.
func TestExitCodesAsUser(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFUSE(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv (util-linux) is needed to run as another user")
	}
	dir, err := os.MkdirTemp(packageTmp, "user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0755)
	mk := func(name string, mode os.FileMode, owned bool) string {
		p := filepath.Join(dir, name)
		os.Mkdir(p, mode)
		os.Chmod(p, mode)
		if owned {
			os.Chown(p, 65534, 65534)
		}
		return p
	}
	lower, secret := mk("lower", 0755, false), mk("secret", 0700, false)
	upper, mnt, rootMnt := mk("upper", 0755, true), mk("mnt", 0755, true), mk("root-mnt", 0755, false)
	nobody := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"}

	r := runCLIAs(t, "", nobody, "ro="+secret, "rw="+upper, mnt)
	if r.code != exitLayer || !strings.Contains(r.stderr, "lower layer "+secret+" is not readable") {
		t.Errorf("unreadable lower: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLIAs(t, "", nobody, "ro="+lower, "rw="+lower+"/../"+filepath.Base(lower), mnt)
	if r.code != exitLayer {
		t.Errorf("unwritable upper: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLIAs(t, "", nobody, "ro="+lower, mnt)
	if r.code != exitLayer || !strings.Contains(r.stderr, "anonymous tmpfs upper layer needs root") {
		t.Errorf("anonymous upper as a user: exit %d, stderr %q", r.code, r.stderr)
	}
	r = runCLIAs(t, "", nobody, "ro="+lower, "rw="+upper, rootMnt)
	if r.code != exitMount || !strings.Contains(r.stderr, "cannot mount on "+rootMnt) {
		t.Errorf("mount on a directory the user may not mount on: exit %d, stderr %q", r.code, r.stderr)
	}
	// And an unprivileged user can mount through fusermount3 where allowed. Distributions make /dev/fuse
	// world-accessible; some test machines do not, so open it up for the length of the test.
	var devFuse syscall.Stat_t
	if err := syscall.Stat("/dev/fuse", &devFuse); err != nil {
		t.Fatal(err)
	}
	if devFuse.Mode&0006 != 0006 {
		os.Chmod("/dev/fuse", 0666)
		t.Cleanup(func() { os.Chmod("/dev/fuse", os.FileMode(devFuse.Mode&0777)) })
	}
	testutil.WriteFile(t, filepath.Join(lower, "hello"), []byte("from the lower\n"), 0644)
	r = runCLIAs(t, "", nobody, "ro="+lower, "rw="+upper, mnt)
	if r.code != 0 {
		t.Fatalf("user mount: exit %d, stderr %q", r.code, r.stderr)
	}
	t.Cleanup(func() { unmountAndWait(t, mnt) })
	// Without allow_other only the mounting user may enter the mount.
	got, err := exec.Command(nobody[0], append(nobody[1:], "cat", filepath.Join(mnt, "hello"))...).CombinedOutput()
	if err != nil || string(got) != "from the lower\n" {
		t.Errorf("reading through the user mount: %q %v", got, err)
	}
	m, _ := testutil.MountAt(mnt)
	if !strings.Contains(m.Options, "nosuid") || !strings.Contains(m.Options, "nodev") {
		t.Errorf("a user mount must be nosuid,nodev; options %s", m.Options)
	}
}

// TestDaemonDiesBeforeReady kills the background daemon while it waits on a layer that does not answer (a
// stopped FUSE filesystem): the command exits with exitDaemon and says so.
func TestDaemonDiesBeforeReady(t *testing.T) {
	testutil.RequireRoot(t)
	stuck := newLayout(t)
	mountBG(t, stuck)
	stuckPIDs := daemonPIDs(stuck.mnt)
	if len(stuckPIDs) != 1 {
		t.Fatalf("found daemons %v for %s", stuckPIDs, stuck.mnt)
	}
	// Stop the first union's daemon; a new union whose lower is that mount hangs reading it.
	syscall.Kill(stuckPIDs[0], syscall.SIGSTOP)
	defer syscall.Kill(stuckPIDs[0], syscall.SIGCONT)

	l := newLayout(t)
	done := make(chan result, 1)
	go func() { done <- runCLI(t, "", "ro="+stuck.mnt, "rw="+l.upper, l.mnt) }()
	var child []int
	for i := 0; i < 500 && len(child) == 0; i++ {
		time.Sleep(10 * time.Millisecond)
		for _, pid := range daemonPIDs(l.mnt) {
			env, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
			if strings.Contains(string(env), notifyEnv+"=") {
				child = append(child, pid)
			}
		}
	}
	if len(child) != 1 {
		t.Fatalf("did not find the daemon child (%v)", child)
	}
	syscall.Kill(child[0], syscall.SIGKILL)
	r := <-done
	if r.code != exitDaemon || !strings.Contains(r.stderr, "before the mount was live") {
		t.Errorf("exit %d, stderr %q; want %d and a message that the daemon died", r.code, r.stderr, exitDaemon)
	}
	syscall.Kill(stuckPIDs[0], syscall.SIGCONT)
}

// TestBackgroundMountIsLive mounts in the background: the command returns 0 with the mount answering, holds no
// descriptor of its caller's output, and the daemon exits when the mount is unmounted with umount(8).
func TestBackgroundMountIsLive(t *testing.T) {
	l := newLayout(t)
	testutil.WriteFile(t, filepath.Join(l.lower2, "deep"), []byte("from lower2"), 0644)
	testutil.WriteFile(t, filepath.Join(l.lower, "top"), []byte("from lower"), 0644)
	testutil.RequireFUSE(t)
	// CombinedOutput returns only when every holder of the output pipe has closed it: the daemon must not keep it.
	out, err := exec.Command(binary, "ro="+l.lower+":"+l.lower2, "rw="+l.upper, l.mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("mount: %v: %s", err, out)
	}
	pids := daemonPIDs(l.mnt)
	defer unmountAndWait(t, l.mnt)
	for name, want := range map[string]string{"top": "from lower", "deep": "from lower2"} {
		got, err := os.ReadFile(filepath.Join(l.mnt, name))
		if err != nil || string(got) != want {
			t.Errorf("right after the command returned, %s reads %q, %v", name, got, err)
		}
	}
	m, ok := testutil.MountAt(l.mnt)
	if !ok || m.FSType != "fuse.ltsp-unionfs" {
		t.Fatalf("no fuse.ltsp-unionfs mount at %s: %+v", l.mnt, m)
	}
	if os.Geteuid() == 0 {
		if strings.Contains(m.Options, "nosuid") || strings.Contains(m.Options, "nodev") {
			t.Errorf("a root mount must allow suid and dev; options %s", m.Options)
		}
		for _, o := range []string{"allow_other", "default_permissions"} {
			if !strings.Contains(m.SuperOpts, o) {
				t.Errorf("superblock options %s lack %s", m.SuperOpts, o)
			}
		}
	}
	if len(pids) != 1 {
		t.Fatalf("expected one daemon, found %v", pids)
	}
	if out, err := exec.Command("umount", l.mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v: %s", err, out)
	}
	waitGone(t, pids)
}

// TestSignalsUnmount sends SIGTERM and SIGINT to the daemon: it unmounts and exits 0.
func TestSignalsUnmount(t *testing.T) {
	testutil.RequireFUSE(t)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			l := newLayout(t)
			cmd, _ := startForeground(t, l)
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if err := waitExit(t, cmd, time.Minute); err != nil {
				t.Fatalf("daemon exit after %v: %v", sig, err)
			}
			if _, ok := testutil.MountAt(l.mnt); ok {
				t.Errorf("%s still mounted after %v", l.mnt, sig)
				testutil.Unmount(t, l.mnt)
			}
		})
	}
}

// TestSignalWhileBusyDetaches sends SIGTERM while a process has a file open on the mount: the mount is detached
// lazily, the open file keeps working, and the daemon exits once it is closed.
func TestSignalWhileBusyDetaches(t *testing.T) {
	testutil.RequireFUSE(t)
	testutil.RequireRoot(t)
	l := newLayout(t)
	testutil.WriteFile(t, filepath.Join(l.lower, "f"), []byte("still readable"), 0644)
	cmd, _ := startForeground(t, l)
	f, err := os.Open(filepath.Join(l.mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Process.Signal(syscall.SIGTERM)
	for i := 0; i < 200; i++ {
		if _, ok := testutil.MountAt(l.mnt); !ok {
			break
		}
		time.Sleep(25 * time.Millisecond)
	}
	if _, ok := testutil.MountAt(l.mnt); ok {
		t.Fatalf("%s still mounted after SIGTERM", l.mnt)
	}
	buf := make([]byte, 64)
	n, err := f.ReadAt(buf, 0)
	if string(buf[:n]) != "still readable" {
		t.Errorf("reading the open file after the detach: %q %v", buf[:n], err)
	}
	f.Close()
	if err := waitExit(t, cmd, time.Minute); err != nil {
		t.Errorf("daemon exit: %v", err)
	}
}

// waitExit waits for cmd to exit; a daemon still running after d is killed and the test fails, rather than
// hanging the package until go test's own timeout.
func waitExit(t *testing.T, cmd *exec.Cmd, d time.Duration) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(d):
		cmd.Process.Kill()
		<-done
		t.Fatalf("%s did not exit within %v", cmd.Path, d)
		return nil
	}
}

// startForeground runs the binary with -f and waits, through the readiness pipe, until the mount is live. It
// returns the process and its stderr.
func startForeground(t *testing.T, l layout, extra ...string) (*exec.Cmd, *strings.Builder) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	args := append([]string{"-f", "ro=" + l.lower + ":" + l.lower2, "rw=" + l.upper, l.mnt}, extra...)
	cmd := exec.Command(binary, args...)
	cmd.Env = append(os.Environ(), notifyEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	buf := make([]byte, 256)
	n, _ := r.Read(buf)
	r.Close()
	if strings.TrimSpace(string(buf[:n])) != "OK" {
		cmd.Wait()
		t.Fatalf("foreground mount did not become ready: %q; stderr: %s", buf[:n], stderr.String())
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}
		if _, ok := testutil.MountAt(l.mnt); ok {
			testutil.Unmount(t, l.mnt)
		}
	})
	return cmd, &stderr
}

// TestRelativePaths mounts with relative layer and mount point paths.
func TestRelativePaths(t *testing.T) {
	testutil.RequireFUSE(t)
	l := newLayout(t)
	testutil.WriteFile(t, filepath.Join(l.lower, "rel"), []byte("relative"), 0644)
	r := runCLI(t, l.dir, "ro=lower:./lower2", "rw=upper", "mnt")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	defer unmountAndWait(t, l.mnt)
	if got, err := os.ReadFile(filepath.Join(l.mnt, "rel")); err != nil || string(got) != "relative" {
		t.Errorf("read: %q %v", got, err)
	}
}

// TestOptionFormsAgree mounts with the layers and options given as -o options, as long flags with dashes and
// with underscores, and as an fstab-style source argument.
func TestOptionFormsAgree(t *testing.T) {
	testutil.RequireFUSE(t)
	forms := map[string]func(l layout) []string{
		"-o lowerdir": func(l layout) []string {
			return []string{"-o", "lowerdir=" + l.lower + ":" + l.lower2 + ",upperdir=" + l.upper + ",noatime,nofail,x-systemd.automount", "union", l.mnt}
		},
		"long flags": func(l layout) []string {
			return []string{"--lowerdir=" + l.lower + ":" + l.lower2, "--upperdir", l.upper, "--entry-timeout=2", "--attr_timeout=2", l.mnt}
		},
		"source argument": func(l layout) []string {
			return []string{"ro=" + l.lower + ":" + l.lower2 + ",rw=" + l.upper, l.mnt, "-o", "defaults,_netdev,comment=x"}
		},
	}
	for name, form := range forms {
		t.Run(name, func(t *testing.T) {
			l := newLayout(t)
			testutil.WriteFile(t, filepath.Join(l.lower2, "f"), []byte(name), 0644)
			r := runCLI(t, "", form(l)...)
			if r.code != 0 {
				t.Fatalf("exit %d: %s", r.code, r.stderr)
			}
			defer unmountAndWait(t, l.mnt)
			if got, err := os.ReadFile(filepath.Join(l.mnt, "f")); err != nil || string(got) != name {
				t.Errorf("read: %q %v", got, err)
			}
		})
	}
}

// TestVersion checks the version subcommand names all three versions.
func TestVersion(t *testing.T) {
	r := runCLI(t, "", "version")
	if r.code != 0 {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	for _, want := range []string{"ltsp-unionfs ", "go-fuse v2.", "go1."} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("version output %q lacks %q", r.stdout, want)
		}
	}
}

// TestHelpListsExitCodesAndOptions checks that --help documents every exit code and every mount option.
func TestHelpListsExitCodesAndOptions(t *testing.T) {
	r := runCLI(t, "", "--help")
	if r.code != 0 {
		t.Fatalf("exit %d", r.code)
	}
	for code := exitOK; code <= exitDaemon; code++ {
		if !strings.Contains(r.stdout, "\n  "+strconv.Itoa(code)+"  ") {
			t.Errorf("--help does not document exit code %d", code)
		}
	}
	for _, s := range mountOptionSpecs {
		if !strings.Contains(r.stdout, "--"+s.name) {
			t.Errorf("--help does not list --%s", s.name)
		}
	}
}
