package unionfs

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// TestListingsAcrossForget: directories whose listings were left half read (the daemon keeps a cursor for the
// next READDIR, see handleFreeDirs) are forgotten by the kernel when it drops its caches; then more listings than
// the daemon keeps cursors for are read, so the old cursors are released. A cursor released on a node go-fuse had
// already forgotten made go-fuse panic, and the READDIR that released it was answered EIO: `ls` and `tar` failed
// with "Input/output error" under memory pressure. Every listing must read whole, and no request may panic.
func TestListingsAcrossForget(t *testing.T) {
	testutil.RequireRoot(t)
	u := noUnexpectedReplies(t, newTestUnion(t, 1))
	const dirs, names = 2 * maxDirCursors, 300
	for d := 0; d < dirs; d++ {
		for i := 0; i < names; i++ {
			p := filepath.Join(u.Lower(0), fmt.Sprintf("d%03d", d), fmt.Sprintf("a-rather-long-name-%04d", i))
			testutil.Mkdirs(t, filepath.Dir(p))
			if err := os.WriteFile(p, nil, 0644); err != nil {
				t.Fatal(err)
			}
		}
	}
	mnt := u.Mount(t)
	// Half a listing of the first half of the directories: one small getdents each.
	buf := make([]byte, 1024)
	for d := 0; d < dirs/2; d++ {
		fd, err := unix.Open(filepath.Join(mnt, fmt.Sprintf("d%03d", d)), unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.Getdents(fd, buf); err != nil {
			t.Fatalf("getdents: %v", err)
		}
		unix.Close(fd)
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
		t.Fatal(err)
	}
	// Every directory listed whole, the forgotten ones again and the others for the first time.
	for d := dirs - 1; d >= 0; d-- {
		ents, err := os.ReadDir(filepath.Join(mnt, fmt.Sprintf("d%03d", d)))
		if err != nil || len(ents) != names {
			t.Errorf("listing d%03d: %d names, %v", d, len(ents), err)
		}
	}
	if s := u.root.Stats(); s.Panics > 0 {
		t.Errorf("%d requests panicked", s.Panics)
	}
}

// TestForgottenNodesCloseTheirDescriptors: directories the kernel has looked up hold a descriptor per layer; when
// the kernel forgets them (its caches dropped), the descriptors close (after the grace period, or when the
// collector finds the node unreachable, whichever comes first: TestForgetQueue checks the first on its own), and
// the same names are found again afterwards.
func TestForgottenNodesCloseTheirDescriptors(t *testing.T) {
	testutil.RequireRoot(t)
	u := noUnexpectedReplies(t, newTestUnion(t, 1))
	const dirs = 300
	for d := 0; d < dirs; d++ {
		if err := os.Mkdir(filepath.Join(u.Lower(0), fmt.Sprintf("forgotten-%03d", d)), 0755); err != nil {
			t.Fatal(err)
		}
	}
	mnt := u.Mount(t)
	statAll := func() {
		t.Helper()
		for d := 0; d < dirs; d++ {
			var st unix.Stat_t
			if err := unix.Stat(filepath.Join(mnt, fmt.Sprintf("forgotten-%03d", d), "."), &st); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Only this union's descriptors of its directories count: the test process holds the descriptors of every
	// other test's unions too, which close whenever their nodes are forgotten or collected. (The links name the
	// directories in the layer's private mount clone, not by the lower's path.)
	countFDs := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range ents {
			if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil &&
				strings.Contains(target, "/forgotten-") {
				n++
			}
		}
		return n
	}
	base := countFDs()
	statAll()
	held := countFDs()
	if held < base+dirs {
		t.Fatalf("%d descriptors before the lookups, %d after: the nodes hold none to close", base, held)
	}
	deadline := time.Now().Add(forgetGrace + 3*sweepEvery + 5*time.Second)
	for {
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
			t.Fatal(err)
		}
		time.Sleep(sweepEvery)
		if n := countFDs(); n < base+dirs/10 {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("%d descriptors %v after the caches were dropped (%d before the lookups, %d after)", n,
				forgetGrace, base, held)
		}
	}
	statAll()
}

// TestForgetQueue: forgotten nodes keep their descriptors for the grace period and lose them after it, in the
// order they were forgotten, also when they were forgotten at different times (the queue schedules itself again);
// a node the kernel knows again by then keeps them.
func TestForgetQueue(t *testing.T) {
	u := newTestUnion(t, 1)
	mnt := u.Mount(t)
	if err := os.Mkdir(filepath.Join(mnt, "kept"), 0755); err != nil {
		t.Fatal(err)
	}
	keptDir, err := os.Open(filepath.Join(mnt, "kept")) // open: the kernel cannot forget it, caches dropped or not
	if err != nil {
		t.Fatal(err)
	}
	defer keptDir.Close()
	kept, _ := u.root.GetChild("kept").Operations().(*Node)
	if kept == nil {
		t.Fatal("no node for kept")
	}
	newNode := func() *Node {
		fd, err := unix.Open(u.Lower(0), unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return u.root.newDirNode([]layerDir{{layer: u.root.layers.Upper(), fd: fd}}, nil, "")
	}
	closed := func(n *Node) bool {
		n.owned.mu.Lock()
		defer n.owned.mu.Unlock()
		return n.owned.closed
	}
	var q forgetQueue
	first := []*Node{newNode(), newNode(), newNode()}
	for _, n := range first {
		q.add(n)
	}
	q.add(kept) // registered: in its parent
	time.Sleep(forgetGrace / 2)
	second := []*Node{newNode(), newNode()}
	for _, n := range second {
		q.add(n)
	}
	for _, n := range append(first, second...) {
		if closed(n) {
			t.Fatal("a node lost its descriptors before the grace period ended")
		}
	}
	time.Sleep(forgetGrace/2 + sweepEvery + 200*time.Millisecond)
	for _, n := range first {
		if !closed(n) {
			t.Error("a node forgotten a grace period ago still has its descriptors")
		}
	}
	for _, n := range second {
		if closed(n) {
			t.Error("a node forgotten half a grace period ago lost its descriptors")
		}
	}
	time.Sleep(forgetGrace/2 + sweepEvery)
	for _, n := range second {
		if !closed(n) {
			t.Error("the queue did not come back for the nodes forgotten later")
		}
	}
	if closed(kept) {
		t.Error("a node the kernel knows lost its descriptors")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) != 0 || q.scheduled {
		t.Errorf("the queue is not empty and idle: %d pending, scheduled %v", len(q.pending), q.scheduled)
	}
}
