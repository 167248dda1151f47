package unionfs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// passthroughUnion mounts a union with FUSE passthrough and fails (or skips outside CI) where the kernel lacks it.
func passthroughUnion(t *testing.T) (*testUnion, string) {
	t.Helper()
	u := newTestUnion(t, 1)
	u.cfg.Passthrough = true
	os.WriteFile(filepath.Join(u.Lower(0), "f"), bytes.Repeat([]byte("A"), 1<<16), 0644)
	mnt := u.Mount(t)
	if !u.root.Stats().Passthrough {
		if os.Getenv("LTSP_UNIONFS_REQUIRE_FUSE") != "" && os.Geteuid() == 0 {
			t.Fatal("FUSE passthrough is not available on this kernel")
		}
		t.Skip("no FUSE passthrough here")
	}
	return u, mnt
}

// TestPassthroughConcurrentOpens opens a lower file from many goroutines while another one copies it up by
// writing it: no open fails (the stale-node retry is invisible to callers), every reader reads one whole version,
// and the writes land.
func TestPassthroughConcurrentOpens(t *testing.T) {
	u, mnt := passthroughUnion(t)
	p := filepath.Join(mnt, "f")
	oldData, newData := bytes.Repeat([]byte("A"), 1<<16), bytes.Repeat([]byte("B"), 1<<16)
	var wg sync.WaitGroup
	errs := make(chan error, 100)
	stop := make(chan struct{})
	for i := 0; i < 16; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := os.ReadFile(p)
				if err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, oldData) && !bytes.Equal(got, newData) {
					errs <- errors.New("a reader read a mix of versions")
					return
				}
			}
		}()
	}
	if err := os.WriteFile(p, newData, 0); err != nil {
		t.Errorf("writing while readers hold the file: %v", err)
	}
	for i := 0; i < 50; i++ {
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, newData) {
			t.Fatalf("after the write a new open reads %d bytes, %v", len(got), err)
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if s := u.root.Stats(); s.PassthroughOpens < 50 {
		t.Errorf("only %d passthrough opens", s.PassthroughOpens)
	}
}

// TestPassthroughMmapReaderAcrossCopyUp maps a lower file, then another open writes it: the mapping keeps
// reading the lower data (no SIGBUS, no EIO), and new opens see the write.
func TestPassthroughMmapReaderAcrossCopyUp(t *testing.T) {
	_, mnt := passthroughUnion(t)
	p := filepath.Join(mnt, "f")
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, 1<<16, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	defer unix.Munmap(m)
	if m[100] != 'A' {
		t.Fatalf("mapping reads %q", m[100])
	}
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatalf("open for writing while mapped: %v", err)
	}
	if _, err := w.WriteAt([]byte("BBBB"), 100); err != nil {
		t.Fatalf("write: %v", err)
	}
	w.Close()
	if m[100] != 'A' || m[60000] != 'A' {
		t.Errorf("the mapping of the lower file changed: %q %q", m[100], m[60000])
	}
	got, _ := os.ReadFile(p)
	if string(got[100:104]) != "BBBB" {
		t.Errorf("a new open reads %q", got[100:104])
	}
	// Writes through a shared writable mapping of the copy reach the file.
	g, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	wm, err := unix.Mmap(int(g.Fd()), 0, 1<<16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("writable mmap: %v", err)
	}
	copy(wm[200:], "CCCC")
	unix.Msync(wm, unix.MS_SYNC)
	unix.Munmap(wm)
	got, _ = os.ReadFile(p)
	if string(got[200:204]) != "CCCC" {
		t.Errorf("the write through the mapping reads back as %q", got[200:204])
	}
}

// TestPassthroughTruncateUnderReader truncates a lower file that a passthrough reader holds: the reader keeps
// its data, the name shows the truncated copy.
func TestPassthroughTruncateUnderReader(t *testing.T) {
	_, mnt := passthroughUnion(t)
	p := filepath.Join(mnt, "f")
	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := os.Truncate(p, 10); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100)
	if n, err := r.ReadAt(buf, 1000); err != nil || n != 100 {
		t.Errorf("the reader lost its data: %d bytes, %v", n, err)
	}
	if st, err := os.Stat(p); err != nil || st.Size() != 10 {
		t.Errorf("after truncate: %v %v", st, err)
	}
	if _, err := os.ReadFile(p); errors.Is(err, syscall.EIO) {
		t.Error("EIO reading the truncated copy")
	}
}
