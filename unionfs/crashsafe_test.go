package unionfs

import (
	"bytes"
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// TestRenameOntoWhiteoutInOneStep renames files and directories onto whited-out names in the aufs and
// unionfs-fuse formats (whose whiteouts live beside the name) and watches the upper layer with inotify: the
// object must move to its new name in one rename, never through a temporary name, where a daemon killed
// between two renames would leave it visible under neither name (TestCrashKill9 found that).
func TestRenameOntoWhiteoutInOneStep(t *testing.T) {
	for _, format := range []string{"aufs", "unionfs-fuse"} {
		t.Run(format, func(t *testing.T) {
			u := newTestUnion(t, 1)
			u.cfg.Whiteout = format
			writeFiles(t, u.lowers[0], 100, "f", "dir/x")
			mnt := u.Mount(t)
			must(t, os.Remove(mnt+"/f"))
			must(t, os.RemoveAll(mnt+"/dir"))
			must(t, os.WriteFile(mnt+"/g", []byte("new f"), 0644))
			must(t, os.Mkdir(mnt+"/newdir", 0755))
			must(t, os.WriteFile(mnt+"/newdir/y", []byte("y"), 0644))

			ifd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
			must(t, err)
			defer unix.Close(ifd)
			if _, err := unix.InotifyAddWatch(ifd, u.upper, unix.IN_MOVED_FROM|unix.IN_MOVED_TO|unix.IN_CREATE); err != nil {
				t.Fatal(err)
			}
			must(t, os.Rename(mnt+"/g", mnt+"/f"))
			must(t, os.Rename(mnt+"/newdir", mnt+"/dir"))

			var moves []string
			buf := make([]byte, 64<<10)
			n, _ := unix.Read(ifd, buf)
			for off := 0; off+unix.SizeofInotifyEvent <= n; {
				ev := (*unix.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := string(bytes.TrimRight(buf[off+unix.SizeofInotifyEvent:off+unix.SizeofInotifyEvent+int(ev.Len)], "\x00"))
				off += unix.SizeofInotifyEvent + int(ev.Len)
				if ev.Mask&(unix.IN_MOVED_FROM|unix.IN_MOVED_TO) != 0 {
					moves = append(moves, name)
					if whiteout.IsTempName(name) {
						t.Errorf("the rename went through the temporary name %s", name)
					}
				}
			}
			if data, err := os.ReadFile(mnt + "/f"); err != nil || string(data) != "new f" {
				t.Errorf("f after the rename: %q %v", data, err)
			}
			if got := names(t, mnt+"/dir"); len(got) != 1 || got[0] != "y" {
				t.Errorf("dir after the rename: %v, want [y]", got)
			}
			t.Logf("%s: moves in the upper layer: %v", format, moves)
		})
	}
}
