package unionfs

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/faultfs"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// Faults of the lower layer: a faultfs mount (a loopback FUSE filesystem that fails chosen operations) is the
// lower layer of a union served by the test process. The daemon must pass a clear errno to the caller for the
// object at fault and keep serving everything else.

// faultUnion is a union whose only lower layer is a faultfs mount of a directory the test fills.
type faultUnion struct {
	*testUnion
	ffs     *faultfs.FS
	backing string // the directory faultfs serves: the lower layer's real content
}

// newFaultUnion mounts faultfs over a directory that fill populates and a union over it.
func newFaultUnion(t *testing.T, fill func(dir string)) *faultUnion {
	t.Helper()
	u := newFaultUnionUnmounted(t, fill)
	u.mnt = u.Mount(t)
	return u
}

// newFaultUnionUnmounted is newFaultUnion without mounting the union. faultfs is mounted first so that its
// cleanup (which cuts its connection) runs after the union's unmount.
func newFaultUnionUnmounted(t *testing.T, fill func(dir string)) *faultUnion {
	t.Helper()
	testutil.RequireFUSE(t)
	testutil.RequireRoot(t)
	backing, fmnt := t.TempDir(), t.TempDir()
	fill(backing)
	ffs, err := faultfs.Mount(backing, fmnt)
	if err != nil {
		t.Fatalf("mounting faultfs: %v", err)
	}
	t.Cleanup(func() {
		if err := ffs.Unmount(); err != nil {
			t.Errorf("unmounting faultfs: %v", err)
		}
	})
	u := newTestUnion(t, 1)
	u.lowers[0] = fmnt
	return &faultUnion{testUnion: u, ffs: ffs, backing: backing}
}

// content returns deterministic pseudo-random data of n bytes for a name.
func content(name string, n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(int64(len(name))*7919 + int64(name[0]))).Read(b)
	copy(b, name)
	return b
}

// writeFiles writes each name with content(name, size) under dir.
func writeFiles(t *testing.T, dir string, size int, names ...string) {
	t.Helper()
	for _, n := range names {
		p := filepath.Join(dir, n)
		if err := os.MkdirAll(filepath.Dir(p), 0755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, content(n, size), 0644); err != nil {
			t.Fatal(err)
		}
	}
}

// errnoOf returns the errno in err, or 0.
func errnoOf(err error) syscall.Errno {
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return 0
}

// within runs fn and fails the test if it takes longer than d: no operation may hang on a fault.
func within(t *testing.T, d time.Duration, what string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() { defer close(done); fn() }()
	select {
	case <-done:
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

func names(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("readdir %s: %v", dir, err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Name())
	}
	sort.Strings(out)
	return out
}

// TestFaultLowerEIO: EIO from the lower layer on one file's lookup, getattr, open or read reaches the caller as
// EIO for that file only; the other files stay readable, the directory stays listable, and once the fault is
// gone the file is readable again (the error was not cached as the file's absence).
func TestFaultLowerEIO(t *testing.T) {
	const small, big = 8 << 10, 2 << 20 // cached reads through the daemon; passthrough reads by the kernel
	files := []string{"d/ok1", "d/ok2", "d/lbad", "d/gbad", "d/obad", "d/rbad", "d/rbig"}
	u := newFaultUnion(t, func(dir string) {
		writeFiles(t, dir, small, files[:6]...)
		writeFiles(t, dir, big, "d/rbig")
		writeFiles(t, dir, small, "bad/x", "good/y")
	})
	// As root the daemon reads each lower through a private clone of its mount (open_tree): that works on a
	// FUSE mount too, and the faults still come through it.
	if !u.root.layers.Lowers()[0].private {
		t.Error("the FUSE lower layer was not cloned")
	}
	u.ffs.AddRule(faultfs.Rule{Pattern: "d/lbad", Ops: faultfs.OpLookup, Errno: syscall.EIO})
	u.ffs.AddRule(faultfs.Rule{Pattern: "d/gbad", Ops: faultfs.OpGetattr, Errno: syscall.EIO})
	u.ffs.AddRule(faultfs.Rule{Pattern: "d/obad", Ops: faultfs.OpOpen, Errno: syscall.EIO})
	u.ffs.AddRule(faultfs.Rule{Pattern: "d/r*", Ops: faultfs.OpRead, Errno: syscall.EIO})
	u.ffs.AddRule(faultfs.Rule{Pattern: "bad", Ops: faultfs.OpReaddir, Errno: syscall.EIO})

	attempts := 0
	seen := map[syscall.Errno]int{}
	within(t, 20*time.Second, "reads under EIO faults", func() {
		// The listing first: every name is there, although some cannot even be looked up.
		if got, want := names(t, u.mnt+"/d"), names(t, u.backing+"/d"); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("listing under faults: %v, want %v", got, want)
		}
		// A lower directory that cannot be read: its listing fails with EIO (a partial listing would pass for
		// the whole), the files in it can still be opened by name, and other directories list.
		attempts += 3
		if _, err := os.ReadDir(u.mnt + "/bad"); errnoOf(err) != syscall.EIO {
			t.Errorf("listing a lower directory that cannot be read: %v, want EIO", err)
		}
		seen[syscall.EIO]++
		if data, err := os.ReadFile(u.mnt + "/bad/x"); err != nil || !bytes.Equal(data, content("bad/x", small)) {
			t.Errorf("reading a file in an unreadable directory: %v", err)
		}
		if got := names(t, u.mnt+"/good"); fmt.Sprint(got) != "[y]" {
			t.Errorf("listing good beside an unreadable directory: %v", got)
		}
		for round := 0; round < 3; round++ {
			for _, f := range files {
				attempts++
				data, err := os.ReadFile(filepath.Join(u.mnt, f))
				e := errnoOf(err)
				seen[e]++
				faulty := f != "d/ok1" && f != "d/ok2"
				switch {
				case faulty && e != syscall.EIO:
					t.Errorf("round %d: reading %s: %v, want EIO", round, f, err)
				case !faulty && err != nil:
					t.Errorf("round %d: reading %s beside faulty files: %v", round, f, err)
				case !faulty && !bytes.Equal(data, content(f, small)):
					t.Errorf("round %d: %s: wrong content", round, f)
				}
			}
		}
	})
	t.Logf("EIO: %d reads attempted, errnos seen %v, %d faults injected in %d lower operations", attempts, seen,
		u.ffs.Injected(), u.ffs.Ops())

	// The daemon keeps no memory of the faults: once they are gone every file reads right.
	u.ffs.ClearRules()
	for _, f := range files {
		size := small
		if f == "d/rbig" {
			size = big
		}
		data, err := os.ReadFile(filepath.Join(u.mnt, f))
		if err != nil || !bytes.Equal(data, content(f, size)) {
			t.Errorf("after the faults: reading %s: %v (content equal: %v)", f, err, bytes.Equal(data, content(f, size)))
		}
	}
}

// TestFaultLowerESTALE: a lower layer that answers ESTALE once (an NFS file handle gone stale, e.g. after the
// server replaced the file) costs the caller nothing: the lookup, getattr or open is retried by name. The
// retries are the kernel's (a path walk that fails with ESTALE is redone once with LOOKUP_REVAL, both for the
// daemon's *at calls on the lower and for the caller's call on the union, to which the daemon passes the ESTALE
// on), so up to three ESTALEs in a row are absorbed; a cached read is retried by go-fuse (its splice falls back
// to pread). A lower that answers ESTALE every time gives the caller ESTALE or EIO, promptly. The daemon's own
// retry, for a directory whose handle went stale, is TestFaultLowerStaleDir.
func TestFaultLowerESTALE(t *testing.T) {
	const small, big = 8 << 10, 2 << 20
	type fcase struct {
		name string
		op   faultfs.Op
		size int
	}
	var cases []fcase
	for _, op := range []struct {
		n  string
		op faultfs.Op
	}{{"lookup", faultfs.OpLookup}, {"getattr", faultfs.OpGetattr}, {"open", faultfs.OpOpen}, {"read", faultfs.OpRead}} {
		cases = append(cases, fcase{"small-" + op.n, op.op, small}, fcase{"big-" + op.n, op.op, big})
	}
	u := newFaultUnion(t, func(dir string) {
		for _, c := range cases {
			writeFiles(t, dir, c.size, "once/"+c.name, "always/"+c.name)
		}
	})
	for _, c := range cases {
		u.ffs.AddRule(faultfs.Rule{Pattern: "once/" + c.name, Ops: c.op, Errno: syscall.ESTALE, Times: 1})
		u.ffs.AddRule(faultfs.Rule{Pattern: "always/" + c.name, Ops: c.op, Errno: syscall.ESTALE})
	}
	seen := map[string]map[syscall.Errno]int{"once": {}, "always": {}}
	within(t, 20*time.Second, "reads under ESTALE faults", func() {
		for _, c := range cases {
			data, err := os.ReadFile(filepath.Join(u.mnt, "once", c.name))
			seen["once"][errnoOf(err)]++
			if err != nil || !bytes.Equal(data, content("once/"+c.name, c.size)) {
				t.Errorf("ESTALE once on %s: %v (content right: %v), want the file read after a retry", c.name, err,
					bytes.Equal(data, content("once/"+c.name, c.size)))
			}
			_, err = os.ReadFile(filepath.Join(u.mnt, "always", c.name))
			e := errnoOf(err)
			seen["always"][e]++
			if e != syscall.ESTALE && e != syscall.EIO {
				t.Errorf("ESTALE always on %s: %v, want ESTALE or EIO", c.name, err)
			}
		}
	})
	t.Logf("ESTALE: %d files with one fault, %d with permanent faults; errnos seen %v; %d faults injected in %d lower operations",
		len(cases), len(cases), seen, u.ffs.Injected(), u.ffs.Ops())
}

// TestFaultLowerNoXattr: a lower layer without xattr support (an NFS export without it answers EOPNOTSUPP to
// every xattr call) still gives reads, copy-up, chmod, directory renames (redirects) and listxattr.
func TestFaultLowerNoXattr(t *testing.T) {
	tree := []string{"tree/a", "tree/sub/b", "tree/sub/deep/c"}
	u := newFaultUnion(t, func(dir string) {
		writeFiles(t, dir, 4096, "file", "chm", "ren")
		writeFiles(t, dir, 3<<20, "bigfile")
		writeFiles(t, dir, 1000, tree...)
	})
	u.ffs.SetNoXattr(true)
	ops := 0
	check := func(what string, err error) {
		t.Helper()
		ops++
		if err != nil {
			t.Errorf("%s on a lower without xattrs: %v", what, err)
		}
	}
	within(t, 20*time.Second, "operations on a lower without xattrs", func() {
		data, err := os.ReadFile(u.mnt + "/file")
		check("read", err)
		if !bytes.Equal(data, content("file", 4096)) {
			t.Error("read: wrong content")
		}
		// Copy-up with data (append) and with truncation.
		f, err := os.OpenFile(u.mnt+"/bigfile", os.O_WRONLY|os.O_APPEND, 0)
		check("open for append (copy-up)", err)
		if err == nil {
			_, err = f.Write([]byte("tail"))
			check("append", err)
			check("close", f.Close())
		}
		got, err := os.ReadFile(u.mnt + "/bigfile")
		check("read after copy-up", err)
		if want := append(content("bigfile", 3<<20), "tail"...); !bytes.Equal(got, want) {
			t.Errorf("copied-up file: %d bytes, want %d with the lower data and the appended tail", len(got), len(want))
		}
		check("chmod (metadata copy-up)", os.Chmod(u.mnt+"/chm", 0600))
		if st, err := os.Stat(u.mnt + "/chm"); err != nil || st.Mode().Perm() != 0600 {
			t.Errorf("after chmod: %v %v", st.Mode(), err)
		}
		check("rename of a lower file", os.Rename(u.mnt+"/ren", u.mnt+"/ren2"))
		check("rename of a lower directory", os.Rename(u.mnt+"/tree", u.mnt+"/tree2"))
		for _, p := range tree {
			p2 := "tree2" + p[len("tree"):]
			data, err := os.ReadFile(filepath.Join(u.mnt, p2))
			check("reading "+p2+" after the directory rename", err)
			if !bytes.Equal(data, content(p, 1000)) {
				t.Errorf("%s: wrong content after the directory rename", p2)
			}
		}
		if _, err := os.Stat(u.mnt + "/tree"); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("old directory name after rename: %v, want ENOENT", err)
		}
		for _, p := range []string{"file", "tree2", "tree2/sub/b", "ren2", "chm"} {
			n, err := unix.Listxattr(filepath.Join(u.mnt, p), make([]byte, 4096))
			check("listxattr "+p, err)
			_ = n
			_, err = unix.Getxattr(filepath.Join(u.mnt, p), "user.nothing", make([]byte, 64))
			ops++
			if e := errnoOf(err); e != syscall.ENODATA && e != syscall.EOPNOTSUPP {
				t.Errorf("getxattr %s: %v, want ENODATA or EOPNOTSUPP", p, err)
			}
		}
		check("setxattr on a copied-up file", unix.Setxattr(u.mnt+"/chm", "user.x", []byte("1"), 0))
	})
	t.Logf("no xattrs: %d union operations, all answered; %d lower xattr calls refused with EOPNOTSUPP", ops,
		u.ffs.Injected())
}

// TestFaultLowerDTUnknown: a lower layer whose listings say DT_UNKNOWN for every entry (some NFS servers and
// older filesystems) gives union listings with the right types (from stat) and the same names.
func TestFaultLowerDTUnknown(t *testing.T) {
	u := newFaultUnion(t, func(dir string) {
		writeFiles(t, dir, 100, "d/reg", "d/sub/x", "top")
		must(t, os.Symlink("reg", dir+"/d/link"))
		must(t, unix.Mkfifo(dir+"/d/fifo", 0644))
		must(t, unix.Mknod(dir+"/d/chr", unix.S_IFCHR|0644, int(unix.Mkdev(1, 3))))
	})
	u.ffs.SetDTUnknown(true)
	// A merged directory: an upper entry beside the lower ones.
	must(t, os.WriteFile(u.mnt+"/d/upper-file", nil, 0644))
	must(t, os.Mkdir(u.mnt+"/d/upper-dir", 0755))
	want := map[string]uint8{}
	for _, dir := range []string{u.backing + "/d", u.Upper() + "/d"} {
		for name := range rawTypes(t, dir) {
			var st unix.Stat_t
			must(t, unix.Lstat(filepath.Join(dir, name), &st))
			want[name] = dtype(st.Mode)
		}
	}
	for name, typ := range rawTypes(t, u.lowers[0]+"/d") {
		if typ != unix.DT_UNKNOWN {
			t.Fatalf("faultfs lists %s with type %d, want DT_UNKNOWN", name, typ)
		}
	}
	got := rawTypes(t, u.mnt+"/d")
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("union listing (name:d_type) with DT_UNKNOWN below:\n got %v\nwant %v", got, want)
	}
	// The kernel asks with READDIRPLUS, whose lookups would correct wrong types; the daemon's own listing must
	// be right too (a READDIR, and whiteouts among DT_UNKNOWN entries, depend on it).
	d := asNode(u.root.GetChild("d"))
	if d == nil {
		t.Fatal("no node for d")
	}
	entries, errno := d.list()
	if errno != 0 {
		t.Fatalf("listing d: %v", errno)
	}
	own := map[string]uint8{}
	for _, e := range entries {
		if e.Name != "." && e.Name != ".." {
			own[e.Name] = uint8(e.Mode >> 12)
		}
	}
	if fmt.Sprint(own) != fmt.Sprint(want) {
		t.Errorf("the daemon's listing (name:d_type) with DT_UNKNOWN below:\n got %v\nwant %v", own, want)
	}
	t.Logf("DT_UNKNOWN: %d entries listed with types from stat", len(got))
}

// TestFaultLowerSlow: a slow lower layer (every operation delayed) gives right results, and requests that need
// only the upper layer are served while slow lower requests are in flight, not behind them.
func TestFaultLowerSlow(t *testing.T) {
	var files []string
	for i := 0; i < 8; i++ {
		files = append(files, fmt.Sprintf("s/f%d", i))
	}
	u := newFaultUnion(t, func(dir string) { writeFiles(t, dir, 64<<10, files...) })
	must(t, os.Mkdir(u.mnt+"/updir", 0755)) // only in the upper layer: looking names up in it never asks the lower
	u.ffs.SetLatency(20 * time.Millisecond)
	start := time.Now()
	for _, f := range files[:4] {
		data, err := os.ReadFile(filepath.Join(u.mnt, f))
		if err != nil || !bytes.Equal(data, content(f, 64<<10)) {
			t.Errorf("slow lower: reading %s: %v", f, err)
		}
	}
	t.Logf("slow lower (20 ms per operation): 4 files read in %v", time.Since(start))

	// Now very slow: each lower operation takes 400 ms, a file read several of them. An upper-only lookup
	// must not wait for any of them: it gets half that, a margin for a loaded machine.
	u.ffs.SetLatency(400 * time.Millisecond)
	inFlight := make(chan struct{}, len(files))
	done := make(chan error, len(files))
	for _, f := range files[4:] {
		go func() {
			inFlight <- struct{}{}
			data, err := os.ReadFile(filepath.Join(u.mnt, f))
			if err == nil && !bytes.Equal(data, content(f, 64<<10)) {
				err = fmt.Errorf("%s: wrong content", f)
			}
			done <- err
		}()
	}
	for range files[4:] {
		<-inFlight
	}
	time.Sleep(50 * time.Millisecond) // the slow requests have reached the lower layer
	var worst time.Duration
	const probes = 20
	for i := 0; i < probes; i++ {
		t0 := time.Now()
		_, err := os.Lstat(fmt.Sprintf("%s/updir/absent-%d", u.mnt, i)) // a name never cached: a LOOKUP each
		d := time.Since(t0)
		if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("upper-only lookup: %v", err)
		}
		worst = max(worst, d)
	}
	stillSlow := len(done) == 0
	for range files[4:] {
		if err := <-done; err != nil {
			t.Errorf("slow read: %v", err)
		}
	}
	if !stillSlow {
		t.Errorf("the slow reads finished before the upper-only lookups did: the test proves nothing")
	}
	if worst > 200*time.Millisecond {
		t.Errorf("an upper-only lookup took %v while slow lower requests were in flight: it waited behind them", worst)
	}
	t.Logf("slow lower (400 ms per operation): %d upper-only lookups during 4 slow reads, slowest %v", probes, worst)
}

// rawTypes lists dir with getdents(2) and returns each name's d_type as the filesystem reported it (os.ReadDir
// would fill in unknown types with lstat).
func rawTypes(t *testing.T, dir string) map[string]uint8 {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	must(t, err)
	defer unix.Close(fd)
	out := map[string]uint8{}
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Getdents(fd, buf)
		must(t, err)
		if n == 0 {
			return out
		}
		for b := buf[:n]; len(b) > 0; {
			reclen := int(b[16]) | int(b[17])<<8
			typ := b[18]
			name := b[19:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if s := string(name); s != "." && s != ".." {
				out[s] = typ
			}
			b = b[reclen:]
		}
	}
}

// TestFaultLowerStaleDir: the lower layer's server replaces a directory (NFS: its file handle goes stale) after
// the union has opened it. The daemon's descriptor of it then fails with ESTALE for good; the name, looked up
// again, leads to the directory anew. Lookups, reads and listings in it must work again after one retry by
// name.
func TestFaultLowerStaleDir(t *testing.T) {
	u := newFaultUnion(t, func(dir string) {
		writeFiles(t, dir, 1000, "d/f1", "d/f2", "d/f3", "d/sub/g", "e/h", "e/i", "s/j", "c/k", "w/l")
	})
	// The union opens d, d/sub, e, s and c (their nodes hold descriptors of them).
	for _, f := range []string{"d/f1", "d/sub/g", "e/h", "s/j", "c/k", "w/l"} {
		if _, err := os.ReadFile(filepath.Join(u.mnt, f)); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"d", "d/sub", "e", "s", "c", "w"} {
		if !u.ffs.MarkStale(d) {
			t.Fatalf("faultfs does not know %s", d)
		}
	}
	firstListing := "ok"
	within(t, 10*time.Second, "access to stale lower directories", func() {
		// Lookups: the kernel retries a lookup that failed with ESTALE once, by name.
		for _, f := range []string{"d/f2", "d/sub/g", "d/f3"} {
			if data, err := os.ReadFile(filepath.Join(u.mnt, f)); err != nil || !bytes.Equal(data, content(f, 1000)) {
				t.Errorf("reading %s after its directory went stale: %v", f, err)
			}
		}
		// A file the kernel knows already (its name cached): opening it needs the stale directory.
		if data, err := os.ReadFile(u.mnt + "/c/k"); err != nil || !bytes.Equal(data, content("c/k", 1000)) {
			t.Errorf("reading c/k, known before its directory went stale: %v", err)
		}
		// Changes in a stale directory: a new file (the directory is copied up first) and a whiteout.
		if err := os.WriteFile(u.mnt+"/w/new", []byte("new"), 0644); err != nil {
			t.Errorf("creating a file in a stale directory: %v", err)
		}
		if err := os.Remove(u.mnt + "/w/l"); err != nil {
			t.Errorf("removing a lower file in a stale directory: %v", err)
		}
		if got := names(t, u.mnt+"/w"); fmt.Sprint(got) != "[new]" {
			t.Errorf("w after the changes: %v, want [new]", got)
		}
		// stat(2) of the stale directory itself: retried by name too.
		if st, err := os.Stat(u.mnt + "/s"); err != nil || !st.IsDir() {
			t.Errorf("stat of a stale directory: %v", err)
		}
		// A listing first: getdents is not retried, so the first one may fail; the daemon has the kernel forget
		// the name at once (from outside the request), after which listings work.
		var err error
		tries := 0
		for try := 0; try < 50; try++ {
			tries++
			if try > 0 {
				time.Sleep(10 * time.Millisecond)
			}
			var es []os.DirEntry
			if es, err = os.ReadDir(u.mnt + "/e"); err == nil {
				if len(es) != 2 {
					t.Errorf("listing e after it went stale: %d entries, want 2", len(es))
				}
				break
			}
			firstListing = err.Error()
		}
		if err != nil || tries > 3 {
			t.Errorf("listing e after it went stale: %d attempts, last: %v", tries, err)
		}
		firstListing += fmt.Sprintf(", %d attempts", tries)
	})
	t.Logf("stale directories: %d ESTALE answered by the lower; first listing of a stale directory: %s",
		u.ffs.Injected(), firstListing)
}

// TestFaultLowerEIOCopyUp: a lower file whose data cannot be read (EIO at the start, or half way through the
// copy) cannot be copied up: opening it for writing fails with EIO, nothing is left in the upper layer, and
// once the lower reads again the copy-up works.
func TestFaultLowerEIOCopyUp(t *testing.T) {
	const size = 4 << 20
	u := newFaultUnion(t, func(dir string) { writeFiles(t, dir, size, "start", "midway") })
	u.ffs.AddRule(faultfs.Rule{Pattern: "start", Ops: faultfs.OpRead, Errno: syscall.EIO})
	u.ffs.AddRule(faultfs.Rule{Pattern: "midway", Ops: faultfs.OpRead, Errno: syscall.EIO, Skip: 2})
	seen := map[syscall.Errno]int{}
	within(t, 10*time.Second, "copy-ups of unreadable lower files", func() {
		for _, f := range []string{"start", "midway"} {
			err := appendTo(filepath.Join(u.mnt, f), []byte("tail"))
			seen[errnoOf(err)]++
			if errnoOf(err) != syscall.EIO {
				t.Errorf("copy-up of %s with its data unreadable: %v, want EIO", f, err)
			}
		}
	})
	if es, err := os.ReadDir(u.Upper()); err != nil || len(es) != 0 {
		t.Errorf("upper layer after failed copy-ups: %v %v, want empty", es, err)
	}
	u.ffs.ClearRules()
	for _, f := range []string{"start", "midway"} {
		if err := appendTo(filepath.Join(u.mnt, f), []byte("tail")); err != nil {
			t.Errorf("copy-up of %s once the lower reads again: %v", f, err)
		}
		data, err := os.ReadFile(filepath.Join(u.mnt, f))
		if err != nil || !bytes.Equal(data, append(content(f, size), "tail"...)) {
			t.Errorf("%s after the copy-up: %v, wrong content", f, err)
		}
	}
	t.Logf("EIO during copy-up: 2 copy-ups failed (errnos %v), the upper layer left empty; both worked afterwards", seen)
}
