package unionfs

import (
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// Helpers of the security tests: running code as an unprivileged user inside the test process, and proving that
// nothing outside the layers changed.

// attacker is the unprivileged user the security tests act as; other is a second one.
const (
	attacker = 1000
	other    = 1001
)

// asUserThread runs fn on a goroutine whose OS thread has dropped to uid:gid (no supplementary groups, no
// capabilities) and waits for it. The credentials change with raw system calls, which act on the calling thread
// only (Go's syscall.Setresuid would change every thread of the process, the daemon's included). The thread is
// never unlocked, so the runtime ends it with the goroutine and no other goroutine ever runs with these
// credentials. fn must not start goroutines that do file system calls: they would run as root. A panic in fn
// fails the test instead of killing the process (which would hang on its own FUSE mount). It may be called from
// any goroutine.
func asUserThread(t *testing.T, uid, gid int, fn func()) {
	t.Helper()
	if !onUserThread(t, uid, gid, nil, fn) {
		t.Errorf("cannot switch a thread to %d:%d", uid, gid) // not Fatal: callers may be other goroutines
	}
}

// asUserGroups is asUserThread with supplementary groups.
func asUserGroups(t *testing.T, uid, gid int, groups []uint32, fn func()) {
	t.Helper()
	if !onUserThread(t, uid, gid, groups, fn) {
		t.Errorf("cannot switch a thread to %d:%d", uid, gid)
	}
}

func onUserThread(t *testing.T, uid, gid int, groups []uint32, fn func()) bool {
	ok := make(chan bool, 1)
	go func() {
		runtime.LockOSThread()
		if unix.Gettid() == unix.Getpid() {
			// The main thread cannot end: take another one (this goroutine holds the main thread meanwhile).
			ok <- onUserThread(t, uid, gid, groups, fn)
			runtime.UnlockOSThread()
			return
		}
		var gp unsafe.Pointer
		if len(groups) > 0 {
			gp = unsafe.Pointer(&groups[0])
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETGROUPS, uintptr(len(groups)), uintptr(gp), 0); e != 0 {
			ok <- false
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESGID, uintptr(gid), uintptr(gid), uintptr(gid)); e != 0 {
			ok <- false
			return
		}
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, uintptr(uid), uintptr(uid), uintptr(uid)); e != 0 {
			ok <- false
			return
		}
		if unix.Geteuid() != uid {
			ok <- false
			return
		}
		defer func() {
			if r := recover(); r != nil {
				t.Errorf("panic as user %d: %v\n%s", uid, r, debug.Stack())
			}
			ok <- true
		}()
		fn()
	}()
	return <-ok
}

// mustSnapshot snapshots dir (see testutil.Snapshot).
func mustSnapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	snap, err := testutil.Snapshot(dir)
	if err != nil {
		t.Fatalf("snapshot %s: %v", dir, err)
	}
	return snap
}

// checkUnchanged fails the test if dir differs from its snapshot before.
func checkUnchanged(t *testing.T, what, dir string, before map[string]string) {
	t.Helper()
	diffs := testutil.DiffSnapshots(before, mustSnapshot(t, dir))
	for _, d := range diffs {
		t.Errorf("%s %s changed: %s", what, dir, d)
	}
}

// makeSecret creates dir, outside every layer, as the place an attacker wants the daemon to touch: root-owned,
// mode 0755 (reachable, not writable, by users), holding a 0600 file with an xattr, a 0700 subdirectory and an
// empty 0755 subdirectory, all with times long past so that any read shows in the access times.
func makeSecret(t *testing.T, dir string) {
	t.Helper()
	must(t, os.Mkdir(dir, 0755))
	must(t, os.Chmod(dir, 0755))
	must(t, os.WriteFile(filepath.Join(dir, "file"), []byte("the secret\n"), 0600))
	must(t, unix.Setxattr(filepath.Join(dir, "file"), "user.secret", []byte("yes"), 0))
	must(t, os.Mkdir(filepath.Join(dir, "private"), 0700))
	must(t, os.WriteFile(filepath.Join(dir, "private", "inner"), []byte("inner\n"), 0644))
	must(t, os.Mkdir(filepath.Join(dir, "open"), 0755))
	old := []unix.Timespec{{Sec: 981173106}, {Sec: 981173106}}
	for _, p := range []string{"private/inner", "private", "open", "file", "."} {
		must(t, unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(dir, p), old, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// dirNames lists the names in dir.
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	f, err := os.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		t.Fatal(err)
	}
	return names
}
