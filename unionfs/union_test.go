package unionfs

import (
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// testUnion is a union served by this test process (so the race detector sees the daemon's code), with
// directories under t.TempDir(). It implements fstest.Union.
type testUnion struct {
	dir    string
	lowers []string
	upper  string
	mnt    string
	cfg    Config
	server *fuse.Server
	root   *Root   // the mounted union's root, for its counters
	roots  []*Root // every root mounted so far, the current one last: the counters of each mount
}

// newTestUnion makes layer directories for a union of nLowers lowers; nothing is mounted yet.
func newTestUnion(t *testing.T, nLowers int) *testUnion {
	t.Helper()
	testutil.RequireFUSE(t)
	u := &testUnion{dir: t.TempDir(), cfg: testConfig(t)}
	for i := 0; i < nLowers; i++ {
		u.lowers = append(u.lowers, u.mkdir(fmt.Sprintf("lower%d", i)))
	}
	u.upper = u.mkdir("upper")
	u.mnt = u.mkdir("mnt")
	t.Cleanup(func() {
		if u.server != nil {
			u.Unmount(t)
		}
	})
	return u
}

// testConfig is the configuration tests mount with: the daemon's defaults, mount options like the command's,
// and a logger that reports into the test.
func testConfig(t *testing.T) Config {
	cfg := DefaultConfig()
	cfg.Logger = testLogger(t)
	root := os.Geteuid() == 0
	cfg.MountOptions = fuse.MountOptions{
		Name:              "ltsp-unionfs",
		FsName:            "test-union",
		AllowOther:        root,
		DirectMountStrict: root,
		MaxWrite:          1016 << 10,
		Options:           []string{"default_permissions"},
	}
	if root {
		cfg.MountOptions.Options = append(cfg.MountOptions.Options, "suid", "dev")
	}
	return cfg
}

func (u *testUnion) mkdir(name string) string {
	p := filepath.Join(u.dir, name)
	if err := os.Mkdir(p, 0755); err != nil {
		panic(err)
	}
	return p
}

func (u *testUnion) Lower(i int) string { return u.lowers[i] }
func (u *testUnion) Upper() string      { return u.upper }

// Mount mounts the union in this process.
func (u *testUnion) Mount(t *testing.T) string {
	t.Helper()
	layers, err := OpenLayers(u.upper, u.lowers)
	if err != nil {
		t.Fatalf("OpenLayers: %v", err)
	}
	root, err := New(layers, u.cfg)
	if err != nil {
		layers.Close()
		t.Fatalf("New: %v", err)
	}
	u.root = root
	u.roots = append(u.roots, root)
	u.server, err = Mount(u.mnt, root)
	if err != nil {
		layers.Close()
		t.Fatalf("Mount: %v", err)
	}
	return u.mnt
}

// Unmount unmounts the union and checks that it is gone.
func (u *testUnion) Unmount(t *testing.T) {
	t.Helper()
	if err := u.server.Unmount(); err != nil {
		t.Errorf("Unmount %s: %v", u.mnt, err)
		testutil.Unmount(t, u.mnt)
	}
	u.server.Wait()
	u.server = nil
	if m, ok := testutil.MountAt(u.mnt); ok && m.FSType == "fuse.ltsp-unionfs" {
		t.Errorf("%s is still mounted after Unmount", u.mnt)
	}
}

// testLogger returns a logger writing into the test's log; unexpected-error messages show up there.
func testLogger(t *testing.T) *log.Logger {
	return log.New(&testLog{t: t}, "ltsp-unionfs: ", 0)
}

// testLog adapts *testing.T to the Printf-style logger Config wants, through a *log.Logger.
type testLog struct{ t *testing.T }

func (l *testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// execCommand is exec.Command; tests that run tools on an in-process mount never start them with a working
// directory or inherited descriptors on the mount (see go-fuse's notes on fork/exec deadlocks).
var execCommand = exec.Command

// requirePassthrough skips (or in CI fails) a test whose mounted union u did not get FUSE passthrough from the
// kernel.
func (u *testUnion) requirePassthrough(t *testing.T) {
	t.Helper()
	if !u.root.Stats().Passthrough {
		testutil.Unavailable(t, "no FUSE passthrough here")
	}
}
