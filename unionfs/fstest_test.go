package unionfs

import (
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"

	"github.com/ltsp/ltsp-unionfs/fstest"
)

// TestUnionCases runs the union battery, validated on kernel overlayfs in package fstest, on ltsp-unionfs.
func TestUnionCases(t *testing.T) {
	fstest.RunUnion(t, fstest.UnionCases, func(t *testing.T) fstest.Union { return newTestUnion(t, 2) }, fstest.Config{})
}

// inProcessSkips are cases a union served by the test process itself cannot run: a page fault on a mapping of a
// file of the process's own FUSE mount blocks an OS thread where the Go runtime cannot preempt it, and a garbage
// collection then waits for it forever (go-fuse's "known deadlocks", 3). The cmd tests run them through the real
// daemon.
var inProcessSkips = fstest.Config{Skip: map[string]string{
	"MmapSharedWrite": "mmap of the test process's own FUSE files can deadlock the Go runtime; run through the binary in cmd tests",
}}

// TestPosixCases runs the POSIX battery in the root of a union over two empty lowers.
func TestPosixCases(t *testing.T) {
	fstest.Run(t, fstest.Cases, func(t *testing.T) string { return newTestUnion(t, 2).Mount(t) }, inProcessSkips)
}

// TestGoFusePosix runs go-fuse's posixtest cases in the root of a union over two empty lowers.
func TestGoFusePosix(t *testing.T) {
	skip := map[string]string{
		"DirectIO": "needs FOPEN_DIRECT_IO from the filesystem; the union caches through the kernel",
		"FcntlFlockLocksFile": "expects POSIX locks of one process on two descriptors to conflict, which only go-fuse's " +
			"OFD-lock forwarding does; POSIX says they do not, tmpfs agrees, and the union leaves locks to the kernel " +
			"(go-fuse's own posixtest_test.go skips it on plain directories too)",
		"OpenSymlinkRace": "counts ESTALE as a failure; the union answers an open that races a rename of the name " +
			"with ESTALE (the kernel retries once) rather than open another object; TestOpenRacingRename checks " +
			"what matters: no open ever reaches outside the mount",
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
				u := newTestUnion(t, 2)
				u.cfg.Whiteout = format
				return u
			}, fstest.Config{})
		})
	}
}
