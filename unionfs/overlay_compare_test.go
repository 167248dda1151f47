package unionfs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// TestOverlayMadeUpperReadsIdentically builds an upper layer with kernel overlayfs over two lowers (a small one
// on top of the fixture tree): files changed, deleted, replaced by directories and back, directories deleted and
// recreated (opaque), new objects of every type. It then mounts the same layers with kernel overlayfs and with
// ltsp-unionfs and compares the two views name by name and stat by stat, content and xattrs included.
func TestOverlayMadeUpperReadsIdentically(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	u.lowers = append(u.lowers, fixtureDir)
	lower0 := u.Lower(0)
	work := u.mkdir("work")
	ovl := u.mkdir("ovl")

	// The top lower overrides and adds to the fixture.
	testutil.Mkdirs(t, filepath.Join(lower0, "etc", "conf.d"))
	testutil.WriteFile(t, filepath.Join(lower0, "etc", "hostname"), []byte("from lower0\n"), 0644)
	testutil.WriteFile(t, filepath.Join(lower0, "etc", "conf.d", "99.conf"), []byte("extra\n"), 0644)
	testutil.Mkdirs(t, filepath.Join(lower0, "opt", "app"))
	testutil.WriteFile(t, filepath.Join(lower0, "opt", "app", "bin"), []byte("app\n"), 0755)

	// Make changes through kernel overlayfs; its upper records them in the overlay format.
	testutil.MountOverlay(t, u.lowers, u.upper, work, ovl, "redirect_dir=off")
	script := `set -e
cd "$1"
echo changed >> etc/conf.d/05.conf
chmod 600 etc/conf.d/06.conf
rm etc/conf.d/07.conf etc/conf.d/99.conf
rm -r usr/share/doc
rm -r deep/0/1/2
mkdir -p deep/0/1/2/new
echo recreated > deep/0/1/2/new/file
rm many/f1*; rmdir private 2>/dev/null || true; rm -r private; mkdir private; echo only > private/one
rm hard1
echo replaced-by-dir > /dev/null; rm sparse; mkdir sparse; touch sparse/inside
rmdir empty-dir; echo now-a-file > empty-dir
mv opt/app opt/moved
ln -s etc/hostname newlink
mkfifo newfifo
mknod newnull c 1 3
mkdir -p new/dir/tree && echo new > new/dir/tree/file
setfattr -n user.added -v yes etc/conf.d/08.conf
chown 1234:5678 etc/conf.d/09.conf
touch -d 2010-01-01 etc/conf.d/10.conf
truncate -s 10 usr/lib/libx.so.1.0
`
	out, err := runShell(script, ovl)
	if err != nil {
		t.Fatalf("changing the union through overlayfs: %v\n%s", err, out)
	}
	testutil.Unmount(t, ovl)

	// The two views of the same layers.
	testutil.MountOverlay(t, u.lowers, u.upper, work, ovl, "redirect_dir=off", "ro")
	u.cfg.ReadOnly = true
	mnt := u.Mount(t)
	n := fstest.CompareTrees(t, ovl, mnt, fstest.CompareOptions{IgnoreAtime: true})
	t.Logf("compared %d objects", n)
	if n < 250 {
		t.Errorf("compared only %d objects; the fixture is bigger", n)
	}
	checkDinoEverywhere(t, mnt)
}

// runShell runs a bash script with arguments.
func runShell(script string, args ...string) (string, error) {
	cmd := execCommand("bash", append([]string{"-c", script, "script"}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// checkDinoEverywhere checks, in every directory under root, that readdir's d_ino agrees with stat, and that no
// two objects share an inode number unless they are hard links.
func checkDinoEverywhere(t *testing.T, root string) {
	t.Helper()
	byIno := map[uint64]unix.Stat_t{}
	filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			t.Errorf("walk %s: %v", p, err)
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			t.Errorf("Lstat %s: %v", p, err)
			return nil
		}
		if other, ok := byIno[st.Ino]; ok && (other.Mode&unix.S_IFMT != st.Mode&unix.S_IFMT || st.Mode&unix.S_IFMT == unix.S_IFDIR) {
			t.Errorf("%s shares inode number %d with another object", p, st.Ino)
		}
		byIno[st.Ino] = st
		if info.IsDir() {
			ents, err := readDirInos(p)
			if err != nil {
				t.Errorf("readdir %s: %v", p, err)
				return nil
			}
			for name, ino := range ents {
				if name == ".." {
					continue
				}
				var cst unix.Stat_t
				if err := unix.Lstat(filepath.Join(p, name), &cst); err != nil {
					t.Errorf("Lstat: %v", err)
					continue
				}
				if cst.Ino != ino {
					t.Errorf("%s/%s: d_ino %d, st_ino %d", p, name, ino, cst.Ino)
				}
			}
		}
		return nil
	})
}

// readDirInos lists a directory's names with their d_ino.
func readDirInos(dir string) (map[string]uint64, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	out := map[string]uint64{}
	buf := make([]byte, 32<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return out, nil
		}
		for off := 0; off < n; {
			ino := uint64(0)
			for i := 7; i >= 0; i-- {
				ino = ino<<8 | uint64(buf[off+i])
			}
			reclen := int(buf[off+16]) | int(buf[off+17])<<8
			name := string(buf[off+19 : off+reclen])
			name = strings.TrimRight(name, "\x00")
			out[name] = ino
			off += reclen
		}
	}
}
