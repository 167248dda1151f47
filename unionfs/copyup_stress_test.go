package unionfs

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// TestConcurrentCopyUpOfLargeFile has ten writers open one 100 MiB lower file for writing at the same moment,
// eight goroutines and two dd processes, each writing its own MiB: exactly one copy-up happens, no writer gets
// an error, every write lands and every other byte is the lower file's.
func TestConcurrentCopyUpOfLargeFile(t *testing.T) {
	const size, writers = 100 << 20, 10
	u := newTestUnion(t, 1)
	lower := make([]byte, size)
	for i := range lower {
		lower[i] = byte(i % 251)
	}
	if err := os.WriteFile(filepath.Join(u.Lower(0), "big"), lower, 0644); err != nil {
		t.Fatal(err)
	}
	mnt := u.Mount(t)
	p := filepath.Join(mnt, "big")
	before := u.root.Stats()

	region := func(i int) (int64, []byte) {
		return int64(i) * (size / writers), bytes.Repeat([]byte{byte('A' + i)}, 1<<20)
	}
	start := make(chan struct{})
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for i := 0; i < writers; i++ {
		off, data := region(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			if i >= 8 { // two writers are separate processes
				cmd := exec.Command("dd", "of="+p, "bs=1M", "count=1", "iflag=fullblock", "conv=notrunc", "status=none",
					fmt.Sprintf("seek=%d", off>>20))
				cmd.Stdin = bytes.NewReader(data)
				if out, err := cmd.CombinedOutput(); err != nil {
					errs <- fmt.Errorf("dd writer %d: %v: %s", i, err, out)
				}
				return
			}
			f, err := os.OpenFile(p, os.O_WRONLY, 0)
			if err != nil {
				errs <- fmt.Errorf("writer %d: open: %w", i, err)
				return
			}
			_, err = f.WriteAt(data, off)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				errs <- fmt.Errorf("writer %d: %w", i, err)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	want := append([]byte(nil), lower...)
	for i := 0; i < writers; i++ {
		off, data := region(i)
		copy(want[off:], data)
	}
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		for i := 0; i < len(want); i += 1 << 20 {
			if i >= len(got) || !bytes.Equal(got[i:min(i+1<<20, len(got))], want[i:i+1<<20]) {
				j := i
				for j < len(got) && got[j] == want[j] {
					j++
				}
				t.Errorf("the file (%d bytes) differs from the expected at byte %d: %q... want %q..., lower %q...",
					len(got), j, got[j:j+8], want[j:j+8], lower[j:j+8])
				break
			}
		}
	}
	after := u.root.Stats()
	if n := after.CopyUps - before.CopyUps; n != 1 {
		t.Errorf("%d copy-ups for ten writers of one file, want 1", n)
	}
	if n := after.CopyUpBytes - before.CopyUpBytes; n != size {
		t.Errorf("the copy-up copied %d bytes, want %d", n, size)
	}
	if fresh, _ := os.ReadFile(filepath.Join(u.Lower(0), "big")); !bytes.Equal(fresh, lower) {
		t.Error("the lower file changed")
	}
}
