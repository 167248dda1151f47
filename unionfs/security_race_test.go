package unionfs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// Symlink races (gocryptfs's symlink_race, aimed at a root daemon): an unprivileged user keeps swapping a
// directory and a file of the union between the real object and a symlink to a root-owned place outside the
// layers, while other threads of the same user create, write, chmod, chown, set xattrs, make directories,
// rename, link, truncate and trigger copy-ups through that name. The daemon runs as root and reaches layers only
// through descriptors with *at calls that never follow symlinks, so whatever the interleaving, the secret place
// must stay exactly as it was (content, owners, modes, xattrs, times, no new names), nothing else beside the
// layers may appear, and the lower layer must not change.

// raceDuration is how long each variant races; LTSP_UNIONFS_RACE_SECONDS lengthens it (make stress).
func raceDuration() time.Duration {
	return time.Duration(envInt("LTSP_UNIONFS_RACE_SECONDS", 3)) * time.Second
}

func TestSecuritySymlinkRaceInUnion(t *testing.T) {
	testSymlinkRace(t, false)
}

// TestSecuritySymlinkRaceInUpper swaps the names directly in the upper layer (which a user cannot reach on a real
// system: here the test hands them an upper directory of their own), behind the daemon's back.
func TestSecuritySymlinkRaceInUpper(t *testing.T) {
	testSymlinkRace(t, true)
}

func testSymlinkRace(t *testing.T, inUpper bool) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	reachable(t, u.dir)
	secret := filepath.Join(u.dir, "secret")
	makeSecret(t, secret)
	lower := u.Lower(0)
	// play/d (a directory) and play/f (a file) are what the attacker swaps; play/d holds many lower files the
	// user owns, each touched once so that copy-ups keep happening during the race.
	const lowerFiles = 2000
	for _, d := range []string{"play", "play/d", "play/d/sub"} {
		must(t, os.Mkdir(filepath.Join(lower, d), 0755))
	}
	for i := 0; i < lowerFiles; i++ {
		must(t, os.WriteFile(filepath.Join(lower, "play/d", fmt.Sprintf("l%d", i)), []byte("lower data\n"), 0644))
	}
	must(t, os.WriteFile(filepath.Join(lower, "play/f"), []byte("lower f\n"), 0644))
	must(t, filepath.Walk(filepath.Join(lower, "play"), func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, attacker, attacker)
	}))
	lowerBefore := mustSnapshot(t, lower)
	secretBefore := mustSnapshot(t, secret)
	outsideBefore := dirNames(t, u.dir)
	mnt := u.Mount(t)
	play := filepath.Join(mnt, "play")
	swapRoot := play
	if inUpper {
		// Copy play, play/d and play/f up, so that the attacker has upper objects to swap.
		asUserThread(t, attacker, attacker, func() {
			if err := os.WriteFile(filepath.Join(play, "d", "sub", "init"), nil, 0644); err != nil {
				t.Error(err)
			}
			if err := os.Chmod(filepath.Join(play, "f"), 0644); err != nil {
				t.Error(err)
			}
		})
		swapRoot = filepath.Join(u.Upper(), "play")
	}

	var stop atomic.Bool
	var swaps, ops, failed atomic.Int64
	var wg sync.WaitGroup
	var mu sync.Mutex
	unexpected := map[string]int{}
	note := func(op string, err error) {
		ops.Add(1)
		if err == nil {
			return
		}
		failed.Add(1)
		var errno syscall.Errno
		if !errors.As(err, &errno) {
			mu.Lock()
			unexpected[op+": "+err.Error()]++
			mu.Unlock()
			return
		}
		switch {
		case errno == syscall.ENXIO && inUpper && strings.HasPrefix(op, "open f"):
			// A non-blocking open for writing of a FIFO without a reader.
		case errno == syscall.ENOENT, errno == syscall.EACCES, errno == syscall.EPERM, errno == syscall.ENOTDIR,
			errno == syscall.ELOOP, errno == syscall.EEXIST, errno == syscall.EAGAIN, errno == syscall.ESTALE,
			errno == syscall.EISDIR, errno == syscall.EOPNOTSUPP, errno == syscall.ENOTEMPTY, errno == syscall.EXDEV,
			errno == syscall.ENODATA, errno == syscall.EINVAL, errno == syscall.EPIPE:
			// What a name that is a symlink to a place the user cannot write, a FIFO (truncate: EINVAL; a
			// write after the releaser closed its end: EPIPE), or a racing rename explains. Not ENXIO: that
			// was the daemon opening an overlay whiteout left by a rename.
		default:
			mu.Lock()
			unexpected[op+": "+errno.Error()]++
			mu.Unlock()
		}
	}
	// The attacker: the directory d and the file f alternate between the real object and a symlink to the
	// secret place (the directory itself, and the secret file).
	swap := func(name, target string) {
		defer wg.Done()
		asUserThread(t, attacker, attacker, func() {
			real := filepath.Join(swapRoot, name)
			aside := real + ".real"
			for i := 0; !stop.Load(); i++ {
				if err := unix.Rename(real, aside); err != nil {
					continue
				}
				// Mostly a symlink to the secret place; every third time a FIFO, which a daemon that opened
				// whatever it finds under a name would wait on for ever. FIFOs are moved aside, not removed, so
				// that an open waiting on one can be released.
				if i%3 == 2 {
					if unix.Mkfifo(real, 0666) == nil {
						time.Sleep(time.Microsecond)
						unix.Rename(real, filepath.Join(swapRoot, fmt.Sprintf("fifo.%s.%d", name, i)))
					}
				} else if unix.Symlink(target, real) == nil {
					time.Sleep(time.Microsecond)
					unix.Unlink(real)
				}
				unix.Rename(aside, real)
				swaps.Add(1)
			}
		})
	}
	wg.Add(2)
	go swap("d", secret)
	go swap("f", filepath.Join(secret, "file"))

	// The victims: the same user, acting on paths through the swapped names. Through the union, their opens
	// block on a FIFO until the releaser below provides a peer. A FIFO swapped in directly in the upper layer
	// may leave the kernel's cached name for it behind, and an open blocked on that could never be released: there
	// the opens do not block (TestSecurityOpenOfSwappedName covers a daemon blocking on such a FIFO).
	fifoFlag := 0
	if inUpper {
		fifoFlag = unix.O_NONBLOCK
	}
	victim := func(w int) {
		defer wg.Done()
		asUserThread(t, attacker, attacker, func() {
			d := filepath.Join(play, "d")
			f := filepath.Join(play, "f")
			for i := w; !stop.Load(); i += 4 {
				n := fmt.Sprintf("n%d-%d", w, i)
				l := filepath.Join(d, fmt.Sprintf("l%d", i%lowerFiles))
				fd, err := unix.Open(filepath.Join(d, n), unix.O_CREAT|unix.O_WRONLY|unix.O_EXCL, 0644)
				note("create", err)
				if err == nil {
					_, err = unix.Write(fd, []byte("attacker data"))
					note("write", err)
					unix.Close(fd)
				}
				fd, err = unix.Open(l, unix.O_WRONLY|unix.O_APPEND, 0)
				note("open lower for writing", err)
				if err == nil {
					_, err = unix.Write(fd, []byte("appended"))
					note("write copied-up", err)
					unix.Close(fd)
				}
				note("chmod", unix.Chmod(filepath.Join(d, fmt.Sprintf("l%d", (i+1)%lowerFiles)), 0600))
				note("chown", unix.Chown(filepath.Join(d, fmt.Sprintf("l%d", (i+2)%lowerFiles)), attacker, attacker))
				note("setxattr", unix.Setxattr(filepath.Join(d, fmt.Sprintf("l%d", (i+3)%lowerFiles)), "user.owned", []byte("x"), 0))
				note("truncate", unix.Truncate(filepath.Join(d, fmt.Sprintf("l%d", (i+5)%lowerFiles)), 3))
				note("mkdir", unix.Mkdir(filepath.Join(d, n+".dir"), 0755))
				note("mkdir deep", unix.Mkdir(filepath.Join(d, "sub", n), 0755))
				note("rename", unix.Rename(filepath.Join(d, n), filepath.Join(d, "sub", n+".moved")))
				note("link", unix.Link(filepath.Join(d, "sub", n+".moved"), filepath.Join(d, n+".link")))
				note("symlink", unix.Symlink("file", filepath.Join(d, n+".sym")))
				note("mkfifo", unix.Mkfifo(filepath.Join(d, n+".fifo"), 0644))
				// Through the swapped file name.
				note("chmod f", unix.Chmod(f, 0600|uint32(i%2)*044))
				note("chown f", unix.Lchown(f, attacker, attacker))
				note("setxattr f", unix.Lsetxattr(f, "user.f", []byte(n), 0))
				note("removexattr f", unix.Lremovexattr(f, "user.f"))
				note("truncate f", unix.Truncate(f, int64(i%7)))
				fd, err = unix.Open(f, unix.O_WRONLY|unix.O_NOFOLLOW|fifoFlag, 0)
				note("open f for writing", err)
				if err == nil {
					_, err = unix.Write(fd, []byte("f"))
					unix.Close(fd)
					note("write f", err)
				}
				fd, err = unix.Open(f, unix.O_RDONLY|fifoFlag, 0)
				if err == nil {
					buf := make([]byte, 64)
					k, err := unix.Read(fd, buf)
					unix.Close(fd)
					note("read f", err)
					if k > 0 && strings.Contains(string(buf[:k]), "secret") {
						mu.Lock()
						unexpected["read the secret file through the union"]++
						mu.Unlock()
					}
				}
				// Keep the directories small.
				for _, x := range []string{n + ".dir", "sub/" + n, "sub/" + n + ".moved", n + ".link", n + ".sym", n + ".fifo"} {
					p := filepath.Join(d, x)
					if unix.Unlink(p) == syscall.EISDIR {
						unix.Rmdir(p)
					}
				}
			}
		})
	}
	for w := 0; w < 3; w++ {
		wg.Add(1)
		go victim(w)
	}
	// Victims that open the FIFO (the kernel's own, on the union) wait for a peer: root keeps providing one,
	// through the union only, so that a daemon stuck on the upper FIFO stays stuck and shows.
	released, releaserDone := make(chan bool), make(chan bool)
	go func() {
		defer close(releaserDone)
		for {
			select {
			case <-released:
				return
			case <-time.After(time.Millisecond):
			}
			releaseFifos(play)
		}
	}()
	// At least raceDuration, and on until thousands of operations raced (the race detector slows everything),
	// but never more than five times as long.
	for start := time.Now(); time.Since(start) < 5*raceDuration(); {
		time.Sleep(100 * time.Millisecond)
		if time.Since(start) >= raceDuration() && ops.Load() >= 5000 && swaps.Load() >= 300 {
			break
		}
	}
	stop.Store(true)
	finished := make(chan bool)
	go func() {
		wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
	case <-time.After(5 * time.Second):
		buf := make([]byte, 4<<20)
		stacks := string(buf[:runtime.Stack(buf, true)])
		if strings.Contains(stacks, "unionfs.(*Node).Open(") {
			t.Errorf("the daemon is stuck opening a FIFO put under a file's name")
		} else {
			t.Errorf("operations through the swapped names are stuck:\n%s", stacks)
		}
		// Release the daemon: open the upper layer's FIFOs too.
	release:
		for i := 0; ; i++ {
			releaseFifos(filepath.Join(u.Upper(), "play"))
			releaseFifos(play)
			select {
			case <-finished:
				break release
			case <-time.After(10 * time.Millisecond):
			}
			if i == 1000 {
				t.Fatal("the stuck operations cannot be released")
			}
		}
	}
	close(released)
	<-releaserDone // it must hold nothing open on the mount when that is unmounted
	t.Logf("%d swaps, %d operations through the swapped names (%d failed as expected)", swaps.Load(), ops.Load(), failed.Load())
	if swaps.Load() < 50 || ops.Load() < 1000 {
		t.Errorf("too little racing: %d swaps, %d operations", swaps.Load(), ops.Load())
	}
	var keys []string
	for k, v := range unexpected {
		keys = append(keys, fmt.Sprintf("%s (%d times)", k, v))
	}
	sort.Strings(keys)
	for _, k := range keys {
		t.Errorf("unexpected: %s", k)
	}
	u.Unmount(t)
	checkUnchanged(t, "the secret place", secret, secretBefore)
	checkUnchanged(t, "the lower layer", lower, lowerBefore)
	if after := dirNames(t, u.dir); fmt.Sprint(sortedCopy(after)) != fmt.Sprint(sortedCopy(outsideBefore)) {
		t.Errorf("names beside the layers changed: %v, were %v", after, outsideBefore)
	}
	// Every object in the upper layer belongs to the attacker or is a directory the daemon made for the union
	// (the upper root is root's).
	filepath.Walk(u.Upper(), func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == u.Upper() {
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		if st.Mode&unix.S_IFMT == unix.S_IFCHR && st.Rdev == 0 {
			return nil // an overlay whiteout, the daemon's own
		}
		if st.Uid != attacker || st.Gid != attacker {
			t.Errorf("upper %s belongs to %d:%d", p, st.Uid, st.Gid)
		}
		return nil
	})
}

// releaseFifos opens every FIFO in dir for reading and writing, which releases whoever waits to open one.
func releaseFifos(dir string) {
	names, _ := os.ReadDir(dir)
	for _, e := range names {
		if e.Type()&os.ModeNamedPipe != 0 || e.Name() == "f" || e.Name() == "d" {
			if fd, err := unix.Open(filepath.Join(dir, e.Name()), unix.O_RDWR|unix.O_NONBLOCK|unix.O_NOFOLLOW, 0); err == nil {
				unix.Close(fd)
			}
		}
	}
}

func sortedCopy(s []string) []string {
	c := append([]string(nil), s...)
	sort.Strings(c)
	return c
}

// TestSecurityOpenOfSwappedName replaces, directly in the upper layer, a file the kernel knows by a FIFO, and
// (separately) by an overlay whiteout, the 0/0 device a racing rename leaves under a lower file's old name; then
// a user opens the cached name through the union. The daemon must not open what it finds there (a FIFO open
// without a peer blocks the daemon's thread for good; a device open acts on the device as root): the open is
// answered ESTALE, the kernel looks the name up again and gets the FIFO itself. Before the daemon checked the
// type first, the FIFO open hung and the whiteout open failed with ENXIO (seen in TestSecuritySymlinkRaceInUnion).
func TestSecurityOpenOfSwappedName(t *testing.T) {
	testutil.RequireRoot(t)
	u := newTestUnion(t, 1)
	reachable(t, u.dir)
	for _, kind := range []string{"fifo", "whiteout"} {
		must(t, os.WriteFile(filepath.Join(u.Lower(0), kind), []byte("file"), 0666))
	}
	mnt := u.Mount(t)
	for _, kind := range []string{"fifo", "whiteout"} {
		f := filepath.Join(mnt, kind)
		wf, err := os.OpenFile(f, os.O_WRONLY|os.O_APPEND, 0)
		must(t, err)
		_, err = wf.WriteString("copied up")
		must(t, err)
		must(t, wf.Close())
		var st unix.Stat_t
		must(t, unix.Stat(f, &st)) // the kernel caches the regular file's attributes
		up := filepath.Join(u.Upper(), kind)
		must(t, os.Rename(up, up+".aside"))
		if kind == "fifo" {
			must(t, unix.Mkfifo(up, 0666))
		} else {
			must(t, unix.Mknod(up, unix.S_IFCHR|0666, 0))
		}
		must(t, os.Chmod(up, 0666))
		done := make(chan error, 1)
		go asUserThread(t, attacker, attacker, func() {
			// Read-only: an open for writing would make the daemon check the upper object first (copy-up).
			fd, err := unix.Open(f, unix.O_RDONLY, 0)
			if err == nil {
				unix.Close(fd)
			}
			done <- err
		})
		err = nil
		select {
		case err = <-done:
		case <-time.After(time.Second):
			// Blocked: in the kernel's FIFO (fine: there is no reader), or in the daemon's open of what replaced
			// the file? The daemon runs in this process: its goroutines show.
			buf := make([]byte, 1<<20)
			stacks := string(buf[:runtime.Stack(buf, true)])
			if strings.Contains(stacks, "unionfs.(*Node).Open(") {
				t.Errorf("%s: the daemon is stuck opening what replaced the file", kind)
			}
			// A writer of the upper FIFO releases the daemon; one of the union's FIFO a reader the kernel blocked.
			var fds []int
			finished := false
			for i := 0; !finished && i < 200; i++ {
				for _, p := range []string{up, f} {
					if fd, err := unix.Open(p, unix.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
						fds = append(fds, fd)
					}
				}
				select {
				case err = <-done:
					finished = true
				case <-time.After(50 * time.Millisecond):
				}
			}
			for _, fd := range fds {
				unix.Close(fd)
			}
			if !finished {
				t.Fatalf("%s: the open through the union cannot be released", kind)
			}
		}
		t.Logf("%s: open: %v", kind, err)
		switch {
		case kind == "fifo" && err != nil && err != syscall.ENXIO:
			t.Errorf("fifo: open: %v", err)
		case kind == "whiteout" && err != syscall.ENOENT:
			t.Errorf("whiteout: open: %v, want ENOENT (the name is whited out now)", err)
		}
	}
}
