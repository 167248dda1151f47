package unionfs

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/hanwen/go-fuse/v2/posixtest"

	"github.com/ltsp/ltsp-unionfs/fstest"
)

// unexpectedReplies describes the error replies of every mount of u so far that a program should never see:
// ESTALE other than to make the kernel look a copied-up name up again (staleRetries, which it retries away), and
// each of the other errnos named.
func unexpectedReplies(u *testUnion, errnos ...string) []string {
	var msgs []string
	for i, r := range u.roots { // a case may mount the same layers several times
		s := r.Stats()
		if n := s.Replies["ESTALE"]; n > s.StaleRetries {
			msgs = append(msgs, fmt.Sprintf("mount %d replied ESTALE %d times, %d of them to retry after a copy-up",
				i+1, n, s.StaleRetries))
		}
		if s.Panics > 0 {
			msgs = append(msgs, fmt.Sprintf("mount %d: %d requests panicked (see the log)", i+1, s.Panics))
		}
		for _, e := range errnos {
			if n := s.Replies[e]; n > 0 {
				msgs = append(msgs, fmt.Sprintf("mount %d replied %s %d times", i+1, e, n))
			}
		}
	}
	return msgs
}

// noUnexpectedReplies fails t, at its end, if u told the kernel ESTALE (but to retry after a copy-up), EIO or
// EINVAL. The batteries below pass on kernel overlayfs, which never says these in them; a program must not see
// them from the union either.
func noUnexpectedReplies(t *testing.T, u *testUnion) *testUnion {
	t.Cleanup(func() {
		for _, m := range unexpectedReplies(u, "EIO", "EINVAL") {
			t.Error(m)
		}
	})
	return u
}

// TestUnionCases runs the union battery, validated on kernel overlayfs in package fstest, on ltsp-unionfs.
func TestUnionCases(t *testing.T) {
	fstest.RunUnion(t, fstest.UnionCases, func(t *testing.T) fstest.Union {
		return noUnexpectedReplies(t, newTestUnion(t, 2))
	}, fstest.Config{})
}

// inProcessSkips are cases a union served by the test process itself cannot run: a page fault on a mapping of a
// file of the process's own FUSE mount blocks an OS thread where the Go runtime cannot preempt it, and a garbage
// collection then waits for it forever (go-fuse's "known deadlocks", 3). The cmd tests run them through the real
// daemon.
var inProcessSkips = fstest.Config{Skip: map[string]string{
	"MmapSharedWrite":          inProcessMmap,
	"MappingBesideDescriptors": inProcessMmap,
}}

const inProcessMmap = "mmap of the test process's own FUSE files can deadlock the Go runtime; run through the binary in cmd tests"

// TestPosixCases runs the POSIX battery in the root of a union over two empty lowers.
func TestPosixCases(t *testing.T) {
	fstest.Run(t, fstest.Cases, func(t *testing.T) string {
		return noUnexpectedReplies(t, newTestUnion(t, 2)).Mount(t)
	}, inProcessSkips)
}

// TestGoFusePosix runs go-fuse's posixtest cases in the root of a union over two empty lowers.
func TestGoFusePosix(t *testing.T) {
	skip := map[string]string{
		"DirectIO": "needs FOPEN_DIRECT_IO from the filesystem; the union caches through the kernel",
		"FcntlFlockLocksFile": "expects POSIX locks of one process on two descriptors to conflict, which only go-fuse's " +
			"OFD-lock forwarding does; POSIX says they do not, tmpfs agrees, and the union leaves locks to the kernel " +
			"(go-fuse's own posixtest_test.go skips it on plain directories too)",
	}
	for name, fn := range posixtest.All {
		t.Run(name, func(t *testing.T) {
			if why, ok := skip[name]; ok {
				t.Skip(why)
			}
			fn(t, newTestUnion(t, 2).Mount(t))
		})
	}
}

// TestCowCases runs the copy-on-write battery, validated on kernel overlayfs in package fstest, on ltsp-unionfs
// in each whiteout format.
func TestCowCases(t *testing.T) {
	for _, format := range []string{"overlay", "aufs", "unionfs-fuse"} {
		t.Run(format, func(t *testing.T) {
			fstest.RunUnion(t, fstest.CowCases, func(t *testing.T) fstest.Union {
				u := noUnexpectedReplies(t, newTestUnion(t, 2))
				u.cfg.Whiteout = format
				return u
			}, inProcessSkips)
		})
	}
}

// TestRepliesCounted checks the counter of error replies the batteries rely on: an rmdir of a directory that is
// not empty is one ENOTEMPTY reply, an ioctl one ENOTTY; both show in the stats xattr. (A lookup of a missing name
// is no error reply: go-fuse answers it with a negative entry, which the kernel caches.)
func TestRepliesCounted(t *testing.T) {
	u := newTestUnion(t, 1)
	mnt := u.Mount(t)
	before := u.root.Stats().Replies
	if err := os.MkdirAll(filepath.Join(mnt, "d", "sub"), 0755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Rmdir(filepath.Join(mnt, "d")); !errors.Is(err, syscall.ENOTEMPTY) {
		t.Fatalf("rmdir of a directory that is not empty: %v", err)
	}
	f, err := os.Create(filepath.Join(mnt, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS); !errors.Is(err, syscall.ENOTTY) {
		t.Fatalf("FS_IOC_GETFLAGS: %v, want ENOTTY", err)
	}
	after := u.root.Stats().Replies
	for _, e := range []string{"ENOTEMPTY", "ENOTTY"} {
		if after[e] != before[e]+1 {
			t.Errorf("%s replies: %d before, %d after one more", e, before[e], after[e])
		}
	}
	out, err := execCommand("getfattr", "--only-values", "-n", StatsXattr, mnt).Output()
	if err != nil {
		t.Fatalf("getfattr: %v", err)
	}
	var s Stats
	if err := json.Unmarshal(out, &s); err != nil || s.Replies["ENOTEMPTY"] != 1 {
		t.Errorf("the stats xattr does not hold the ENOTEMPTY reply (%v): %s", err, out)
	}
}
