package unionfs

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// The daemon clears setuid and setgid bits itself (FUSE_HANDLE_KILLPRIV_V2, see killpriv.go). These tests run
// each way of writing a file, as an unprivileged user and as root, on a tmpfs (the kernel's own rule is the
// reference) and through the union, on files that start in the lower layer (copied up by the write) and on files
// created in the union, with passthrough on; the modes and file capabilities left must be the same.

const nobody = 65534

// privCase is one way of writing a file of a given mode.
type privCase struct {
	name   string
	mode   uint32
	uid    int    // who writes
	script string // run by sh with the file as $1
}

var privCases = []privCase{
	{"append-suid-nobody", 04777, nobody, `printf x >> "$1"`},
	{"append-sgid-xgrp-nobody", 02777, nobody, `printf x >> "$1"`},
	{"append-sgid-noxgrp-nobody", 02767, nobody, `printf x >> "$1"`},
	{"append-suid-sgid-root", 06777, 0, `printf x >> "$1"`},
	{"truncate-suid-nobody", 04777, nobody, `truncate -s 1 "$1"`},
	{"otrunc-suid-nobody", 04777, nobody, `printf y > "$1"`},
	{"overwrite-suid-nobody", 04777, nobody, `printf z | dd of="$1" conv=notrunc status=none`},
	{"append-large-suid-nobody", 04777, nobody, `head -c 3000000 /dev/zero >> "$1"`},
	{"append-plain-nobody", 0777, nobody, `printf x >> "$1"`},
}

// fileCapability is a valid security.capability value (VFS_CAP_REVISION_2, cap_net_raw=ep).
var fileCapability = []byte{0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

func TestWritesClearSetuidLikeTheKernel(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	u.cfg.Passthrough = true
	u.cfg.PassthroughMinSize = 0
	reachable(t, u.dir)
	ref := u.mkdir("ref")
	testutil.MountTmpfs(t, ref, "64m")
	os.Chmod(ref, 0777)
	for _, c := range privCases {
		for _, where := range []string{"lower", "new"} {
			name := c.name + "-" + where
			makePrivFile(t, filepath.Join(ref, name), c.mode)
			if where == "lower" {
				makePrivFile(t, filepath.Join(u.Lower(0), name), c.mode)
			}
		}
	}
	os.Chmod(u.Upper(), 0777)
	mnt := u.Mount(t)
	os.Chmod(mnt, 0777)
	for _, c := range privCases {
		if err := makePrivFile(t, filepath.Join(mnt, c.name+"-new"), c.mode); err != nil {
			t.Fatalf("creating through the union: %v", err)
		}
	}
	for _, c := range privCases {
		for _, where := range []string{"lower", "new"} {
			name := c.name + "-" + where
			t.Run(name, func(t *testing.T) {
				runAs(t, c.uid, c.script, filepath.Join(ref, name))
				runAs(t, c.uid, c.script, filepath.Join(mnt, name))
				want, got := privState(t, filepath.Join(ref, name)), privState(t, filepath.Join(mnt, name))
				if got != want {
					t.Errorf("through the union: %s; on tmpfs: %s", got, want)
				}
			})
		}
	}
}

// TestPassthroughWriterOfFileMadeSetuid keeps a passthrough writer open while root makes the file setuid, then
// writes: the kernel asks the daemon to clear the bit (an empty SETATTR), as it clears it on a local
// filesystem.
func TestPassthroughWriterOfFileMadeSetuid(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	u.cfg.Passthrough = true
	reachable(t, u.dir)
	ref := u.mkdir("ref")
	testutil.MountTmpfs(t, ref, "16m")
	os.Chmod(ref, 0777)
	mnt := u.Mount(t)
	u.requirePassthrough(t)
	os.Chmod(mnt, 0777)
	for _, dir := range []string{ref, mnt} {
		p := filepath.Join(dir, "f")
		makePrivFile(t, p, 0777)
		// Without a file capability: removing one takes another path through the kernel.
		if err := unix.Removexattr(p, "security.capability"); err != nil {
			t.Fatal(err)
		}
		fifo := filepath.Join(u.dir, "fifo-"+filepath.Base(dir))
		if err := unix.Mkfifo(fifo, 0666); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("sh", "-c", `exec 3>>"$1"; read line < "$2"; printf x >&3`, "sh", p, fifo)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond) // the writer has opened the file
		if err := unix.Chmod(p, 04777); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(fifo, []byte("go\n"), 0); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("writer: %v", err)
		}
	}
	want, got := privState(t, filepath.Join(ref, "f")), privState(t, filepath.Join(mnt, "f"))
	if got != want {
		t.Errorf("through the union: %s; on tmpfs: %s", got, want)
	}
}

// makePrivFile creates path with mode (setuid and setgid bits included) and a file capability.
func makePrivFile(t *testing.T, path string, mode uint32) error {
	t.Helper()
	if err := os.WriteFile(path, []byte("data"), 0644); err != nil {
		return err
	}
	if err := unix.Setxattr(path, "security.capability", fileCapability, 0); err != nil {
		return fmt.Errorf("setting a file capability on %s: %w", path, err)
	}
	return unix.Chmod(path, mode)
}

// privState describes what a write may have cleared: the mode and whether a file capability is left.
func privState(t *testing.T, path string) string {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	n, err := unix.Getxattr(path, "security.capability", buf)
	capState := "no capability"
	if err == nil {
		capState = "capability " + fmt.Sprint(bytes.Equal(buf[:n], fileCapability))
	}
	return fmt.Sprintf("mode %04o, %s, size %d", st.Mode&07777, capState, st.Size)
}

// runAs runs script with sh as uid (and the same gid, no supplementary groups), failing the test if it fails.
func runAs(t *testing.T, uid int, script string, args ...string) {
	t.Helper()
	cmd := exec.Command("sh", append([]string{"-c", script, "sh"}, args...)...)
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s as %d: %v: %s", script, uid, err, out)
	}
}

// reachable lets every user traverse dir and its parent (test directories are made 0700).
func reachable(t *testing.T, dir string) {
	t.Helper()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0755); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMmapWriteKeepsSetuid writes a setuid file through a shared mapping, on tmpfs and through the union (copied
// up from the lower, and passthrough and cached): the write-back reaches the daemon without a process, and the
// kernel clears nothing for mapped writes on any filesystem, so neither may the daemon. (Found by TestStress.)
func TestMmapWriteKeepsSetuid(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	ref := u.mkdir("ref")
	testutil.MountTmpfs(t, ref, "16m")
	sizes := map[string]int{"small": 4096, "large": 3 << 20} // cached and passthrough opens
	for name, size := range sizes {
		for _, dir := range []string{ref, u.Lower(0)} {
			p := filepath.Join(dir, name)
			testutil.WriteFile(t, p, make([]byte, size), 0755)
			unix.Chmod(p, 04755)
		}
	}
	mnt := u.Mount(t)
	for name := range sizes {
		for _, dir := range []string{ref, mnt} {
			mmapInChild(t, filepath.Join(dir, name), 4096, "mapped") // see client_test.go
		}
		want, got := privState(t, filepath.Join(ref, name)), privState(t, filepath.Join(mnt, name))
		if got != want {
			t.Errorf("%s: through the union %s; on tmpfs %s", name, got, want)
		}
	}
}
