package main

import (
	"crypto/sha256"
	"fmt"
	"hash/fnv"
	"io/fs"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// TestCrashKill9 kills the daemon (SIGKILL) at random moments while other goroutines copy lower files up,
// replace files atomically (write a temporary file, fsync, rename over) and rename lower directories back and
// forth; then it lazily unmounts the dead mount, mounts a fresh daemon on the same upper layer and checks:
// every file is its old or its new version, never torn; every directory is at its old or new name, never both
// or neither, with its content; what was renamed into place (after fsync) before the kill is there; no
// temporary object of the daemon is visible. Seeded: LTSP_UNIONFS_CRASH_SEED repeats a run's kill delays (what
// the daemon was doing at each kill also depends on timing). Each marker
// format: overlay renames directories with a redirect, aufs and unionfs-fuse copy their subtrees.
func TestCrashKill9(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFUSE(t)
	seed := time.Now().UnixNano()
	if s := os.Getenv("LTSP_UNIONFS_CRASH_SEED"); s != "" {
		fmt.Sscan(s, &seed)
	}
	t.Logf("seed %d (LTSP_UNIONFS_CRASH_SEED=%d repeats this run's kill delays)", seed, seed)
	rng := rand.New(rand.NewSource(seed))
	for _, f := range []struct {
		format     string
		iterations int
	}{{"overlay", 10}, {"aufs", 4}, {"unionfs-fuse", 4}} {
		t.Run(f.format, func(t *testing.T) { crashKill9(t, f.format, f.iterations, rng) })
	}
}

// crashKill9 is TestCrashKill9 for one marker format.
func crashKill9(t *testing.T, format string, iterations int, rng *rand.Rand) {
	const (
		copyFiles = 6       // lower files copied up per iteration
		copySize  = 2 << 20 // their size
		replFiles = 4       // files replaced atomically, over and over
		replSize  = 256 << 10
		dirs      = 3 // lower directories renamed per iteration
	)
	l := newLayout(t)
	for it := 0; it < iterations; it++ {
		for k := 0; k < copyFiles; k++ {
			writeVersion(t, l.lower, fmt.Sprintf("i%d/f%d", it, k), 0, copySize)
		}
		for k := 0; k < dirs; k++ {
			for _, f := range []string{"a", "sub/b"} {
				writeVersion(t, l.lower, fmt.Sprintf("i%d/d%d/%s", it, k, f), 0, 4096)
			}
		}
	}
	for k := 0; k < replFiles; k++ {
		writeVersion(t, l.lower, fmt.Sprintf("r%d", k), 0, replSize)
	}

	// The model: for each replaced file its committed version (renamed into place) and the one in flight; for
	// each directory its committed name and the one in flight.
	committed := make([]int, replFiles)
	inflight := make([]int, replFiles)
	dirAt := map[string]string{}   // lower directory -> committed name
	dirNext := map[string]string{} // lower directory -> name a rename in flight gives it
	var mu sync.Mutex

	stats := map[string]int{}
	strays := 0 // temporary objects in the upper layer after the last kill
	for it := 0; it < iterations; it++ {
		cmd := startDaemon(t, l, "-o", "whiteout="+format)
		mnt := l.mnt
		stop := make(chan struct{})
		var wg sync.WaitGroup
		var opsDone [3]int
		// Copy-ups: open each of this iteration's lower files for writing (a full data copy), then set an
		// xattr on it.
		wg.Add(3)
		go func() {
			defer wg.Done()
			for k := 0; k < copyFiles; k++ {
				p := filepath.Join(mnt, fmt.Sprintf("i%d/f%d", it, k))
				f, err := os.OpenFile(p, os.O_RDWR, 0)
				if err != nil {
					return
				}
				f.Close()
				if unix.Setxattr(p, "user.crash", []byte("x"), 0) != nil {
					return
				}
				opsDone[0]++
			}
		}()
		// Atomic replacements.
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				k := n % replFiles
				mu.Lock()
				v := committed[k] + 1
				inflight[k] = v
				mu.Unlock()
				name := fmt.Sprintf("r%d", k)
				tmp := filepath.Join(mnt, name+".tmp")
				if err := writeFileSync(tmp, versionData(name, v, replSize)); err != nil {
					return
				}
				if err := os.Rename(tmp, filepath.Join(mnt, name)); err != nil {
					return
				}
				mu.Lock()
				committed[k] = v
				mu.Unlock()
				opsDone[1]++
			}
		}()
		// Directory renames, back and forth.
		go func() {
			defer wg.Done()
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				d := fmt.Sprintf("i%d/d%d", it, n%dirs)
				mu.Lock()
				cur := dirAt[d]
				if cur == "" {
					cur = d
				}
				next := d + ".moved"
				if cur == next {
					next = d
				}
				dirNext[d] = next
				mu.Unlock()
				if err := os.Rename(filepath.Join(mnt, cur), filepath.Join(mnt, next)); err != nil {
					return
				}
				mu.Lock()
				dirAt[d] = next
				mu.Unlock()
				opsDone[2]++
			}
		}()
		time.Sleep(time.Duration(2+rng.Intn(80)) * time.Millisecond)
		cmd.Process.Kill()
		cmd.Wait()
		close(stop)
		waitOrFail(t, &wg, 10*time.Second, "operations on the killed daemon's mount")
		stats["copy-ups"] += opsDone[0]
		if opsDone[0] < copyFiles {
			stats["kills during copy-ups"]++
		}
		stats["replacements"] += opsDone[1]
		stats["dir renames"] += opsDone[2]
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Fatalf("umount -l of the dead mount: %v", err)
		}

		// A fresh daemon on the same upper layer.
		cmd = startDaemon(t, l, "-o", "whiteout="+format)
		for k := 0; k < replFiles; k++ {
			name := fmt.Sprintf("r%d", k)
			v, err := readVersion(filepath.Join(mnt, name), name, replSize)
			switch {
			case err != nil:
				t.Errorf("iteration %d: %s: %v", it, name, err)
			case v != committed[k] && v != inflight[k]:
				t.Errorf("iteration %d: %s is version %d, want %d (committed) or %d (in flight)", it, name, v,
					committed[k], inflight[k])
			default:
				committed[k], inflight[k] = v, v
			}
		}
		for i := 0; i <= it; i++ {
			for k := 0; k < copyFiles; k++ {
				name := fmt.Sprintf("i%d/f%d", i, k)
				if v, err := readVersion(filepath.Join(mnt, name), name, copySize); err != nil || v != 0 {
					t.Errorf("iteration %d: copied-up %s: version %d, %v; want the lower file's content", it, name, v, err)
				}
			}
			for k := 0; k < dirs; k++ {
				d := fmt.Sprintf("i%d/d%d", i, k)
				var at []string
				for _, name := range []string{d, d + ".moved"} {
					if _, err := os.Stat(filepath.Join(mnt, name)); err == nil {
						at = append(at, name)
					}
				}
				cur := dirAt[d]
				if cur == "" {
					cur = d
				}
				if len(at) != 1 || at[0] != cur && at[0] != dirNext[d] {
					t.Errorf("iteration %d: directory %s shows at %v, want one of %s (committed) or %s (in flight)",
						it, d, at, cur, dirNext[d])
					continue
				}
				dirAt[d] = at[0]
				for _, f := range []string{"a", "sub/b"} {
					name := d + "/" + f
					if v, err := readVersion(filepath.Join(mnt, at[0], f), name, 4096); err != nil || v != 0 {
						t.Errorf("iteration %d: %s/%s: version %d, %v", it, at[0], f, v, err)
					}
				}
			}
		}
		filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				t.Errorf("iteration %d: walking the fresh mount: %v", it, err)
				return nil
			}
			if whiteout.IsTempName(d.Name()) || whiteout.IsMarkerName(d.Name()) {
				t.Errorf("iteration %d: internal object visible: %s", it, p)
			}
			return nil
		})
		if it == iterations-1 {
			// Stray temporary objects are harmless: the directories holding them can be removed.
			strays = countTemps(l.upper)
			for i := 0; i < iterations; i++ {
				if err := os.RemoveAll(filepath.Join(mnt, fmt.Sprintf("i%d", i))); err != nil {
					t.Errorf("removing i%d, with stray temporary objects in the upper layer: %v", i, err)
				}
			}
			for i := 0; i < iterations; i++ {
				if left := countTemps(filepath.Join(l.upper, fmt.Sprintf("i%d", i))); left != 0 {
					t.Errorf("%d temporary objects left in i%d after removing it", left, i)
				}
			}
		}
		cmd.Process.Signal(syscall.SIGTERM)
		if err := waitExit(t, cmd, 10*time.Second); err != nil {
			t.Fatalf("iteration %d: the fresh daemon did not exit cleanly on SIGTERM: %v", it, err)
		}
	}
	t.Logf("kill -9, %s format: %d kills (%d while copy-ups were under way), then %d copy-ups, %d atomic replacements, %d directory renames completed before the kills; "+
		"%d stray temporary objects in the upper layer after the last kill (never visible, removed with their directories)", format, iterations,
		stats["kills during copy-ups"], stats["copy-ups"], stats["replacements"], stats["dir renames"], strays)
}

// versionData is the content of version v of a file: a header naming the file and version, then data that
// depends on both, with the name, version and block number stamped into every 4 KiB block, so a torn file (parts
// of two versions, or a block in the wrong place) never passes for one.
func versionData(name string, v, size int) []byte {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s@%d", name, v)
	seed := make([]byte, 8192)
	rand.New(rand.NewSource(int64(h.Sum64()))).Read(seed)
	b := make([]byte, size)
	for off := 0; off < size; off += len(seed) {
		copy(b[off:], seed)
	}
	for off := 0; off < size; off += 4096 {
		copy(b[off:], fmt.Sprintf("%s v%d\n block %d\n", name, v, off/4096))
	}
	return b
}

func writeVersion(t *testing.T, dir, name string, v, size int) {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, versionData(name, v, size), 0644); err != nil {
		t.Fatal(err)
	}
}

// readVersion returns which version of name the file p holds; an error if it is none (torn, short, unreadable).
func readVersion(p, name string, size int) (int, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return -1, err
	}
	var v int
	if _, err := fmt.Sscanf(string(data[:min(len(data), 200)]), name+" v%d\n", &v); err != nil {
		return -1, fmt.Errorf("no version header (%d bytes): torn or empty", len(data))
	}
	if sha256.Sum256(data) != versionSum(name, v, size) {
		return -1, fmt.Errorf("header says version %d, content differs: torn", v)
	}
	return v, nil
}

var (
	sumsMu sync.Mutex
	sums   = map[string][32]byte{}
)

// versionSum is the checksum of versionData(name, v, size), computed once.
func versionSum(name string, v, size int) [32]byte {
	key := fmt.Sprintf("%s@%d/%d", name, v, size)
	sumsMu.Lock()
	defer sumsMu.Unlock()
	if s, ok := sums[key]; ok {
		return s
	}
	s := sha256.Sum256(versionData(name, v, size))
	sums[key] = s
	return s
}

func writeFileSync(p string, data []byte) error {
	f, err := os.OpenFile(p, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0644)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if err2 := f.Close(); err == nil {
		err = err2
	}
	return err
}

// countTemps counts the daemon's temporary objects in the upper layer.
func countTemps(upper string) int {
	n := 0
	filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err == nil && whiteout.IsTempName(d.Name()) {
			n++
		}
		return nil
	})
	return n
}

func waitOrFail(t *testing.T, wg *sync.WaitGroup, d time.Duration, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

// startDaemon is startForeground with the daemon's stderr in a file and no exit delay, so that each of the
// many restarts costs little.
func startDaemon(t *testing.T, l layout, extra ...string) *exec.Cmd {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.CreateTemp(l.dir, "daemon-*.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(binary, append([]string{"-f", "ro=" + l.lower + ":" + l.lower2, "rw=" + l.upper, l.mnt}, extra...)...)
	// A race-enabled daemon sleeps a second at exit unless told not to (GORACE atexit_sleep_ms).
	cmd.Env = append(os.Environ(), notifyEnv+"=3", "GORACE=atexit_sleep_ms=0")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	buf := make([]byte, 256)
	n, _ := r.Read(buf)
	r.Close()
	if strings.TrimSpace(string(buf[:n])) != "OK" {
		cmd.Wait()
		log, _ := os.ReadFile(logf.Name())
		t.Fatalf("the daemon did not become ready: %q; stderr: %s", buf[:n], log)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		}
		if _, ok := testutil.MountAt(l.mnt); ok {
			testutil.Unmount(t, l.mnt)
		}
	})
	return cmd
}
