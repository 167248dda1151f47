package testutil

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
)

// fixtureTime is the mtime and atime of every fixture object: long ago, so that a read of a lower file that is not
// O_NOATIME would update its atime even under relatime, and the snapshot would show it.
var fixtureTime = unix.Timespec{Sec: 981173106} // 2001-02-03

// BuildFixture creates, in the empty directory dir, a tree with every kind of object a root filesystem image holds:
// regular files (empty, small, large, sparse, setuid, mode 0), directories (nested, private, empty, large),
// symlinks (relative, absolute, dangling, to directories), hard links, FIFOs, sockets, devices (as root), xattrs
// (user.*, trusted.*, security.capability, POSIX ACLs as root), odd names, and several owners.
func BuildFixture(dir string) error {
	root := os.Geteuid() == 0
	b := &builder{dir: dir}
	b.mkdir("bin", 0755)
	b.file("bin/tool", 04755, "#!/bin/sh\necho tool\n")
	b.file("bin/plain", 0755, "#!/bin/sh\necho plain\n")
	b.mkdir("etc", 0755)
	b.file("etc/hostname", 0644, "fixture\n")
	b.file("etc/shadow", 0640, "root:*:19000:0:99999:7:::\n")
	b.file("etc/empty", 0644, "")
	b.file("etc/nobody-can-read", 0, "secret\n")
	b.mkdir("etc/conf.d", 0755)
	for i := 0; i < 20; i++ {
		b.file(fmt.Sprintf("etc/conf.d/%02d.conf", i), 0644, fmt.Sprintf("setting%d=%d\n", i, i*i))
	}
	b.mkdir("usr", 0755)
	b.mkdir("usr/share", 0755)
	b.mkdir("usr/share/doc", 0755)
	b.mkdir("usr/share/doc/pkg", 0755)
	b.file("usr/share/doc/pkg/changelog", 0644, strings.Repeat("a line of a changelog, long enough to matter\n", 3000))
	b.mkdir("usr/lib", 0755)
	b.file("usr/lib/libx.so.1.0", 0644, "\x7fELF not really\n")
	b.symlink("libx.so.1.0", "usr/lib/libx.so.1")
	b.symlink("../share", "usr/lib/share-link")
	b.symlink("/etc/hostname", "usr/lib/absolute-link")
	b.symlink("nowhere/at/all", "dangling")
	b.file("hard1", 0644, "hard linked\n")
	b.link("hard1", "hard2")
	b.sparse("sparse", 1<<20)
	b.mkdir("empty-dir", 0755)
	b.mkdir("private", 0700)
	b.file("private/inside", 0600, "private\n")
	b.mkfifo("fifo", 0644)
	b.socket("socket")
	b.file("with space", 0644, "space\n")
	b.file("ünïcödé", 0644, "unicode\n")
	b.file(strings.Repeat("n", 255), 0644, "long name\n")
	deep := "deep"
	b.mkdir(deep, 0755)
	for i := 0; i < 20; i++ {
		deep += fmt.Sprintf("/%d", i)
		b.mkdir(deep, 0755)
	}
	b.file(deep+"/bottom", 0644, "bottom\n")
	b.mkdir("many", 0755)
	for i := 0; i < 300; i++ {
		b.file(fmt.Sprintf("many/f%03d", i), 0644, fmt.Sprintf("%d\n", i))
	}
	b.file("xattrs", 0644, "has xattrs\n")
	b.xattr("xattrs", "user.color", "blue")
	b.xattr("empty-dir", "user.dircolor", "green")
	if root {
		b.mknod("null", unix.S_IFCHR|0666, unix.Mkdev(1, 3))
		b.mknod("loop0", unix.S_IFBLK|0660, unix.Mkdev(7, 0))
		b.xattr("xattrs", "trusted.secret", "only root sees this")
		// struct vfs_cap_data v2 for cap_net_raw+ep.
		b.xattr("bin/plain", "security.capability", "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00")
		// A POSIX ACL granting user 1234 read access (system.posix_acl_access, version 2).
		b.xattr("etc/hostname", "system.posix_acl_access", posixACL(0644, 1234))
		b.chown("etc/shadow", 0, 42)
		b.chown("private", 1000, 1000)
		b.chown("private/inside", 1000, 1000)
		b.chown("usr/share/doc/pkg", 1001, 1002)
	}
	b.times()
	return b.err
}

// posixACL encodes a system.posix_acl_access value for a file of the given mode with one named-user entry.
func posixACL(mode uint32, uid uint32) string {
	type entry struct {
		tag  uint16
		perm uint16
		id   uint32
	}
	const undefined = 0xffffffff
	entries := []entry{
		{0x01, uint16(mode>>6) & 7, undefined}, // ACL_USER_OBJ
		{0x02, 4, uid},                         // ACL_USER
		{0x04, uint16(mode>>3) & 7, undefined}, // ACL_GROUP_OBJ
		{0x10, 4, undefined},                   // ACL_MASK
		{0x20, uint16(mode) & 7, undefined},    // ACL_OTHER
	}
	buf := []byte{2, 0, 0, 0}
	for _, e := range entries {
		buf = append(buf, byte(e.tag), byte(e.tag>>8), byte(e.perm), byte(e.perm>>8),
			byte(e.id), byte(e.id>>8), byte(e.id>>16), byte(e.id>>24))
	}
	return string(buf)
}

// builder creates fixture objects, remembering the first error.
type builder struct {
	dir   string
	err   error
	paths []string
}

func (b *builder) p(rel string) string { return filepath.Join(b.dir, rel) }

func (b *builder) do(rel string, err error) {
	if b.err == nil && err != nil {
		b.err = fmt.Errorf("fixture %s: %w", rel, err)
	}
	b.paths = append(b.paths, rel)
}

func (b *builder) mkdir(rel string, mode uint32) {
	err := os.Mkdir(b.p(rel), 0700)
	if err == nil {
		err = os.Chmod(b.p(rel), os.FileMode(mode&0777)|modeBits(mode))
	}
	b.do(rel, err)
}

func (b *builder) file(rel string, mode uint32, content string) {
	err := os.WriteFile(b.p(rel), []byte(content), 0600)
	if err == nil {
		err = unix.Chmod(b.p(rel), mode)
	}
	b.do(rel, err)
}

func (b *builder) sparse(rel string, size int64) {
	f, err := os.Create(b.p(rel))
	if err == nil {
		_, err = f.WriteAt([]byte("data at the start"), 0)
		if err == nil {
			_, err = f.WriteAt([]byte("data in the middle"), size/2)
		}
		if err == nil {
			err = f.Truncate(size)
		}
		f.Close()
	}
	b.do(rel, err)
}

func (b *builder) symlink(target, rel string) { b.do(rel, os.Symlink(target, b.p(rel))) }
func (b *builder) link(old, rel string)       { b.do(rel, os.Link(b.p(old), b.p(rel))) }
func (b *builder) mkfifo(rel string, mode uint32) {
	b.do(rel, unix.Mkfifo(b.p(rel), mode))
}
func (b *builder) mknod(rel string, mode uint32, dev uint64) {
	b.do(rel, unix.Mknod(b.p(rel), mode, int(dev)))
}
func (b *builder) chown(rel string, uid, gid int) { b.do(rel, os.Lchown(b.p(rel), uid, gid)) }
func (b *builder) xattr(rel, name, value string) {
	b.do(rel, unix.Lsetxattr(b.p(rel), name, []byte(value), 0))
}

// socket makes a socket inode with mknod(2), as bind(2) would, without bind's 108-byte path limit.
func (b *builder) socket(rel string) {
	b.do(rel, unix.Mknod(b.p(rel), unix.S_IFSOCK|0755, 0))
}

// times sets every object's atime and mtime to fixtureTime, deepest first so directory times stay put.
func (b *builder) times() {
	ts := []unix.Timespec{fixtureTime, fixtureTime}
	for i := len(b.paths) - 1; i >= 0; i-- {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, b.p(b.paths[i]), ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			b.do(b.paths[i], err)
		}
	}
	b.do(".", unix.UtimesNanoAt(unix.AT_FDCWD, b.dir, ts, 0))
}

func modeBits(mode uint32) os.FileMode {
	var m os.FileMode
	if mode&unix.S_ISUID != 0 {
		m |= os.ModeSetuid
	}
	if mode&unix.S_ISGID != 0 {
		m |= os.ModeSetgid
	}
	if mode&unix.S_ISVTX != 0 {
		m |= os.ModeSticky
	}
	return m
}

// Snapshot describes every object under dir (names, types, modes, owners, sizes, link counts, device numbers,
// atime, mtime, ctime, symlink targets, content hashes and xattrs) without changing any of it. As root it reads
// through a private read-only noatime clone of the mount (readlink(2) would otherwise update symlink atimes);
// otherwise files and directories are opened with O_NOATIME and symlinks are read before they are stat'ed, so
// that the relatime update of a first readlink happens before the snapshot records the atime.
func Snapshot(dir string) (map[string]string, error) {
	snap := make(map[string]string)
	base := dir
	if fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0); err == nil {
		clone, err := sysx.PrivateClone(fd, true)
		unix.Close(fd)
		if err == nil {
			defer unix.Close(clone)
			base = fmt.Sprintf("/proc/self/fd/%d", clone)
		}
	}
	err := snapshotDir(base, ".", snap)
	return snap, err
}

func snapshotDir(base, rel string, snap map[string]string) error {
	p := filepath.Join(base, rel)
	if rel == "." {
		p = base + "/." // not the /proc magic link itself, but the directory it leads to
	}
	if err := snapshotOne(p, rel, snap); err != nil {
		return err
	}
	fd, err := unix.Open(p, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOATIME|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	names, err := readNames(fd)
	unix.Close(fd)
	if err != nil {
		return err
	}
	for _, name := range names {
		crel := filepath.Join(rel, name)
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(base, crel), &st); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			if err := snapshotDir(base, crel, snap); err != nil {
				return err
			}
		} else if err := snapshotOne(filepath.Join(base, crel), crel, snap); err != nil {
			return err
		}
	}
	return nil
}

func readNames(fd int) ([]string, error) {
	var names []string
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			break
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
	sort.Strings(names)
	return names, nil
}

func snapshotOne(p, rel string, snap map[string]string) error {
	target, _ := os.Readlink(p)
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return err
	}
	desc := fmt.Sprintf("mode=%o uid=%d gid=%d size=%d nlink=%d rdev=%d atime=%d.%09d mtime=%d.%09d ctime=%d.%09d",
		st.Mode, st.Uid, st.Gid, st.Size, st.Nlink, st.Rdev, st.Atim.Sec, st.Atim.Nsec, st.Mtim.Sec, st.Mtim.Nsec,
		st.Ctim.Sec, st.Ctim.Nsec)
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		desc += " target=" + target
	case unix.S_IFREG:
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOATIME|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		f := os.NewFile(uintptr(fd), p)
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return err
		}
		desc += " sha256=" + hex.EncodeToString(h.Sum(nil))
	}
	xattrs, err := listXattrs(p)
	if err != nil {
		return err
	}
	desc += " xattrs=" + xattrs
	snap[rel] = desc
	return nil
}

func listXattrs(p string) (string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		if err == unix.ENOTSUP {
			return "", nil
		}
		return "", err
	}
	var names []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name != "" {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var parts []string
	val := make([]byte, 64<<10)
	for _, name := range names {
		m, err := unix.Lgetxattr(p, name, val)
		if err != nil {
			return "", err
		}
		parts = append(parts, fmt.Sprintf("%s=%x", name, val[:m]))
	}
	return strings.Join(parts, ","), nil
}

// DiffSnapshots lists the differences between two snapshots, one line each.
func DiffSnapshots(before, after map[string]string) []string {
	var diffs []string
	for k, v := range before {
		if w, ok := after[k]; !ok {
			diffs = append(diffs, "removed: "+k)
		} else if v != w {
			diffs = append(diffs, fmt.Sprintf("changed: %s\n  before: %s\n  after:  %s", k, v, w))
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok {
			diffs = append(diffs, "added: "+k)
		}
	}
	sort.Strings(diffs)
	return diffs
}

// Mkdirs makes each directory (with its parents, mode 0755), failing t on the first error: test setup that is
// checked, instead of os.Mkdir calls whose errors nobody reads.
func Mkdirs(t testing.TB, dirs ...string) {
	t.Helper()
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0755); err != nil {
			t.Fatal(err)
		}
	}
}

// WriteFile writes a file (its parent directories made as needed), failing t on error.
func WriteFile(t testing.TB, path string, data []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		t.Fatal(err)
	}
}

// Symlink makes the symlink path to target, failing t on error.
func Symlink(t testing.TB, target, path string) {
	t.Helper()
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
}
