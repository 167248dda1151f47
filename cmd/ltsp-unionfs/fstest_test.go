package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ltsp/ltsp-unionfs/fstest"
)

// binaryUnion is a union mounted by the real daemon (ltsp-unionfs -f), as fstest.Union.
type binaryUnion struct {
	l     layout
	extra []string // more arguments of the daemon
	cmd   *exec.Cmd
}

func newBinaryUnion(t *testing.T) *binaryUnion {
	return &binaryUnion{l: newLayout(t)}
}

func (u *binaryUnion) Lower(i int) string { return []string{u.l.lower, u.l.lower2}[i] }
func (u *binaryUnion) Upper() string      { return u.l.upper }

func (u *binaryUnion) Mount(t *testing.T) string {
	t.Helper()
	cmd, _ := startForeground(t, u.l, u.extra...)
	u.cmd = cmd
	t.Cleanup(func() { // before startForeground's cleanup ends the daemon
		if cmd.ProcessState == nil {
			u.checkReplies(t)
		}
	})
	return u.l.mnt
}

// checkReplies fails t if the daemon told the kernel what the batteries never meet on kernel overlayfs: ESTALE
// other than to have a copied-up name looked up again, EIO, EINVAL, or a panic in a request.
func (u *binaryUnion) checkReplies(t *testing.T) {
	t.Helper()
	st := daemonStats(t, u.l.mnt)
	if n := st.Replies["ESTALE"]; n > st.StaleRetries {
		t.Errorf("the daemon replied ESTALE %d times, %d of them to retry after a copy-up", n, st.StaleRetries)
	}
	for _, e := range []string{"EIO", "EINVAL"} {
		if n := st.Replies[e]; n > 0 {
			t.Errorf("the daemon replied %s %d times", e, n)
		}
	}
	if st.Panics > 0 {
		t.Errorf("%d requests panicked in the daemon", st.Panics)
	}
}

// Unmount unmounts the union and waits for its daemon, checking its replies first (checkReplies).
func (u *binaryUnion) Unmount(t *testing.T) {
	t.Helper()
	u.checkReplies(t)
	if out, err := exec.Command("umount", u.l.mnt).CombinedOutput(); err != nil {
		t.Fatalf("umount: %v: %s", err, out)
	}
	if err := u.cmd.Wait(); err != nil {
		t.Errorf("daemon exit: %v", err)
	}
}

// TestBinaryPosixCases runs the POSIX battery on a union served by the real daemon.
func TestBinaryPosixCases(t *testing.T) {
	fstest.Run(t, fstest.Cases, func(t *testing.T) string { return newBinaryUnion(t).Mount(t) }, fstest.Config{})
}

// TestBinaryUnionCases runs the union battery on a union served by the real daemon.
func TestBinaryUnionCases(t *testing.T) {
	fstest.RunUnion(t, fstest.UnionCases, func(t *testing.T) fstest.Union { return newBinaryUnion(t) }, fstest.Config{})
}

// TestBinaryCowCases runs the copy-on-write battery on unions served by the real daemon, in each marker format.
// Its cases with mappings (MappingBesideDescriptors) can only run here: the unionfs package's in-process server
// would serve the page faults of its own test process (see inProcessSkips there).
func TestBinaryCowCases(t *testing.T) {
	for _, format := range []string{"overlay", "aufs", "unionfs-fuse"} {
		t.Run(format, func(t *testing.T) {
			fstest.RunUnion(t, fstest.CowCases, func(t *testing.T) fstest.Union {
				u := newBinaryUnion(t)
				u.extra = []string{"-o", "whiteout=" + format}
				return u
			}, fstest.Config{})
		})
	}
}

// TestBinaryLargeFileRoundTrip writes and reads back a file larger than a FUSE request through the daemon.
func TestBinaryLargeFileRoundTrip(t *testing.T) {
	mnt := newBinaryUnion(t).Mount(t)
	data := make([]byte, 5<<20+123)
	for i := range data {
		data[i] = byte(i * 7)
	}
	p := filepath.Join(mnt, "big")
	if err := os.WriteFile(p, data, 0644); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(p)
	if err != nil || len(got) != len(data) || string(got) != string(data) {
		t.Fatalf("round trip of %d bytes: got %d bytes, %v", len(data), len(got), err)
	}
}
