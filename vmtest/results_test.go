package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// passingUnion is what the guest reports on a union boot where everything holds.
func passingUnion(t0 time.Time) *results {
	r := newResults()
	r.add("VMTEST start mode=union lower=squashfs uptime=82", t0)
	r.add("VMTEST info boot: Startup finished in 5.3s (kernel) + 34.4s (initrd) + 42.1s (userspace) = 1min 21.9s", t0)
	for _, c := range requiredChecks(modeUnion) {
		r.add("VMTEST ok "+c+"\r", t0)
	}
	r.add("VMTEST poweroff poweroff", t0.Add(time.Minute))
	return r
}

// goodConsole is how a console ends after a clean poweroff.
const goodConsole = "[ 1.0] systemd-shutdown[1]: Returning to initrd...\n[ 1.1] ltsp-unionfs: unmounted /sysroot\n" +
	"dracut Warning: Unmounted /oldroot.\nPowering off.\n[ 1.2] reboot: Power down\n"

func TestJudgePassingBoot(t *testing.T) {
	t0 := time.Now()
	o := &outcome{boot: allBoots[0], res: passingUnion(t0), exited: true, powerTime: 20 * time.Second}
	o.judge(goodConsole, 2*time.Minute)
	if len(o.problems) != 0 {
		t.Fatalf("a passing boot has problems: %q", o.problems)
	}
	if got := o.res.info("boot"); !strings.HasPrefix(got, "Startup finished in 5.3s") {
		t.Errorf("info(boot) = %q", got)
	}
}

// TestJudgeFailures checks that each way a boot can go wrong fails it, with a message that says how.
func TestJudgeFailures(t *testing.T) {
	t0 := time.Now()
	for _, tc := range []struct {
		name    string
		mutate  func(o *outcome) string // returns the console
		wantMsg string
	}{
		{"a failed check", func(o *outcome) string {
			o.res.add("VMTEST FAIL daemon: the daemon is in a stoppable cgroup", t0)
			return goodConsole
		}, "check failed: daemon: the daemon is in a stoppable cgroup"},
		{"no power down", func(o *outcome) string {
			return "[ 1.0] systemd-shutdown[1]: All filesystems unmounted.\n"
		}, `does not end with the kernel's "reboot: Power down"`},
		{"a reboot asked for, a power down seen", func(o *outcome) string {
			o.boot.reboot = true
			return goodConsole
		}, `does not end with the kernel's "reboot: Restarting system"`},
		{"a check never reported", func(o *outcome) string {
			delete(o.res.passed, "alive-after-wait")
			return ""
		}, "check missing: alive-after-wait"},
		{"never reached multi-user", func(o *outcome) string {
			o.res = newResults()
			return ""
		}, "the guest never reported"},
		{"no poweroff", func(o *outcome) string {
			o.res.poweroff = time.Time{}
			return ""
		}, "never reached its poweroff"},
		{"qemu still running", func(o *outcome) string {
			o.exited = false
			return ""
		}, "did not exit within"},
		{"slow poweroff", func(o *outcome) string {
			o.powerTime = 3 * time.Minute
			return ""
		}, "the poweroff took 3m0s"},
		{"the union died", func(o *outcome) string {
			return "[  210.1] systemd-journald[300]: Failed to open: Transport endpoint is not connected\n"
		}, "console: [  210.1] systemd-journald[300]: Failed to open: Transport endpoint is not connected"},
		{"a stop timed out", func(o *outcome) string {
			return "\x1b[0;1;31mltsp-unionfs-root.service: State 'stop-sigterm' timed out. Killing.\x1b[0m\n"
		}, "console: ltsp-unionfs-root.service: State 'stop-sigterm' timed out. Killing."},
		{"the daemon gone before the final unmount", func(o *outcome) string {
			return strings.Replace(goodConsole, "ltsp-unionfs: unmounted /sysroot", "", 1)
		}, "the daemon did not serve the final unmount"},
		{"shutdown could not unmount", func(o *outcome) string {
			return "dracut Warning: Cannot umount /oldroot\n"
		}, "console: dracut Warning: Cannot umount /oldroot"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := &outcome{boot: allBoots[0], res: passingUnion(t0), exited: true, powerTime: 20 * time.Second}
			console := tc.mutate(o)
			o.judge(console, 2*time.Minute)
			for _, p := range o.problems {
				if strings.Contains(p, tc.wantMsg) {
					return
				}
			}
			t.Errorf("problems %q do not say %q", o.problems, tc.wantMsg)
		})
	}
}

func TestResultsNoise(t *testing.T) {
	r := newResults()
	r.add("garbage VMTEST ok layers", time.Now())
	r.add("", time.Now())
	r.add("some other line", time.Now())
	if !r.passed["layers"] {
		t.Error("a result after noise on its line was lost")
	}
	if len(r.other) != 1 || r.other[0] != "some other line" {
		t.Errorf("other = %q", r.other)
	}
}

func TestCmdline(t *testing.T) {
	s := servers{nbdPort: 10809, nfsPort: 20490, nfsPath: "/vmroot"}
	nbd := allBoots[0].cmdline(s, 200)
	for _, want := range []string{"root=nbd:10.0.2.2:10809:squashfs", "rd.ltsp.unionfs=1", "ltsp.vmtest=union",
		"ltsp.vmtest.lower=squashfs", "ltsp.vmtest.wait=200", "console=ttyS0", "ltsp.vmtest.end=poweroff"} {
		if !strings.Contains(nbd, want) {
			t.Errorf("nbd command line %q lacks %q", nbd, want)
		}
	}
	b, err := selectBoots("nfs")
	if err != nil {
		t.Fatal(err)
	}
	nfs := b[0].cmdline(s, 200)
	if !strings.Contains(nfs, "root=nfs4:10.0.2.2:/vmroot:port=20490") || !strings.Contains(nfs, "ltsp.vmtest.lower=nfs4") ||
		!strings.Contains(nfs, "ltsp.vmtest.end=reboot") {
		t.Errorf("nfs command line %q", nfs)
	}
	if _, err := selectBoots("nbd,nosuch"); err == nil || !strings.Contains(err.Error(), "nosuch") {
		t.Errorf("an unknown boot name: %v", err)
	}
	def, _ := selectBoots("default")
	all, _ := selectBoots("all")
	if len(all) != len(allBoots) || len(def) != len(allBoots)-1 || slices.ContainsFunc(def, func(b boot) bool {
		return b.name == "control"
	}) {
		t.Errorf("default boots %v, all %v: want all but control, and every boot", def, all)
	}
}

// TestGuestScriptShellcheck holds the guest's check script to the same bar as the dracut module's scripts.
func TestGuestScriptShellcheck(t *testing.T) {
	testutil.RequireTool(t, "shellcheck", "shellcheck")
	if out, err := exec.Command("shellcheck", "guest/ltsp-vmtest").CombinedOutput(); err != nil {
		t.Errorf("shellcheck guest/ltsp-vmtest: %v\n%s", err, out)
	}
}
