package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// unionfs-fuse compatibility: an upper layer written by the real unionfs-fuse (Debian's package) reads the same
// through ltsp-unionfs, and an upper layer ltsp-unionfs writes in the unionfs-fuse format reads the same
// through unionfs-fuse.

// unionfsScript changes a union the way a client does: delete files and trees, recreate a deleted directory,
// modify, chmod, rename files.
const unionfsScript = `set -e
cd "$1"
rm etc/hostname
rm -r usr/share/doc
rm -r deep/0/1
mkdir deep/0/1
echo recreated > deep/0/1/file
echo appended >> etc/conf.d/03.conf
chmod 600 etc/conf.d/04.conf
mv etc/conf.d/05.conf etc/conf.d/05.renamed
mkdir -p new/tree
echo new > new/tree/file
rm many/f1*
`

// requireUnionfsFuse fails the test when unionfs-fuse is not installed (.ci/run installs it).
func requireUnionfsFuse(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireFUSE(t)
	bin, err := exec.LookPath("unionfs")
	if err != nil {
		bin, err = exec.LookPath("unionfs-fuse")
	}
	if err != nil {
		t.Fatal("unionfs-fuse is not installed (apt-get install unionfs-fuse)")
	}
	return bin
}

// mountUnionfsFuse mounts unionfs-fuse with copy-on-write over lower and upper, and unmounts it at cleanup.
func mountUnionfsFuse(t *testing.T, bin, lower, upper, mnt string) {
	t.Helper()
	out, err := exec.Command(bin, "-o", "cow,hide_meta_files,allow_other,use_ino", upper+"=RW:"+lower+"=RO", mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("unionfs-fuse: %v: %s", err, out)
	}
	t.Cleanup(func() {
		if _, ok := testutil.MountAt(mnt); ok {
			if out, err := exec.Command("fusermount3", "-u", mnt).CombinedOutput(); err != nil {
				t.Errorf("fusermount3 -u %s: %v: %s", mnt, err, out)
			}
		}
	})
}

// compareWithUnionfsFuse mounts the layers with unionfs-fuse and with ltsp-unionfs and compares the views.
func compareWithUnionfsFuse(t *testing.T, bin, lower, upper, dir string) {
	t.Helper()
	a, b := filepath.Join(dir, "view-unionfs-fuse"), filepath.Join(dir, "view-ltsp")
	testutil.Mkdirs(t, a)
	testutil.Mkdirs(t, b)
	mountUnionfsFuse(t, bin, lower, upper, a)
	r := runCLI(t, "", "-o", "ro", "ro="+lower, "rw="+upper, b)
	if r.code != 0 {
		t.Fatalf("ltsp-unionfs: %s", r.stderr)
	}
	t.Cleanup(func() { unmountAndWait(t, b) })
	// unionfs-fuse reports the link counts and sizes of the branch directories, and Debian's is built without
	// xattr support.
	opt := fstest.CompareOptions{IgnoreAtime: true, IgnoreDirSize: true, IgnoreDirNlink: true, IgnoreXattrs: true}
	n := fstest.CompareTrees(t, a, b, opt)
	if n < 100 {
		t.Errorf("compared only %d objects", n)
	}
}

func TestUnionfsFuseWritesLtspReads(t *testing.T) {
	bin := requireUnionfsFuse(t)
	dir := t.TempDir()
	lower, upper, mnt := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "mnt")
	for _, d := range []string{lower, upper, mnt} {
		testutil.Mkdirs(t, d)
	}
	if err := testutil.BuildFixture(lower); err != nil {
		t.Fatal(err)
	}
	mountUnionfsFuse(t, bin, lower, upper, mnt)
	if out, err := exec.Command("bash", "-c", unionfsScript, "script", mnt).CombinedOutput(); err != nil {
		t.Fatalf("changing the union through unionfs-fuse: %v: %s", err, out)
	}
	if out, err := exec.Command("fusermount3", "-u", mnt).CombinedOutput(); err != nil {
		t.Fatalf("unmount: %v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(upper, ".unionfs-fuse")); err != nil {
		t.Fatalf("unionfs-fuse wrote no meta directory: %v", err)
	}
	compareWithUnionfsFuse(t, bin, lower, upper, dir)
}

func TestLtspWritesUnionfsFuseReads(t *testing.T) {
	bin := requireUnionfsFuse(t)
	dir := t.TempDir()
	lower, upper, mnt := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "mnt")
	for _, d := range []string{lower, upper, mnt} {
		testutil.Mkdirs(t, d)
	}
	if err := testutil.BuildFixture(lower); err != nil {
		t.Fatal(err)
	}
	// Debian's unionfs-fuse 1.0 reads .unionfs-fuse; an upper layer that holds it is written in that name.
	os.Mkdir(filepath.Join(upper, ".unionfs-fuse"), 0700)
	r := runCLI(t, "", "ro="+lower, "rw="+upper, mnt)
	if r.code != 0 {
		t.Fatalf("mount: %s", r.stderr)
	}
	t.Cleanup(func() { unmountAndWait(t, mnt) })
	cmd := exec.Command("bash", "-c", unionfsScript, "script", mnt)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil || stderr.Len() > 0 {
		t.Fatalf("changing the union through ltsp-unionfs: %v: %s", err, stderr.String())
	}
	unmountAndWait(t, mnt)
	for _, p := range []string{"etc/hostname_HIDDEN~", "usr/share/doc_HIDDEN~"} {
		if _, err := os.Lstat(filepath.Join(upper, ".unionfs-fuse", p)); err != nil {
			t.Errorf("no unionfs-fuse whiteout %s: %v", p, err)
		}
	}
	compareWithUnionfsFuse(t, bin, lower, upper, dir)
}

// TestUnionfsFuseCommandLine mounts with unionfs-fuse's own command lines (from its manual: branch lists with
// =RW/=RO, -o cow, -o dirs=, -o chroot=), changes the union, and checks that the real unionfs-fuse then shows
// the same tree from that upper layer: a setup switches to ltsp-unionfs, and back, by the program name alone.
func TestUnionfsFuseCommandLine(t *testing.T) {
	bin := requireUnionfsFuse(t)
	forms := map[string]func(lower, upper, mnt string) []string{
		"positional": func(lower, upper, mnt string) []string {
			return []string{"-o", "cow,hide_meta_files,allow_other,use_ino,max_files=32767", upper + "=RW:" + lower + "=RO", mnt}
		},
		"dirs": func(lower, upper, mnt string) []string {
			return []string{"-o", "cow,statfs_omit_ro,dirs=" + upper + "=rw:" + lower, mnt}
		},
		"chroot": func(lower, upper, mnt string) []string {
			root := filepath.Dir(lower)
			return []string{"-o", "cow,chroot=" + root + ",noinitgroups", "/" + filepath.Base(upper) + "=RW:/" +
				filepath.Base(lower) + "=RO", mnt}
		},
	}
	for name, form := range forms {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			lower, upper, mnt := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "mnt")
			for _, d := range []string{lower, upper, mnt} {
				testutil.Mkdirs(t, d)
			}
			if err := testutil.BuildFixture(lower); err != nil {
				t.Fatal(err)
			}
			if r := runCLI(t, "", form(lower, upper, mnt)...); r.code != 0 {
				t.Fatalf("mount: exit %d: %s", r.code, r.stderr)
			}
			t.Cleanup(func() { unmountAndWait(t, mnt) })
			if out, err := exec.Command("bash", "-c", unionfsScript, "script", mnt).CombinedOutput(); err != nil {
				t.Fatalf("changing the union: %v: %s", err, out)
			}
			unmountAndWait(t, mnt)
			if _, err := os.Lstat(filepath.Join(upper, ".unionfs-fuse", "etc/hostname_HIDDEN~")); err != nil {
				t.Errorf("the upper layer is not in the format Debian's unionfs-fuse reads: %v", err)
			}
			compareWithUnionfsFuse(t, bin, lower, upper, dir)
		})
	}
}
