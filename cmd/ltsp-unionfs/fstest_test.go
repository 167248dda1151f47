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
	l   layout
	cmd *exec.Cmd
}

func newBinaryUnion(t *testing.T) *binaryUnion {
	return &binaryUnion{l: newLayout(t)}
}

func (u *binaryUnion) Lower(i int) string { return []string{u.l.lower, u.l.lower2}[i] }
func (u *binaryUnion) Upper() string      { return u.l.upper }

func (u *binaryUnion) Mount(t *testing.T) string {
	t.Helper()
	u.cmd, _ = startForeground(t, u.l)
	return u.l.mnt
}

func (u *binaryUnion) Unmount(t *testing.T) {
	t.Helper()
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
