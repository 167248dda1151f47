package unionfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// raceTarget is one filesystem the open-race tests run on: the union or kernel overlayfs over the same lowers.
type raceTarget struct {
	name string
	mnt  string
}

// raceTargets mounts the union u and kernel overlayfs over copies of the same lower content (made by fill) and
// returns both. overlayfs is the reference: what it serves without an error, the union must too.
func raceTargets(t *testing.T, u *testUnion, fill func(lower string)) []raceTarget {
	t.Helper()
	fill(u.Lower(0))
	union := u.Mount(t)
	dir := t.TempDir()
	lower, upper, work, ovl := filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work"),
		filepath.Join(dir, "mnt")
	for _, d := range []string{lower, upper, work, ovl} {
		if err := os.Mkdir(d, 0755); err != nil {
			t.Fatal(err)
		}
	}
	fill(lower)
	testutil.MountOverlay(t, []string{lower}, upper, work, ovl)
	return []raceTarget{{"overlayfs", ovl}, {"ltsp-unionfs", union}}
}

// errorCounts counts errors by message, safe for concurrent use.
type errorCounts struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *errorCounts) add(op string, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[op+": "+err.Error()]++
}

func (c *errorCounts) String() string {
	var out []string
	for k, v := range c.m {
		out = append(out, fmt.Sprintf("%s (%d times)", k, v))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

// TestOpenModesRace opens one file over and over from several goroutines at once, read-only (which the union
// serves through the page cache for a small file) and for writing (passthrough), as the lease and fanotify
// scenarios of stress-ng do. The kernel allows one I/O mode and one backing file per inode at a time, and a
// release of a cached open used to drop go-fuse's backing file under a passthrough open made meanwhile: opens
// then failed with EIO until the file was closed everywhere (see serialOpens). Nothing may fail, on the union as
// on overlayfs, for a file made in the union and for a lower file, which the first writer copies up.
func TestOpenModesRace(t *testing.T) {
	u := noUnexpectedReplies(t, newTestUnion(t, 1))
	targets := raceTargets(t, u, func(lower string) {
		if err := os.WriteFile(filepath.Join(lower, "lowerfile"), []byte("lower data"), 0644); err != nil {
			t.Fatal(err)
		}
	})
	// Each goroutine alternates a read-only and a writing open: the RELEASE of one and the OPEN of the next are
	// in the daemon at the same time, which is where the modes used to cross.
	const rounds, goroutines = 10000, 3
	pairs := [][2]int{{unix.O_RDONLY, unix.O_WRONLY}, {unix.O_RDONLY, unix.O_RDWR | unix.O_APPEND}}
	for _, tg := range targets {
		if err := os.WriteFile(filepath.Join(tg.mnt, "upperfile"), []byte("upper data"), 0644); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"upperfile", "lowerfile"} {
			path := filepath.Join(tg.mnt, name)
			var errs errorCounts
			var wg sync.WaitGroup
			for g := 0; g < goroutines; g++ {
				wg.Add(1)
				go func(pair [2]int) {
					defer wg.Done()
					buf := make([]byte, 16)
					for i := 0; i < rounds; i++ {
						mode := pair[i%2]
						fd, err := unix.Open(path, mode|unix.O_CLOEXEC, 0)
						if err != nil {
							errs.add(fmt.Sprintf("open(%#o)", mode), err)
							continue
						}
						if mode == unix.O_RDONLY {
							if _, err := unix.Pread(fd, buf, 0); err != nil {
								errs.add("read", err)
							}
						}
						unix.Close(fd)
					}
				}(pairs[g%len(pairs)])
			}
			wg.Wait()
			if len(errs.m) > 0 {
				t.Errorf("%s, %s: %s", tg.name, name, &errs)
			}
		}
	}
}

// TestReopenRacingRename reopens a file through an O_PATH descriptor (/proc/self/fd, as fanotify hands out
// descriptors of files it reports, and as programs reopen what they hold) while the file is renamed. Such an
// open reaches the filesystem without a path lookup, so the kernel cannot look a name up again and retry: a
// request that looks for the file under the name it had a moment ago must still find it. Each round renames a
// new file, as its first rename is where the node's name lags behind the layer.
func TestReopenRacingRename(t *testing.T) {
	u := noUnexpectedReplies(t, newTestUnion(t, 1))
	targets := raceTargets(t, u, func(string) {})
	const rounds = 300
	for _, tg := range targets {
		var errs errorCounts
		for i := 0; i < rounds; i++ {
			a, b := filepath.Join(tg.mnt, fmt.Sprintf("a%d", i)), filepath.Join(tg.mnt, fmt.Sprintf("b%d", i))
			if err := os.WriteFile(a, []byte("data"), 0644); err != nil {
				t.Fatal(err)
			}
			pfd, err := unix.Open(a, unix.O_PATH|unix.O_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan struct{})
			go func() {
				defer close(done)
				if err := os.Rename(a, b); err != nil {
					errs.add("rename", err)
				}
			}()
			for moving := true; moving; {
				select {
				case <-done:
					moving = false
				default:
				}
				fd, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", pfd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
				if err != nil {
					errs.add("reopen", err)
					continue
				}
				var st unix.Stat_t
				if err := unix.Fstat(fd, &st); err != nil {
					errs.add("fstat", err)
				}
				if err := unix.Fchmod(fd, 0640); err != nil {
					errs.add("fchmod", err)
				}
				unix.Close(fd)
			}
			unix.Close(pfd)
			if err := os.Remove(b); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		}
		if len(errs.m) > 0 {
			t.Errorf("%s: %s", tg.name, &errs)
		}
	}
}

// TestStaleRetryUnderEviction: a lower file held open by a passthrough reader is opened for writing (a copy-up the
// reader's inode cannot follow: the one open that relies on the kernel's ESTALE retry, see doc.go) and for
// reading by other goroutines, while another goroutine drops the kernel's caches all the time. Every open must
// succeed, for every file: the retry must always land on the new node, also when the kernel has just forgotten
// names and nodes.
func TestStaleRetryUnderEviction(t *testing.T) {
	testutil.RequireRoot(t)
	u, mnt := passthroughUnion(t)
	noUnexpectedReplies(t, u)
	const files = 150
	for i := 0; i < files; i++ {
		if err := os.WriteFile(filepath.Join(u.Lower(0), fmt.Sprintf("f%d", i)), []byte("lower data"), 0644); err != nil {
			t.Fatal(err)
		}
	}
	stop := make(chan struct{})
	var evictor sync.WaitGroup
	evictor.Add(1)
	go func() {
		defer evictor.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0)
		}
	}()
	before := u.root.Stats().StaleRetries
	var errs errorCounts
	for i := 0; i < files; i++ {
		path := filepath.Join(mnt, fmt.Sprintf("f%d", i))
		reader, err := os.Open(path)
		if err != nil {
			errs.add("open of the reader", err)
			continue
		}
		var wg sync.WaitGroup
		for _, mode := range []int{unix.O_WRONLY, unix.O_RDONLY, unix.O_RDWR} {
			wg.Add(1)
			go func(mode int) {
				defer wg.Done()
				fd, err := unix.Open(path, mode|unix.O_CLOEXEC, 0)
				if err != nil {
					errs.add(fmt.Sprintf("open(%#o)", mode), err)
					return
				}
				unix.Close(fd)
			}(mode)
		}
		wg.Wait()
		buf := make([]byte, 10)
		if _, err := reader.ReadAt(buf, 0); err != nil || string(buf) != "lower data" {
			errs.add("read of the reader", fmt.Errorf("%q, %v", buf, err))
		}
		reader.Close()
	}
	close(stop)
	evictor.Wait()
	if len(errs.m) > 0 {
		t.Errorf("%s", &errs)
	}
	if got := u.root.Stats().StaleRetries - before; got < files {
		t.Errorf("%d stale-node retries for %d files: the test did not exercise the retry", got, files)
	}
}

// TestRegisterPublishesModeFirst: registerLocked decides a file's mode (passthrough or cached) before it puts the file
// among the node's handles, where repointHandles, run by copy-ups that do not take openMu (Setattr, Link,
// Rename), reads the mode under the node's mu only. The race detector reported the field written after the
// file was published.
func TestRegisterPublishesModeFirst(t *testing.T) {
	r := &Root{}
	r.root = r
	r.passthrough.Store(true)
	up := &Layer{Index: 0}
	n := &Node{root: r, fileState: fileState{layer: up, anon: -1}}
	var wg sync.WaitGroup
	for i := 0; i < 200; i++ {
		f := &file{node: n, fd: -1}
		wg.Add(2)
		go func() {
			defer wg.Done()
			n.openMu.Lock()
			n.registerLocked(f, devIno{}, 1, 0)
			n.openMu.Unlock()
		}()
		go func() {
			defer wg.Done()
			n.repointHandles(up)
		}()
	}
	wg.Wait()
}
