package unionfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// passthroughUnion mounts a union with FUSE passthrough for files of every size and fails (or skips outside CI)
// where the kernel lacks it.
func passthroughUnion(t *testing.T) (*testUnion, string) {
	t.Helper()
	u := newTestUnion(t, 1)
	u.cfg.Passthrough = true
	u.cfg.PassthroughMinSize = 0
	testutil.WriteFile(t, filepath.Join(u.Lower(0), "f"), bytes.Repeat([]byte("A"), 1<<16), 0644)
	mnt := u.Mount(t)
	u.requirePassthrough(t)
	return u, mnt
}

// TestPassthroughConcurrentOpens opens a lower file from many goroutines while another one copies it up by
// writing it: no open fails (the stale-node retry is invisible to callers), every reader reads one version, and
// the writes land.
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
				// The old version whole, or the new one as far as the writer got (it truncates, then writes):
				// never bytes of both, which would mean a read switched files half way.
				if !bytes.Equal(got, oldData) && !bytes.Equal(got, newData[:len(got)]) {
					errs <- fmt.Errorf("a reader read a mix of versions (%d bytes, %d of them old)", len(got),
						bytes.Count(got, []byte("A")))
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

// TestOpenModeBySize checks the open-mode policy: small files opened for reading go through the page cache,
// large ones and every writer use passthrough, and a file whose cached pages a passthrough writer made stale
// reads the new data on its next cached open, through read(2) and mmap(2).
func TestOpenModeBySize(t *testing.T) {
	u := newTestUnion(t, 1)
	u.cfg.Passthrough = true
	u.cfg.PassthroughMinSize = 1 << 20
	small, large := bytes.Repeat([]byte("s"), 4096), bytes.Repeat([]byte("L"), 2<<20)
	testutil.WriteFile(t, filepath.Join(u.Lower(0), "small"), small, 0644)
	testutil.WriteFile(t, filepath.Join(u.Lower(0), "large"), large, 0644)
	mnt := u.Mount(t)
	u.requirePassthrough(t)
	opens := func() (pt, cached uint64) {
		s := u.root.Stats()
		return s.PassthroughOpens, s.CachedOpens
	}
	// close(2) does not wait for FUSE_RELEASE, and until the daemon has it the open still counts: the next
	// open would join its mode. Each step waits for the releases of its own opens.
	settle := func(wantReleases uint64) {
		t.Helper()
		for i := 0; u.root.Stats().Requests["release"] < wantReleases; i++ {
			if i == 500 {
				t.Fatalf("the kernel did not release the files within 5 s")
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	expect := func(what string, wantPT, wantCached uint64, do func()) {
		t.Helper()
		pt0, c0 := opens()
		rel0 := u.root.Stats().Requests["release"]
		do()
		pt1, c1 := opens()
		settle(rel0 + (pt1 - pt0) + (c1 - c0))
		if pt1-pt0 != wantPT || c1-c0 != wantCached {
			t.Errorf("%s: %d passthrough and %d cached opens, want %d and %d", what, pt1-pt0, c1-c0, wantPT, wantCached)
		}
	}
	read := func(name string) []byte {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(mnt, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	expect("reading the small file", 0, 1, func() { read("small") })
	expect("reading the large file", 1, 0, func() { read("large") })

	// The small file's pages are cached now. A writer (passthrough) changes it behind the page cache.
	newSmall := bytes.Repeat([]byte("n"), 4096)
	expect("writing the small file", 1, 0, func() {
		if err := os.WriteFile(filepath.Join(mnt, "small"), newSmall, 0); err != nil {
			t.Fatal(err)
		}
	})
	expect("reading it again", 0, 1, func() {
		if got := read("small"); !bytes.Equal(got, newSmall) {
			t.Errorf("a read after the passthrough writer sees %q...", got[:8])
		}
	})
	// The mapping is made in a child process: a page fault on this process's own cached FUSE file can deadlock
	// the Go runtime (see client_test.go).
	if m := mmapInChild(t, filepath.Join(mnt, "small"), 4096, ""); m[0] != 'n' {
		t.Errorf("a mapping after the passthrough writer reads %q", m[0])
	}
	f, err := os.Open(filepath.Join(mnt, "small"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	// While a cached open is live, a writer joins it in cached mode, and its writes show in the reader's pages.
	expect("writing while a cached reader is open", 0, 1, func() {
		if err := os.WriteFile(filepath.Join(mnt, "small"), small, 0); err != nil {
			t.Fatal(err)
		}
	})
	buf := make([]byte, 4096)
	if _, err := f.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, small) {
		t.Errorf("the cached reader reads %q... after a cached write, %v", buf[:8], err)
	}
}

// TestPassthroughNodeTakesItsCopy: once the passthrough opens of a node's lower file are all released, an open
// after a copy-up stays on the node (no stale-node retry): go-fuse has dropped the node's backing file by then,
// which serialOpens guarantees (before it, go-fuse dropped it only after the daemon's Release returned, and an open
// in that window was handed the lower file: EIO for a writer, which TestStress hit under load).
func TestPassthroughNodeTakesItsCopy(t *testing.T) {
	u, mnt := passthroughUnion(t)
	data := bytes.Repeat([]byte("lower "), 400000)
	testutil.WriteFile(t, filepath.Join(u.Lower(0), "big"), data, 0644)
	p := filepath.Join(mnt, "big")
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("reading the lower file: %v", err)
	}
	for i := 0; u.root.Stats().Requests["release"] < 1; i++ {
		if i == 500 {
			t.Fatal("no RELEASE within 5 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	before := u.root.Stats().StaleRetries
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("UPPER"), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if got := u.root.Stats().StaleRetries - before; got != 0 {
		t.Errorf("%d stale retries for the first open after the copy-up, want 0 (no passthrough open was left)", got)
	}
	if got, _ := os.ReadFile(p); !bytes.HasPrefix(got, []byte("UPPER lower ")) {
		t.Errorf("after the write the file starts %q", got[:12])
	}
}
