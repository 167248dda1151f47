package unionfs

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOpenRacingRename opens a name while another goroutine keeps replacing it, alternately with a regular file
// and with a symlink to a file outside the mount (go-fuse's OpenSymlinkRace, made strict). Every successful open
// must read the file on the mount, never the symlink's target, which the daemon would reach by following the
// symlink; failed opens are allowed only as the errors a racing rename explains.
func TestOpenRacingRename(t *testing.T) {
	u := newTestUnion(t, 1)
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("outside the union"), 0644); err != nil {
		t.Fatal(err)
	}
	mnt := u.Mount(t)
	path := filepath.Join(mnt, "f")
	if err := os.WriteFile(path, []byte("inside"), 0644); err != nil {
		t.Fatal(err)
	}
	const iterations = 2000
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tmp := path + ".tmp"
		for i := 0; i < iterations; i++ {
			if err := os.WriteFile(tmp, []byte("inside"), 0644); err != nil {
				t.Errorf("shuffler: %v", err)
				return
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Errorf("shuffler: %v", err)
				return
			}
			if err := os.Symlink(outside, tmp); err != nil {
				t.Errorf("shuffler: %v", err)
				return
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Errorf("shuffler: %v", err)
				return
			}
		}
	}()
	var opened, viaSymlink, failed, stale int
	for i := 0; i < iterations; i++ {
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW, 0)
		if err != nil {
			switch {
			case errors.Is(err, syscall.ELOOP):
				viaSymlink++ // the name was the symlink at that moment
			case errors.Is(err, syscall.ESTALE):
				stale++ // what overlayfs never answers: the kernel's retry of an ESTALE open met the race again
			case errors.Is(err, syscall.ENOENT):
				failed++
			default:
				t.Fatalf("open: %v", err)
			}
			continue
		}
		buf := make([]byte, 64)
		n, err := unix.Pread(fd, buf, 0)
		unix.Close(fd)
		if err != nil {
			t.Fatalf("reading an open file: %v", err)
		}
		if string(buf[:n]) != "inside" {
			t.Fatalf("an open through the union read %q: the daemon followed the symlink out of the union", buf[:n])
		}
		opened++
	}
	wg.Wait()
	t.Logf("opened %d, symlink %d, racing failures %d, ESTALE %d", opened, viaSymlink, failed, stale)
	if opened == 0 {
		t.Fatal("no open succeeded")
	}
	if stale > 0 {
		t.Errorf("%d opens failed with ESTALE", stale)
	}
	if failed > iterations/10 {
		t.Errorf("%d of %d opens failed: the union should almost always resolve a race", failed, iterations)
	}
}
