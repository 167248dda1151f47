package unionfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Ownership and permissions, with kernel overlayfs over the same lower layer as the oracle: unprivileged users
// (and root, where root's result matters) do everything a user of a shared machine might try, on both mounts;
// every call must give the same errno, and in the end both merged trees and both upper layers must hold the same
// objects with the same owners, groups and modes. The daemon creates every object as root and hands it over, so
// this is where a wrong owner, a setuid or setgid bit kept or a check skipped would show.

// ownerGroup is a supplementary group of the attacker; strangerGroup is one they are not in.
const (
	ownerGroup    = 2000
	strangerGroup = 3000
)

// buildPermLower creates the lower layer of the ownership tests.
func buildPermLower(t *testing.T, dir string) {
	t.Helper()
	type obj struct {
		path      string
		mode      uint32 // with S_IFDIR for directories
		uid, gid  int
		content   string
		userXattr bool
	}
	objs := []obj{
		{"pub", unix.S_IFDIR | 0777, 0, 0, "", false},
		{"sgid", unix.S_IFDIR | 02775, 0, ownerGroup, "", false},
		{"sgid-stranger", unix.S_IFDIR | 02777, 0, strangerGroup, "", false},
		{"sticky", unix.S_IFDIR | 01777, 0, 0, "", false},
		{"sticky/roots", 0666, 0, 0, "root's\n", false},
		{"sticky/others", 0666, other, other, "other's\n", false},
		{"private", unix.S_IFDIR | 0755, 0, 0, "", false},
		{"private/secret", 0600, 0, 0, "secret\n", false},
		{"private/secret2", 0600, 0, 0, "secret 2\n", false},
		{"private/others-secret", 0600, other, other, "other's secret\n", false},
		{"ro-dir", unix.S_IFDIR | 0755, 0, 0, "", false},
		{"ro-dir/file", 0644, 0, 0, "ro\n", false},
		{"suid-file", 04777, 0, 0, "suid\n", false},
		{"sgid-file", 02777, 0, 0, "sgid\n", false},
		{"sgid-noexec-file", 02767, 0, 0, "sgid no x\n", false},
		{"userfile", 0644, attacker, attacker, "mine\n", true},
		{"userfile2", 0644, attacker, attacker, "mine 2\n", false},
		{"user-suid", 06755, attacker, attacker, "my suid\n", false},
		{"user-suid2", 06755, attacker, attacker, "my suid 2\n", false},
		{"user-stranger-group", 0644, attacker, strangerGroup, "group\n", false},
		{"others", 0644, other, other, "other's\n", true},
		{"others-rw", 0666, other, other, "other's rw\n", false},
		{"rootfile", 0644, 0, 0, "root's\n", true},
	}
	for _, o := range objs {
		p := filepath.Join(dir, o.path)
		if o.mode&unix.S_IFDIR != 0 {
			must(t, os.Mkdir(p, 0700))
		} else {
			must(t, os.WriteFile(p, []byte(o.content), 0600))
		}
		must(t, os.Lchown(p, o.uid, o.gid))
		must(t, unix.Chmod(p, o.mode&07777))
		if o.userXattr {
			must(t, unix.Lsetxattr(p, "user.x", []byte("lower"), 0))
		}
	}
}

// permOp is one attempt: who makes it, and what.
type permOp struct {
	name string
	uid  int // 0: root; attacker acts with ownerGroup as a supplementary group
	fn   func(m string) error
}

// posixACLValue encodes a system.posix_acl_access value granting uid read and write access.
func posixACLValue(uid uint32) []byte {
	buf := []byte{2, 0, 0, 0}
	add := func(tag, perm uint16, id uint32) {
		buf = binary.LittleEndian.AppendUint16(buf, tag)
		buf = binary.LittleEndian.AppendUint16(buf, perm)
		buf = binary.LittleEndian.AppendUint32(buf, id)
	}
	add(0x01, 6, 0xffffffff) // ACL_USER_OBJ rw
	add(0x02, 6, uid)        // ACL_USER rw
	add(0x04, 4, 0xffffffff) // ACL_GROUP_OBJ r
	add(0x10, 6, 0xffffffff) // ACL_MASK rw
	add(0x20, 4, 0xffffffff) // ACL_OTHER r
	return buf
}

func createFile(p string, mode uint32) error {
	fd, err := unix.Open(p, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY, mode)
	if err != nil {
		return err
	}
	_, err = unix.Write(fd, []byte("new\n"))
	unix.Close(fd)
	return err
}

func appendFile(p string) error {
	fd, err := unix.Open(p, unix.O_WRONLY|unix.O_APPEND, 0)
	if err != nil {
		return err
	}
	_, err = unix.Write(fd, []byte("appended\n"))
	unix.Close(fd)
	return err
}

func readFile(p string) error {
	_, err := os.ReadFile(p)
	return err
}

var permOps = []permOp{
	// Everything created belongs to the caller.
	{"create", attacker, func(m string) error { return createFile(m+"/pub/file", 0644) }},
	{"create setgid in own group", attacker, func(m string) error { return createFile(m+"/pub/file-sgid", 02755) }},
	{"mkdir", attacker, func(m string) error { return unix.Mkdir(m+"/pub/dir", 0755) }},
	{"symlink", attacker, func(m string) error { return unix.Symlink("file", m+"/pub/link") }},
	{"mkfifo", attacker, func(m string) error { return unix.Mkfifo(m+"/pub/fifo", 0640) }},
	{"socket node", attacker, func(m string) error { return unix.Mknod(m+"/pub/sock", unix.S_IFSOCK|0600, 0) }},
	{"O_TMPFILE linked", attacker, func(m string) error {
		fd, err := unix.Open(m+"/pub", unix.O_TMPFILE|unix.O_WRONLY, 0640)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Linkat(fd, "", unix.AT_FDCWD, m+"/pub/tmpfile", unix.AT_EMPTY_PATH)
	}},
	{"hard link of own lower file", attacker, func(m string) error { return unix.Link(m+"/userfile2", m+"/pub/hardlink") }},
	{"hard link of root's file", attacker, func(m string) error { return unix.Link(m+"/rootfile", m+"/pub/rootlink") }},
	{"hard link of other's rw file", attacker, func(m string) error { return unix.Link(m+"/others-rw", m+"/pub/otherslink") }},
	{"copy-up by write", attacker, func(m string) error { return appendFile(m + "/userfile") }},
	{"create in setgid dir", attacker, func(m string) error { return createFile(m+"/sgid/file", 0644) }},
	{"mkdir in setgid dir", attacker, func(m string) error { return unix.Mkdir(m+"/sgid/dir", 0755) }},
	{"create setgid in stranger's setgid dir", attacker, func(m string) error {
		return createFile(m+"/sgid-stranger/file", 02755)
	}},
	{"mkdir in stranger's setgid dir", attacker, func(m string) error { return unix.Mkdir(m+"/sgid-stranger/dir", 0755) }},
	{"mkfifo in stranger's setgid dir", attacker, func(m string) error {
		return unix.Mkfifo(m+"/sgid-stranger/fifo", 02755)
	}},
	// No devices.
	{"mknod char device", attacker, func(m string) error { return unix.Mknod(m+"/pub/null", unix.S_IFCHR|0666, int(unix.Mkdev(1, 3))) }},
	{"mknod whiteout device", attacker, func(m string) error { return unix.Mknod(m+"/pub/wh", unix.S_IFCHR|0666, 0) }},
	{"mknod block device", attacker, func(m string) error { return unix.Mknod(m+"/pub/loop", unix.S_IFBLK|0666, int(unix.Mkdev(7, 0))) }},
	// setuid and setgid dropped on writes and chown by the kernel's rules.
	{"write root's setuid file", attacker, func(m string) error { return appendFile(m + "/suid-file") }},
	{"write root's setgid file", attacker, func(m string) error { return appendFile(m + "/sgid-file") }},
	{"write root's setgid file without group x", attacker, func(m string) error { return appendFile(m + "/sgid-noexec-file") }},
	{"chown own setuid file", attacker, func(m string) error { return unix.Chown(m+"/user-suid", attacker, ownerGroup) }},
	{"root chowns a setuid file", 0, func(m string) error { return unix.Chown(m+"/user-suid2", other, other) }},
	{"chmod setgid, file of a stranger group", attacker, func(m string) error { return unix.Chmod(m+"/user-stranger-group", 02755) }},
	{"chown to a group one is not in", attacker, func(m string) error { return unix.Chown(m+"/userfile2", -1, strangerGroup) }},
	{"chown to another user", attacker, func(m string) error { return unix.Chown(m+"/userfile2", other, -1) }},
	// Nothing on what one does not own.
	{"chmod other's file", attacker, func(m string) error { return unix.Chmod(m+"/others", 0777) }},
	{"chmod root's file", attacker, func(m string) error { return unix.Chmod(m+"/rootfile", 04777) }},
	{"chown other's file", attacker, func(m string) error { return unix.Chown(m+"/others", attacker, attacker) }},
	{"lchown other's file", attacker, func(m string) error { return unix.Lchown(m+"/others", -1, attacker) }},
	{"utimes of other's file", attacker, func(m string) error {
		return unix.UtimesNano(m+"/others", []unix.Timespec{{Sec: 1}, {Sec: 1}})
	}},
	{"utimes now of other's rw file", attacker, func(m string) error {
		return unix.UtimesNanoAt(unix.AT_FDCWD, m+"/others-rw", nil, 0)
	}},
	{"truncate other's file", attacker, func(m string) error { return unix.Truncate(m+"/others", 0) }},
	{"set user xattr on other's file", attacker, func(m string) error { return unix.Setxattr(m+"/others", "user.y", []byte("1"), 0) }},
	{"remove user xattr of other's file", attacker, func(m string) error { return unix.Removexattr(m+"/others", "user.x") }},
	{"set trusted xattr on own file", attacker, func(m string) error { return unix.Setxattr(m+"/userfile", "trusted.y", []byte("1"), 0) }},
	{"set security xattr on own file", attacker, func(m string) error { return unix.Setxattr(m+"/userfile", "security.y", []byte("1"), 0) }},
	{"set file capability on own file", attacker, func(m string) error {
		return unix.Setxattr(m+"/userfile", "security.capability", fileCapability, 0)
	}},
	{"set ACL on root's file", attacker, func(m string) error {
		return unix.Setxattr(m+"/rootfile", "system.posix_acl_access", posixACLValue(attacker), 0)
	}},
	{"set ACL on own file", attacker, func(m string) error {
		return unix.Setxattr(m+"/userfile2", "system.posix_acl_access", posixACLValue(other), 0)
	}},
	{"read trusted xattr", attacker, func(m string) error {
		_, err := unix.Getxattr(m+"/userfile", "trusted.y", make([]byte, 64))
		return err
	}},
	// Reading and creating where one may not.
	{"read root's 0600 lower file", attacker, func(m string) error { return readFile(m + "/private/secret") }},
	{"root copies the secret up", 0, func(m string) error { return unix.Chmod(m+"/private/secret2", 0600) }},
	{"read root's 0600 file after its copy-up", attacker, func(m string) error { return readFile(m + "/private/secret2") }},
	{"other copies their secret up by writing", other, func(m string) error { return appendFile(m + "/private/others-secret") }},
	{"read other's 0600 file after their copy-up", attacker, func(m string) error { return readFile(m + "/private/others-secret") }},
	{"chmod other's 0600 file after their copy-up", attacker, func(m string) error { return unix.Chmod(m+"/private/others-secret", 0644) }},
	{"open root's 0600 file for writing", attacker, func(m string) error { return appendFile(m + "/private/secret") }},
	{"create in a read-only dir", attacker, func(m string) error { return createFile(m+"/ro-dir/new", 0644) }},
	{"mkdir in a read-only dir", attacker, func(m string) error { return unix.Mkdir(m+"/ro-dir/new", 0755) }},
	{"unlink in a read-only dir", attacker, func(m string) error { return unix.Unlink(m + "/ro-dir/file") }},
	{"rename out of a read-only dir", attacker, func(m string) error { return unix.Rename(m+"/ro-dir/file", m+"/pub/stolen") }},
	// The sticky bit.
	{"unlink root's file in sticky dir", attacker, func(m string) error { return unix.Unlink(m + "/sticky/roots") }},
	{"unlink other's file in sticky dir", attacker, func(m string) error { return unix.Unlink(m + "/sticky/others") }},
	{"rename over other's file in sticky dir", attacker, func(m string) error {
		if err := createFile(m+"/sticky/mine", 0644); err != nil {
			return err
		}
		return unix.Rename(m+"/sticky/mine", m+"/sticky/others")
	}},
	{"other unlinks the attacker's file in sticky dir", other, func(m string) error { return unix.Unlink(m + "/sticky/mine") }},
	{"write other's rw file in sticky dir", attacker, func(m string) error { return appendFile(m + "/sticky/others") }},
}

func TestSecurityPermissionsMatchOverlayfs(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	reachable(t, u.dir)
	buildPermLower(t, u.Lower(0))
	lowerBefore := mustSnapshot(t, u.Lower(0))
	oupper, owork, ovl := u.mkdir("oupper"), u.mkdir("owork"), u.mkdir("ovl")
	testutil.MountOverlay(t, u.lowers, oupper, owork, ovl)
	mnt := u.Mount(t)
	run := func(op permOp, m string) (err error) {
		if op.uid == 0 {
			return op.fn(m)
		}
		var groups []uint32
		if op.uid == attacker {
			groups = []uint32{ownerGroup}
		}
		asUserGroups(t, op.uid, op.uid, groups, func() {
			// A umask of 0 so that the modes asked for reach the file systems unchanged.
			old := unix.Umask(0)
			defer unix.Umask(old)
			err = op.fn(m)
		})
		return err
	}
	for _, op := range permOps {
		want, got := run(op, ovl), run(op, mnt)
		if !sameErr(want, got) {
			t.Errorf("%s (as %d): overlayfs: %v, ltsp-unionfs: %v", op.name, op.uid, want, got)
		} else {
			t.Logf("%s (as %d): %v", op.name, op.uid, errText(got))
		}
	}
	n := fstest.CompareTrees(t, ovl, mnt, fstest.CompareOptions{IgnoreAtime: true, IgnoreMtime: true,
		IgnoreDirNlink: true, IgnoreDirSize: true})
	t.Logf("merged views: %d objects compared", n)
	compareUppers(t, oupper, u.Upper())
	u.Unmount(t)
	checkUnchanged(t, "the lower layer", u.Lower(0), lowerBefore)
}

// compareUppers checks that every object overlayfs put in its upper layer is in the union's upper layer too, with
// the same type, owner, group and mode (overlayfs's work directory and markers aside).
func compareUppers(t *testing.T, want, got string) {
	t.Helper()
	n := 0
	filepath.Walk(want, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == want {
			return nil
		}
		rel, _ := filepath.Rel(want, p)
		ws := fi.Sys().(*syscall.Stat_t)
		if whiteout.IsOverlayWhiteout(&unix.Stat_t{Mode: ws.Mode, Rdev: ws.Rdev}) {
			return nil
		}
		var gs unix.Stat_t
		if err := unix.Lstat(filepath.Join(got, rel), &gs); err != nil {
			t.Errorf("upper layers: %s: overlayfs has it, ltsp-unionfs: %v", rel, err)
			return nil
		}
		n++
		mask := uint32(unix.S_IFMT | 07777)
		if fi.Mode()&os.ModeSymlink != 0 {
			mask = unix.S_IFMT
		}
		if ws.Uid != gs.Uid || ws.Gid != gs.Gid || ws.Mode&mask != gs.Mode&mask {
			t.Errorf("upper layers: %s: overlayfs %d:%d %o, ltsp-unionfs %d:%d %o", rel, ws.Uid, ws.Gid, ws.Mode&mask,
				gs.Uid, gs.Gid, gs.Mode&mask)
		}
		return nil
	})
	t.Logf("upper layers: %d objects compared", n)
	if n < 20 {
		t.Errorf("only %d objects in the upper layers: the operations did not run", n)
	}
}

func sameErr(a, b error) bool {
	return errText(a) == errText(b)
}

func errText(err error) string {
	if err == nil {
		return "ok"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	// os errors carry the path, which differs between the mounts.
	var pe *os.PathError
	if errors.As(err, &pe) {
		return errText(pe.Err)
	}
	return err.Error()
}

// TestSecurityNoRootOwnedWindow watches the union's upper layer with inotify while users create objects of every
// kind through the union: the first time any new name is seen in the upper layer, it must already belong to its
// creator. (The daemon builds objects under internal temporary names, which are never visible through the mount,
// and gives them away before it publishes them.)
func TestSecurityNoRootOwnedWindow(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	reachable(t, u.dir)
	must(t, os.Mkdir(filepath.Join(u.Lower(0), "pub"), 0777))
	must(t, os.Chmod(filepath.Join(u.Lower(0), "pub"), 0777))
	mnt := u.Mount(t)
	pub := filepath.Join(mnt, "pub")
	must(t, unix.Chmod(pub, 0777)) // the upper directory exists now
	upPub := filepath.Join(u.Upper(), "pub")
	ifd, err := unix.InotifyInit1(unix.IN_CLOEXEC)
	must(t, err)
	defer unix.Close(ifd)
	_, err = unix.InotifyAddWatch(ifd, upPub, unix.IN_CREATE|unix.IN_MOVED_TO)
	must(t, err)
	var mu sync.Mutex
	first := map[string]uint32{} // name -> owner uid when first seen
	var events int
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64<<10)
		for {
			n, err := unix.Read(ifd, buf)
			if err != nil || n <= 0 {
				return
			}
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				l := int(binary.LittleEndian.Uint32(buf[off+12:]))
				name := strings.TrimRight(string(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+l]), "\x00")
				off += unix.SizeofInotifyEvent + l
				if name == "stop" {
					return
				}
				var st unix.Stat_t
				if name == "" || unix.Lstat(filepath.Join(upPub, name), &st) != nil {
					continue
				}
				mu.Lock()
				events++
				if _, ok := first[name]; !ok {
					first[name] = st.Uid
				}
				mu.Unlock()
			}
		}
	}()
	const rounds = 150
	for _, uid := range []int{attacker, other} {
		asUserThread(t, uid, uid, func() {
			for i := 0; i < rounds; i++ {
				p := filepath.Join(pub, fmt.Sprintf("u%d-%d", uid, i))
				for _, err := range []error{
					createFile(p+"-file", 0644),
					unix.Mkdir(p+"-dir", 0755),
					unix.Symlink("x", p+"-link"),
					unix.Mkfifo(p+"-fifo", 0644),
					unix.Link(p+"-file", p+"-hard"),
					unix.Rename(p+"-hard", p+"-renamed"),
				} {
					if err != nil {
						t.Errorf("as %d: %v", uid, err)
						return
					}
				}
			}
		})
	}
	must(t, os.WriteFile(filepath.Join(upPub, "stop"), nil, 0644))
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the inotify reader did not finish")
	}
	mu.Lock()
	defer mu.Unlock()
	seen := 0
	for name, uid := range first {
		if whiteout.IsTempName(name) {
			continue // invisible through the mount; handed over before it gets its name
		}
		seen++
		want := uint32(attacker)
		if strings.HasPrefix(name, fmt.Sprintf("u%d-", other)) {
			want = other
		}
		if uid != want {
			t.Errorf("%s was first seen in the upper layer owned by %d, want %d", name, uid, want)
		}
	}
	t.Logf("%d inotify events, %d new names checked", events, seen)
	if seen < 2*rounds*5 {
		t.Errorf("only %d new names seen; want %d", seen, 2*rounds*5)
	}
}
