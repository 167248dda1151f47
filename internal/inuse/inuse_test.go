package inuse

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

func TestOverlayPath(t *testing.T) {
	// As Linux 6.18 shows them: upperdir "/tmp/u p\,1" (mounted with the comma escaped) is /tmp/u p,1.
	for in, want := range map[string]string{
		`/tmp/u\040p\134\0541`: "/tmp/u p,1", `/plain`: "/plain", `/a\134\072b`: "/a:b", `/x\134\134y`: `/x\y`,
	} {
		if got := overlayPath(in); got != want {
			t.Errorf("overlayPath(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestBranchPaths(t *testing.T) {
	for in, want := range map[string][]string{
		"ro=/image:/base,rw=/upper":           {"/upper"},
		"lowerdir=/l,upperdir=/u,workdir=/w":  {"/u"},
		"/rw=RW:/ro=RO":                       {"/rw"},
		"/srv/up=rw:/srv/low=ro":              {"/srv/up"},
		"ro=/only":                            nil,
		"ltsp-unionfs":                        nil,
		"rw=relative/upper,ro=/l":             {"relative/upper"},
		"ro=/a:/b,rw=/u1,rw=/u2":              {"/u1", "/u2"},
		"upper=/not-a-branch-key,rw=/the-one": {"/the-one"},
	} {
		if got := branchPaths(in); !reflect.DeepEqual(got, want) {
			t.Errorf("branchPaths(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestMountUsing reads a mountinfo file with escaped fields: an overlayfs mount whose upper directory has a space
// and a comma in its name (escaped as Linux shows it: the comma was escaped in the mount options, and mountinfo
// escapes that backslash and the comma in octal), and a FUSE mount whose source names its writable branch.
func TestMountUsing(t *testing.T) {
	base := t.TempDir()
	upper := filepath.Join(base, "up per,1")
	fuseUpper := filepath.Join(base, "fuse upper")
	other := filepath.Join(base, "other")
	for _, d := range []string{upper, fuseUpper, other} {
		if err := os.Mkdir(d, 0755); err != nil {
			t.Fatal(err)
		}
	}
	esc := func(s string) string { return strings.ReplaceAll(s, " ", `\040`) }
	mountinfo := filepath.Join(base, "mountinfo")
	lines := []string{
		"22 1 0:21 / /proc rw,nosuid - proc proc rw",
		"40 22 0:40 / " + esc("/mnt/ovl one") + " rw - overlay overlay rw,lowerdir=/l,upperdir=" +
			esc(strings.ReplaceAll(upper, ",", `\134\054`)) + ",workdir=/w,uuid=on",
		"41 22 0:41 / /mnt/fuse rw - fuse.ltsp-unionfs " + esc("ro=/l,rw="+fuseUpper) + " rw,user_id=0",
		"malformed line without separator",
	}
	if err := os.WriteFile(mountinfo, []byte(strings.Join(lines, "\n")+"\n"), 0644); err != nil {
		t.Fatal(err)
	}
	sameAs := func(dir string) func(string) bool {
		var want unix.Stat_t
		if err := unix.Stat(dir, &want); err != nil {
			t.Fatal(err)
		}
		return func(p string) bool {
			var st unix.Stat_t
			return unix.Stat(p, &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino
		}
	}
	if got := mountUsing(mountinfo, upper, sameAs(upper)); got != "the overlayfs mount on /mnt/ovl one" {
		t.Errorf("overlayfs upper: %q", got)
	}
	if got := mountUsing(mountinfo, fuseUpper, sameAs(fuseUpper)); got != "the fuse.ltsp-unionfs mount on /mnt/fuse" {
		t.Errorf("FUSE upper: %q", got)
	}
	if got := mountUsing(mountinfo, other, sameAs(other)); got != "" {
		t.Errorf("a directory no mount uses: %q", got)
	}
}

// TestUpperFindsLiveUsers checks Upper against real users of a directory: a kernel overlayfs mount, and processes
// that hold /dev/fuse open (as a FUSE daemon does) and either hold the directory open or name it on their command
// line.
func TestUpperFindsLiveUsers(t *testing.T) {
	testutil.RequireRoot(t)
	base := t.TempDir()
	dirs := map[string]string{}
	for _, d := range []string{"lower", "upper space,comma", "work", "mnt", "held", "named", "idle"} {
		dirs[d] = filepath.Join(base, d)
		if err := os.Mkdir(dirs[d], 0755); err != nil {
			t.Fatal(err)
		}
	}
	if by, err := Upper(dirs["idle"]); err != nil || by != "" {
		t.Fatalf("an unused directory: %q, %v", by, err)
	}
	// The comma escaped for overlayfs's option parser, as a user must.
	testutil.MountOverlay(t, []string{dirs["lower"]}, strings.ReplaceAll(dirs["upper space,comma"], ",", `\,`),
		dirs["work"], dirs["mnt"])
	if by, err := Upper(dirs["upper space,comma"]); err != nil || by != "the overlayfs mount on "+dirs["mnt"] {
		t.Errorf("overlayfs upper: %q, %v", by, err)
	}
	// Through a symlink to it: compared by device and inode.
	link := filepath.Join(base, "link")
	if err := os.Symlink(dirs["upper space,comma"], link); err != nil {
		t.Fatal(err)
	}
	if by, _ := Upper(link); by == "" {
		t.Errorf("overlayfs upper through a symlink: not found")
	}

	// A fake daemon: a shell that holds /dev/fuse open and waits, with its arguments on its command line; it
	// and its sleep are killed as a process group.
	daemon := func(script string, args ...string) *exec.Cmd {
		cmd := exec.Command("sh", append([]string{"-c", script + "; sleep 60 & wait", "fake-daemon"}, args...)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
		return cmd
	}
	waitFor := func(dir string) string {
		for i := 0; i < 100; i++ {
			if by, _ := Upper(dir); by != "" {
				return by
			}
			time.Sleep(50 * time.Millisecond)
		}
		return ""
	}
	held := daemon(`exec 3</dev/fuse 4<"$1"`, dirs["held"])
	if by := waitFor(dirs["held"]); !strings.HasPrefix(by, "process "+strconv.Itoa(held.Process.Pid)+" ") ||
		!strings.Contains(by, "a FUSE daemon") {
		t.Errorf("a FUSE daemon holding the directory open: %q", by)
	}
	named := daemon(`exec 3</dev/fuse`, "ro=/l,rw="+dirs["named"])
	if by := waitFor(dirs["named"]); !strings.HasPrefix(by, "process "+strconv.Itoa(named.Process.Pid)+" ") {
		t.Errorf("a FUSE daemon naming the directory on its command line: %q", by)
	}
	if by, _ := Upper(dirs["idle"]); by != "" {
		t.Errorf("an unused directory, with daemons about: %q", by)
	}
}
