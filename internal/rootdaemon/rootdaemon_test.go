package rootdaemon

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/mountinfo"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

func TestMarked(t *testing.T) {
	for in, want := range map[string]string{
		"ltsp-unionfs":       "@ltsp-unionfs",
		"/sbin/ltsp-unionfs": "@/sbin/ltsp-unionfs",
		"@ltsp-unionfs":      "@ltsp-unionfs",
	} {
		if got := Marked(in); got != want {
			t.Errorf("Marked(%q) = %q, want %q", in, got, want)
		}
	}
}

// childEnv names the test a copy of the test binary runs as a child: the tests that change the process itself
// (its command line, its OOM score) do so in a child.
const childEnv = "ROOTDAEMON_TEST_CHILD"

// inChild runs the calling test again in a child process, which sees childEnv set to its name, and returns what
// the child printed.
func inChild(t *testing.T) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$")
	cmd.Env = append(os.Environ(), childEnv+"="+t.Name())
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// TestMarkSelf runs a copy of the test binary that marks itself and prints its cmdline and comm.
func TestMarkSelf(t *testing.T) {
	if os.Getenv(childEnv) == t.Name() {
		MarkSelf()
		cmdline, _ := os.ReadFile("/proc/self/cmdline")
		comm, _ := os.ReadFile("/proc/self/comm")
		fmt.Printf("%s|%s", strings.SplitN(string(cmdline), "\x00", 2)[0], strings.TrimSpace(string(comm)))
		os.Exit(0)
	}
	argv0, comm, _ := strings.Cut(inChild(t), "|")
	if !strings.HasPrefix(argv0, "@") {
		t.Errorf("cmdline starts with %q, want '@'", argv0)
	}
	if strings.HasPrefix(comm, "@") || comm == "" {
		t.Errorf("comm is %q: it must stay the program's name", comm)
	}
}

// TestProtectFromOOM checks the score in a child, so the test process keeps its own. Lowering a score needs
// CAP_SYS_RESOURCE, which some sandboxes withhold from root: there the call must fail with EACCES, not pretend.
// (The VM boot test checks -1000 on a real client.)
func TestProtectFromOOM(t *testing.T) {
	testutil.RequireRoot(t)
	if os.Getenv(childEnv) == t.Name() {
		if err := ProtectFromOOM(); err != nil {
			fmt.Printf("error: %v", errors.Is(err, syscall.EACCES))
			os.Exit(0)
		}
		b, _ := os.ReadFile("/proc/self/oom_score_adj")
		fmt.Print(strings.TrimSpace(string(b)))
		os.Exit(0)
	}
	out := inChild(t)
	want := "-1000"
	if !hasCapability(t, unix.CAP_SYS_RESOURCE) {
		want = "error: true"
	}
	if out != want {
		t.Fatalf("ProtectFromOOM in a child: %q, want %q", out, want)
	}
}

// hasCapability reports whether this process has the capability in its effective set.
func hasCapability(t *testing.T, c uint) bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return caps&(1<<c) != 0
		}
	}
	t.Fatal("no CapEff in /proc/self/status")
	return false
}

// TestLeaveServiceCgroup puts a process into a service-like cgroup of every hierarchy systemd uses on this
// machine, as a unit of the initrd would have, and checks that leaveServiceCgroup takes it out of all of them:
// into the root where there is no init.scope, into init.scope where there is one.
func TestLeaveServiceCgroup(t *testing.T) {
	testutil.RequireRoot(t)
	hs := hierarchies()
	if len(hs) == 0 {
		testutil.Unavailable(t, "no cgroup hierarchy of systemd's is mounted at "+cgroupRoot)
	}
	for _, withScope := range []bool{false, true} {
		t.Run(fmt.Sprintf("init.scope=%v", withScope), func(t *testing.T) {
			want := "/"
			for _, h := range hs {
				scope := filepath.Join(h.dir, initScope)
				_, err := os.Stat(scope)
				exists := err == nil
				if exists != withScope && exists {
					t.Skipf("%s exists (systemd runs here): the case without it cannot be made", scope)
				}
				if withScope && !exists {
					if err := os.Mkdir(scope, 0755); err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { removeCgroup(t, scope) })
				}
			}
			if withScope {
				want = "/" + initScope
			}
			sleeper := exec.Command("sleep", "600")
			if err := sleeper.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })
			pid := sleeper.Process.Pid
			service := "/ltsp-unionfs-test-" + strconv.Itoa(os.Getpid()) + ".service"
			for _, h := range hs {
				dir := filepath.Join(h.dir, service)
				if err := os.Mkdir(dir, 0755); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { removeCgroup(t, dir) })
				if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
					t.Fatal(err)
				}
			}
			assertCgroups(t, pid, hs, service)

			moved, err := leaveServiceCgroup(pid)
			if err != nil {
				t.Fatal(err)
			}
			if len(moved) != len(hs) {
				t.Errorf("moved to %v, want one entry for each of %d hierarchies", moved, len(hs))
			}
			assertCgroups(t, pid, hs, want)

			// Where it already is, nothing moves.
			if moved, err := leaveServiceCgroup(pid); err != nil || len(moved) != 0 {
				t.Errorf("a second call moved %v (%v), want nothing", moved, err)
			}
		})
	}
}

// assertCgroups checks that pid is in the cgroup want of every hierarchy hs.
func assertCgroups(t *testing.T, pid int, hs []hierarchy, want string) {
	t.Helper()
	own, err := ownCgroups(pid)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs {
		if got := own[h.key]; got != want {
			t.Errorf("process %d is in %s cgroup %q, want %q", pid, h.name, got, want)
		}
	}
}

// removeCgroup removes an (emptied) cgroup, waiting for the kernel to see its last process gone.
func removeCgroup(t *testing.T, dir string) {
	var err error
	for i := 0; i < 100; i++ {
		if err = os.Remove(dir); err == nil || os.IsNotExist(err) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("removing the test cgroup %s: %v", dir, err)
}

// TestOnRootfs tells an initramfs's mount table (the kernel's rootfs on "/", as initramfs-tools leaves it; its
// images have no /etc/initrd-release) from a booted system's and from a table with a root stacked on rootfs.
func TestOnRootfs(t *testing.T) {
	initramfs := "1 1 0:2 / / rw - rootfs none rw,size=744872k\n" +
		"20 1 0:19 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n" +
		"23 1 43:0 / /root ro,relatime - squashfs /dev/nbd0 ro\n"
	booted := "23 1 0:32 / / rw,relatime - fuse.ltsp-unionfs ltsp-unionfs rw,user_id=0,group_id=0\n" +
		"24 23 0:19 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n"
	stacked := "1 1 0:2 / / rw - rootfs none rw\n30 1 0:40 / / rw - ext4 /dev/sda1 rw\n"
	for _, c := range []struct {
		name, table string
		want        bool
	}{{"initramfs", initramfs, true}, {"booted", booted, false}, {"stacked", stacked, false}} {
		mounts, err := mountinfo.Parse(strings.NewReader(c.table))
		if err != nil {
			t.Fatal(err)
		}
		if got := onRootfs(mounts); got != c.want {
			t.Errorf("%s: onRootfs = %v, want %v", c.name, got, c.want)
		}
	}
}
