package unionfs

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

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
			os.MkdirAll(filepath.Dir(p), 0755)
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
