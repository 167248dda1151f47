package unionfs

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// TestMetadataOnlyCopyUp changes the attributes of a 64 MiB lower file: the upper copy holds no data (the lower
// data keeps being read, du shows its blocks) until the file is opened for writing. Only the overlay format
// makes metadata-only copies (see Root.metacopy).
func TestMetadataOnlyCopyUp(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	u.cfg.Whiteout = "overlay"
	data := bytes.Repeat([]byte("0123456789abcdef"), 4<<20)
	if err := os.WriteFile(filepath.Join(u.Lower(0), "big"), data, 0644); err != nil {
		t.Fatal(err)
	}
	var lowerSt unix.Stat_t
	unix.Stat(filepath.Join(u.Lower(0), "big"), &lowerSt)
	mnt := u.Mount(t)
	big := filepath.Join(mnt, "big")
	if err := os.Chmod(big, 0600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(big, 1234, 1234); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Lsetxattr(big, "user.tag", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	var up unix.Stat_t
	if err := unix.Stat(filepath.Join(u.Upper(), "big"), &up); err != nil {
		t.Fatalf("no upper copy: %v", err)
	}
	// An xattr block may be counted; 64 MiB of data would be 131072 blocks.
	if up.Blocks > 64 || up.Size != int64(len(data)) {
		t.Fatalf("metadata-only copy: size %d, %d blocks; want the size and no data blocks", up.Size, up.Blocks)
	}
	if _, err := unix.Lgetxattr(filepath.Join(u.Upper(), "big"), "trusted.overlay.metacopy", nil); os.Geteuid() == 0 && err != nil {
		t.Errorf("no metacopy mark on the upper copy: %v", err)
	}
	var st unix.Stat_t
	unix.Stat(big, &st)
	if st.Mode&07777 != 0600 || st.Blocks != lowerSt.Blocks {
		t.Errorf("through the union: mode %o, %d blocks; want 0600 and the lower's %d", st.Mode&07777, st.Blocks, lowerSt.Blocks)
	}
	got, err := os.ReadFile(big)
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("reading the metadata-only copy: %d bytes, %v", len(got), err)
	}
	f, err := os.OpenFile(big, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("X"), 0)
	f.Close()
	unix.Stat(filepath.Join(u.Upper(), "big"), &up)
	if up.Blocks == 0 {
		t.Error("the data was not copied at the first write")
	}
	if _, err := unix.Lgetxattr(filepath.Join(u.Upper(), "big"), "trusted.overlay.metacopy", nil); err == nil {
		t.Error("the metacopy mark stayed after the data was copied")
	}
	got, _ = os.ReadFile(big)
	data[0] = 'X'
	if !bytes.Equal(got, data) {
		t.Error("content after the first write differs")
	}
	if st := lstatT(t, big); st.Mode&07777 != 0600 {
		t.Errorf("mode %o after the data copy", st.Mode&07777)
	}
}

// TestReaderAcrossCopyUp documents what a descriptor opened for reading before another process copies the file
// up reads afterwards. Through the page cache (no passthrough) the union re-points it at the copy, so it reads
// what later writers write, as on any single filesystem. With FUSE passthrough the kernel keeps reading the file
// it registered at open, the lower one, as overlayfs's descriptors do; new opens get the copy (the stale-node
// retry of Open).
func TestReaderAcrossCopyUp(t *testing.T) {
	for _, mode := range []string{"cached", "passthrough", "small-file"} {
		t.Run(mode, func(t *testing.T) {
			u := newTestUnion(t, 1)
			u.cfg.Passthrough = mode != "cached"
			passthrough := mode == "passthrough" // a small file opened read-only goes through the page cache
			if passthrough {
				u.cfg.PassthroughMinSize = 0
			}
			testutil.WriteFile(t, filepath.Join(u.Lower(0), "f"), []byte("lower!"), 0644)
			mnt := u.Mount(t)
			if u.cfg.Passthrough {
				u.requirePassthrough(t)
			}
			r, err := os.Open(filepath.Join(mnt, "f"))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			buf := make([]byte, 6)
			r.ReadAt(buf, 0)
			w, err := os.OpenFile(filepath.Join(mnt, "f"), os.O_WRONLY, 0)
			if err != nil {
				t.Fatalf("opening for writing while a reader holds the file: %v", err)
			}
			w.WriteAt([]byte("UPPER!"), 0)
			w.Close()
			want := "UPPER!"
			if passthrough {
				want = "lower!"
			}
			if _, err := r.ReadAt(buf, 0); err != nil || string(buf) != want {
				t.Errorf("the old read-only descriptor reads %q, %v; want %q", buf, err, want)
			}
			if got, _ := os.ReadFile(filepath.Join(mnt, "f")); string(got) != "UPPER!" {
				t.Errorf("a new open reads %q", got)
			}
			var st unix.Stat_t
			if err := unix.Fstat(int(r.Fd()), &st); err != nil {
				t.Errorf("fstat of the old descriptor: %v", err)
			}
			if s := u.root.Stats(); passthrough && s.StaleRetries == 0 {
				t.Errorf("no stale-node retry was counted: %+v", s)
			}
		})
	}
}

// TestCopyUpENOSPC copies up a lower file bigger than the free space of the upper tmpfs: the open fails with
// ENOSPC, the file still reads as before, no temporary object is left and the free space is unchanged; a write
// that runs out of space fails with ENOSPC and keeps what was written before.
func TestCopyUpENOSPC(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	testutil.MountTmpfs(t, u.Upper(), "2m")
	data := bytes.Repeat([]byte("z"), 4<<20)
	testutil.WriteFile(t, filepath.Join(u.Lower(0), "big"), data, 0644)
	testutil.Mkdirs(t, filepath.Join(u.Lower(0), "dir"))
	mnt := u.Mount(t)
	var before, after unix.Statfs_t
	unix.Statfs(u.Upper(), &before)
	_, err := os.OpenFile(filepath.Join(mnt, "big"), os.O_WRONLY, 0)
	if !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("open for writing: %v, want ENOSPC", err)
	}
	if got, err := os.ReadFile(filepath.Join(mnt, "big")); err != nil || !bytes.Equal(got, data) {
		t.Errorf("after ENOSPC the lower file reads %d bytes, %v", len(got), err)
	}
	unix.Statfs(u.Upper(), &after)
	if after.Bfree != before.Bfree {
		t.Errorf("free blocks %d, were %d", after.Bfree, before.Bfree)
	}
	ents, _ := os.ReadDir(u.Upper())
	for _, e := range ents {
		if whiteout.IsTempName(e.Name()) || e.Name() == "big" {
			t.Errorf("left in the upper layer: %s", e.Name())
		}
	}
	// A new file that fills the upper layer.
	f, err := os.Create(filepath.Join(mnt, "dir", "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte("f"), 64<<10)
	written := 0
	for {
		n, err := f.Write(chunk)
		written += n
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("write: %v, want ENOSPC", err)
			}
			break
		}
		if written > 8<<20 {
			t.Fatal("wrote more than the upper layer holds")
		}
	}
	f.Close()
	got, err := os.ReadFile(filepath.Join(mnt, "dir", "filler"))
	if err != nil || len(got) != written || !bytes.Equal(got, bytes.Repeat([]byte("f"), written)) {
		t.Errorf("after ENOSPC the file holds %d bytes (%v), %d were written", len(got), err, written)
	}
}

// asUser runs a shell command as uid:gid (with supplementary groups) through setpriv and returns its error and
// output.
func asUser(t *testing.T, uid, gid int, groups string, script string) (string, error) {
	t.Helper()
	args := []string{"--reuid=" + strconv.Itoa(uid), "--regid=" + strconv.Itoa(gid)}
	if groups == "" {
		args = append(args, "--clear-groups")
	} else {
		args = append(args, "--groups="+groups)
	}
	args = append(args, "sh", "-c", script)
	out, err := execCommand("setpriv", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestOwnershipAndPermissions runs as unprivileged users against lower and upper objects: new objects belong to
// their creator (setgid directories hand their group down), permission checks are the kernel's, setuid is
// cleared by a write from another user, and the sticky bit protects other users' files.
func TestOwnershipAndPermissions(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Fatal("setpriv is needed")
	}
	u := newTestUnion(t, 1)
	os.Chmod(u.dir, 0755)
	os.Chmod(filepath.Dir(u.dir), 0755) // t.TempDir's parent is private too
	l := u.Lower(0)
	testutil.Mkdirs(t, filepath.Join(l, "shared"))
	os.Chown(filepath.Join(l, "shared"), 0, 2000)
	unix.Chmod(filepath.Join(l, "shared"), 02775)
	testutil.Mkdirs(t, filepath.Join(l, "tmp"))
	unix.Chmod(filepath.Join(l, "tmp"), 01777)
	testutil.WriteFile(t, filepath.Join(l, "tmp", "roots"), []byte("r"), 0666)
	testutil.WriteFile(t, filepath.Join(l, "secret"), []byte("no"), 0600)
	testutil.WriteFile(t, filepath.Join(l, "setuid"), []byte("#!/bin/sh\n"), 0777)
	unix.Chmod(filepath.Join(l, "setuid"), 04777)
	testutil.WriteFile(t, filepath.Join(l, "others"), []byte("x"), 0644)
	mnt := u.Mount(t)

	run := func(uid int, groups, script string) error {
		out, err := asUser(t, uid, uid, groups, script)
		if err != nil {
			t.Logf("as %d: %s: %v: %s", uid, script, err, out)
		}
		return err
	}
	if err := run(1000, "", "echo hi > "+mnt+"/tmp/mine && mkdir "+mnt+"/tmp/mydir"); err != nil {
		t.Fatal("a user cannot create in a sticky lower directory")
	}
	for _, p := range []string{"tmp/mine", "tmp/mydir"} {
		st := lstatT(t, filepath.Join(mnt, p))
		if st.Uid != 1000 || st.Gid != 1000 {
			t.Errorf("%s belongs to %d:%d, want 1000:1000", p, st.Uid, st.Gid)
		}
		var ust unix.Stat_t
		unix.Lstat(filepath.Join(u.Upper(), p), &ust)
		if ust.Uid != 1000 {
			t.Errorf("upper %s belongs to %d", p, ust.Uid)
		}
	}
	if st := lstatT(t, filepath.Join(mnt, "tmp", "mine")); st.Mode&0777 != 0644&^022 && st.Mode&0777 != 0644 {
		t.Errorf("umask not applied: mode %o", st.Mode&0777)
	}
	if err := run(1000, "2000", "touch "+mnt+"/shared/f && mkdir "+mnt+"/shared/d"); err != nil {
		t.Fatal("a group member cannot create in a setgid directory")
	}
	if st := lstatT(t, filepath.Join(mnt, "shared", "f")); st.Gid != 2000 {
		t.Errorf("file in a setgid directory has group %d, want 2000", st.Gid)
	}
	if st := lstatT(t, filepath.Join(mnt, "shared", "d")); st.Gid != 2000 || st.Mode&unix.S_ISGID == 0 {
		t.Errorf("directory in a setgid directory: group %d mode %o, want 2000 and setgid", st.Gid, st.Mode)
	}
	if run(1001, "", "rm "+mnt+"/tmp/mine") == nil {
		t.Error("the sticky bit did not protect another user's file")
	}
	if run(1000, "", "rm "+mnt+"/tmp/roots") == nil {
		t.Error("the sticky bit did not protect root's lower file")
	}
	if run(1000, "", "cat "+mnt+"/secret") == nil {
		t.Error("a user read a 0600 root file")
	}
	if run(1000, "", "chmod 777 "+mnt+"/others") == nil {
		t.Error("a user chmodded another user's file")
	}
	if run(1000, "", "chown 1000 "+mnt+"/others") == nil {
		t.Error("a user chowned another user's file")
	}
	if run(1000, "", "setfattr -n user.x -v y "+mnt+"/others") == nil {
		t.Error("a user set an xattr on another user's file")
	}
	if run(1000, "", "mknod "+mnt+"/tmp/dev c 1 3") == nil {
		t.Error("a user made a device node")
	}
	if err := run(1000, "", "echo more >> "+mnt+"/setuid"); err != nil {
		t.Fatal("a user cannot write a world-writable file")
	}
	if st := lstatT(t, filepath.Join(mnt, "setuid")); st.Mode&unix.S_ISUID != 0 {
		t.Errorf("a write by another user left the setuid bit: mode %o", st.Mode)
	}
	if data, _ := os.ReadFile(filepath.Join(u.Lower(0), "setuid")); string(data) != "#!/bin/sh\n" {
		t.Errorf("the lower file changed: %q", data)
	}
}

func lstatT(t *testing.T, p string) unix.Stat_t {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatalf("Lstat %s: %v", p, err)
	}
	return st
}

// TestWarmWalkStaysInKernel walks the fixture twice: the second walk is served from the kernel's caches and
// sends (nearly) no lookups to the lower layer, as the daemon's counters show.
func TestWarmWalkStaysInKernel(t *testing.T) {
	u := newTestUnion(t, 1)
	u.lowers[0] = fixtureDir
	mnt := u.Mount(t)
	walk := func() {
		out, err := execCommand("find", mnt, "-printf", "%s %m %u\\n").CombinedOutput()
		if err != nil {
			t.Fatalf("find: %v: %s", err, out)
		}
	}
	walk()
	first := u.root.Stats()
	walk()
	second := u.root.Stats()
	if first.LowerLookups < 100 {
		t.Fatalf("the first walk made only %d lower lookups: the counters do not count", first.LowerLookups)
	}
	if d := second.LowerLookups - first.LowerLookups; d > 5 {
		t.Errorf("the second walk made %d lower lookups; the kernel should have answered from its caches", d)
	}
	if d := second.Requests["lookup"] - first.Requests["lookup"]; d > 5 {
		t.Errorf("the second walk sent %d LOOKUPs", d)
	}
	for _, op := range []string{"readdir", "readlink", "getxattr", "listxattr", "open"} {
		if d := second.Requests[op] - first.Requests[op]; d > 2 {
			t.Errorf("the second walk sent %d %s requests", d, op)
		}
	}
	// The second walk may still ask for the attributes of directories and symlinks whose cached atime the kernel
	// dropped when it read them the first time. From the third on, nothing at all reaches the daemon: listings,
	// attributes and symlink targets come from the kernel's caches, and directories open without asking.
	walk()
	third := u.root.Stats()
	total := func(s Stats) (n uint64) {
		for _, v := range s.Requests {
			n += v
		}
		return n
	}
	if d := total(third) - total(second); d > 3 {
		t.Errorf("the third walk sent %d requests: %v then %v", d, second.Requests, third.Requests)
	}
}
