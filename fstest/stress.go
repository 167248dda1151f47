package fstest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Stress testing: workers run random operations concurrently on one union. Each worker owns one directory of
// the union (its names are its alone, some from each lower layer), keeps a model of what that directory must
// hold, and checks every name an operation touched against the model right after it. The workers share
// everything else: the union's root (copied up by all of them at once), the daemon's inode table, its threads.
//
// Because a worker's names are its own, its results do not depend on how the workers interleave: the same seed
// run on a reference union (kernel overlayfs) must give the same error for every step of every worker, and the
// same tree at the end. A failing worker's sequence can be replayed alone and shrunk to a short reproducer.

// StressConfig says what one stress run does.
type StressConfig struct {
	Seed    int64 // the run's operations are a function of Seed alone
	Workers int   // concurrent workers, each on its own directory
	Ops     int   // operations per worker
}

// StressResult is what a stress run did and found.
type StressResult struct {
	Ops       [][]Op     // Ops[w] is worker w's sequence
	Errs      [][]string // Errs[w][k] is the error of worker w's step k, "" when it succeeded
	Failures  []string   // model violations, each naming its worker and step
	Succeeded map[string]int
	Elapsed   time.Duration
}

// stressNames are a worker's names, relative to its directory. The "l" names start in the lower layers (see
// FillStressLowers); "ld" is a directory merged from both.
var stressNames = []string{"a", "b", "c", "sub", "sub/a", "sub/b", "sub/sub", "sub/sub/a", "la", "lb", "lbig",
	"ld", "ld/a", "ld/b", "ld/c"}

// stressWorkerDir names worker w's directory.
func stressWorkerDir(w int) string { return fmt.Sprintf("w%d", w) }

// FillStressLowers fills two lower layers for a stress run with n workers: in each worker's directory a small
// file in lower 0, one in lower 1, a 3 MiB file (large enough to be opened with FUSE passthrough), and a
// directory merged from both layers.
func FillStressLowers(t *testing.T, l0, l1 string, workers int) {
	t.Helper()
	big := bytes.Repeat([]byte("0123456789abcdef"), 3<<16)
	for w := 0; w < workers; w++ {
		d0, d1 := filepath.Join(l0, stressWorkerDir(w)), filepath.Join(l1, stressWorkerDir(w))
		mkdirAll(t, filepath.Join(d0, "ld"))
		mkdirAll(t, filepath.Join(d1, "ld"))
		writeFile(t, filepath.Join(d0, "la"), strings.Repeat("lower a ", 300), 0644)
		writeFile(t, filepath.Join(d1, "lb"), strings.Repeat("lower b ", 10), 0600)
		writeFile(t, filepath.Join(d0, "ld", "a"), "ld/a from lower 0\n", 0644)
		writeFile(t, filepath.Join(d1, "ld", "b"), "ld/b from lower 1\n", 0644)
		writeFile(t, filepath.Join(d1, "ld", "a"), "ld/a from lower 1, hidden\n", 0644)
		if err := os.WriteFile(filepath.Join(d1, "lbig"), big, 0644); err != nil {
			t.Fatal(err)
		}
	}
}

// stressModel is the model of a worker's directory as FillStressLowers leaves it.
func stressModel(umask uint32) *model {
	m := newModel(umask)
	file := func(perm uint32, data []byte) *mobj {
		return &mobj{typ: unix.S_IFREG, perm: perm, data: data, xattrs: map[string]string{}}
	}
	m.names["la"] = file(0644, []byte(strings.Repeat("lower a ", 300)))
	m.names["lb"] = file(0600, []byte(strings.Repeat("lower b ", 10)))
	m.names["lbig"] = file(0644, bytes.Repeat([]byte("0123456789abcdef"), 3<<16))
	m.names["ld"] = &mobj{typ: unix.S_IFDIR, perm: 0755, xattrs: map[string]string{}}
	m.names["ld/a"] = file(0644, []byte("ld/a from lower 0\n"))
	m.names["ld/b"] = file(0644, []byte("ld/b from lower 1\n"))
	return m
}

// StressOps returns worker w's operations for seed: a function of (seed, w) alone.
func StressOps(seed int64, w, n int) []Op {
	r := rand.New(rand.NewSource(seed*1000003 + int64(w)))
	pick := func() string { return stressNames[r.Intn(len(stressNames))] }
	kinds := []string{"create", "write", "write", "append", "mmapwrite", "truncate", "fsync", "read", "mkdir",
		"rmdir", "unlink", "rename", "rename", "link", "symlink", "chmod", "setxattr", "removexattr", "mkfifo"}
	ops := make([]Op, 0, n)
	for i := 0; i < n; i++ {
		op := Op{Kind: kinds[r.Intn(len(kinds))], Path: pick()}
		data := fmt.Sprintf("<w%d.%d>", w, i)
		switch op.Kind {
		case "create":
			op.Data, op.N = strings.Repeat(data, 1+r.Intn(50)), int64([]int{0644, 0600, 0755}[r.Intn(3)])
		case "write", "mmapwrite", "append":
			op.Data = strings.Repeat(data, 1+r.Intn(20))
			op.N = []int64{0, int64(r.Intn(4096)), int64(r.Intn(3 << 20)), int64(r.Intn(100))}[r.Intn(4)]
		case "truncate":
			op.N = []int64{0, int64(r.Intn(5000)), int64(r.Intn(4 << 20))}[r.Intn(3)]
		case "mkdir":
			op.N = int64([]int{0755, 0700}[r.Intn(2)])
		case "rename":
			op.Path2 = pick()
			op.N = int64([]uint{0, 0, 0, unix.RENAME_NOREPLACE, unix.RENAME_EXCHANGE}[r.Intn(5)])
		case "link":
			op.Path2 = pick()
		case "symlink":
			op.Data = "/nonexistent-ltsp-unionfs-stress/" + pick() // dangling: nothing follows it anywhere
		case "chmod":
			op.N = int64([]int{0600, 0644, 0755, 04755, 0700}[r.Intn(5)])
		case "setxattr", "removexattr":
			op.Path2, op.Data = []string{"k1", "k2"}[r.Intn(2)], data
		case "mkfifo":
			op.N = 0644
		}
		ops = append(ops, op)
	}
	return ops
}

// Stress runs cfg.Workers workers at once on the union mounted at mnt, whose lowers FillStressLowers filled.
// Every worker checks its model after every step; the result lists what failed.
func Stress(mnt string, cfg StressConfig) *StressResult {
	umask := uint32(unix.Umask(0))
	unix.Umask(int(umask))
	res := &StressResult{Ops: make([][]Op, cfg.Workers), Errs: make([][]string, cfg.Workers),
		Succeeded: map[string]int{}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < cfg.Workers; w++ {
		res.Ops[w] = StressOps(cfg.Seed, w, cfg.Ops)
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			errs, fails, ok := runWorker(filepath.Join(mnt, stressWorkerDir(w)), res.Ops[w], stressModel(umask))
			mu.Lock()
			defer mu.Unlock()
			res.Errs[w] = errs
			for _, f := range fails {
				res.Failures = append(res.Failures, fmt.Sprintf("worker %d %s", w, f))
			}
			for k, n := range ok {
				res.Succeeded[k] += n
			}
		}(w)
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	sort.Strings(res.Failures)
	return res
}

// runWorker applies ops under dir, checking the model after each; it stops at the first violation. It returns
// each step's error, the violations, and how many operations of each kind succeeded.
func runWorker(dir string, ops []Op, m *model) ([]string, []string, map[string]int) {
	errs := make([]string, len(ops))
	ok := map[string]int{}
	for k, op := range ops {
		err := op.Apply(dir)
		if err != nil {
			errs[k] = err.Error()
		}
		fail := func(format string, args ...any) ([]string, []string, map[string]int) {
			return errs[:k+1], []string{fmt.Sprintf("step %d %v: %s", k, op, fmt.Sprintf(format, args...))}, ok
		}
		if isNeverOK(err) {
			return fail("error %s, which no operation here may return", describeErr(err))
		}
		if err == nil {
			ok[op.Kind]++
			if merr := m.apply(op); merr != nil {
				return fail("%v", merr)
			}
		}
		for _, p := range []string{op.Path, op.Path2} {
			if p == "" {
				continue
			}
			if msg := m.check(dir, p); msg != "" {
				return fail("%s", msg)
			}
			if parent := path.Dir(p); parent != "." {
				if msg := m.check(dir, parent); msg != "" {
					return fail("%s", msg)
				}
			}
		}
		if msg := m.check(dir, ""); msg != "" {
			return fail("%s", msg)
		}
	}
	if msg := m.checkAll(dir); msg != "" {
		return errs, []string{"at the end: " + msg}, ok
	}
	return errs, nil, ok
}

// isNeverOK says whether err is an errno that signals a broken filesystem rather than a refused operation.
func isNeverOK(err error) bool {
	for _, e := range []syscall.Errno{syscall.EIO, syscall.ESTALE, syscall.ENOTCONN, syscall.EBADF, syscall.EFAULT,
		syscall.ENOSYS, syscall.EXDEV, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// checkAll compares every name of the model, and every name under dir, with each other.
func (m *model) checkAll(dir string) string {
	var msgs []string
	var walk func(rel string)
	walk = func(rel string) {
		if msg := m.check(dir, rel); msg != "" {
			msgs = append(msgs, msg)
			return
		}
		for _, c := range m.children(rel) {
			child := path.Join(rel, c)
			if o := m.names[child]; o.typ == unix.S_IFDIR {
				walk(child)
			} else if msg := m.check(dir, child); msg != "" {
				msgs = append(msgs, msg)
			}
		}
	}
	walk("")
	return strings.Join(msgs, "; ")
}

// check compares the object at rel under dir with the model ("" is dir itself: only its listing is checked). It
// returns "" when they agree.
func (m *model) check(dir, rel string) string {
	if rel == "" {
		return m.checkListing(dir, "")
	}
	p := filepath.Join(dir, rel)
	o := m.names[rel]
	var st unix.Stat_t
	err := unix.Lstat(p, &st)
	if o == nil {
		if err == nil {
			return fmt.Sprintf("%s exists (mode %o), the model has nothing there", rel, st.Mode)
		}
		if !errors.Is(err, syscall.ENOENT) && !errors.Is(err, syscall.ENOTDIR) {
			return fmt.Sprintf("lstat %s: %v, want ENOENT", rel, err)
		}
		return ""
	}
	if err != nil {
		return fmt.Sprintf("lstat %s: %v, the model has mode %o there", rel, err, o.typ|o.perm)
	}
	if st.Mode&unix.S_IFMT != o.typ || (o.typ != unix.S_IFLNK && st.Mode&07777 != o.perm) {
		return fmt.Sprintf("%s has mode %o, the model %o", rel, st.Mode, o.typ|o.perm)
	}
	switch o.typ {
	case unix.S_IFDIR:
		return m.checkListing(dir, rel)
	case unix.S_IFLNK:
		if target, err := os.Readlink(p); err != nil || target != o.target {
			return fmt.Sprintf("%s points to %q (%v), the model to %q", rel, target, err, o.target)
		}
		return ""
	}
	if want := m.links(o); int(st.Nlink) != want {
		return fmt.Sprintf("%s has %d links, the model %d", rel, st.Nlink, want)
	}
	if msg := checkXattrs(p, rel, o.xattrs); msg != "" {
		return msg
	}
	if o.typ != unix.S_IFREG {
		return ""
	}
	if st.Size != int64(len(o.data)) {
		return fmt.Sprintf("%s has %d bytes, the model %d", rel, st.Size, len(o.data))
	}
	got, err := os.ReadFile(p)
	if err != nil {
		return fmt.Sprintf("reading %s: %v", rel, err)
	}
	if !bytes.Equal(got, o.data) {
		return fmt.Sprintf("%s differs from the model at byte %d", rel, firstDiff(got, o.data))
	}
	return ""
}

// checkListing compares the names in directory rel with the model's.
func (m *model) checkListing(dir, rel string) string {
	ents, err := os.ReadDir(filepath.Join(dir, rel))
	if err != nil {
		return fmt.Sprintf("listing %q: %v", rel, err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if want := m.children(rel); !equalStrings(got, want) {
		return fmt.Sprintf("directory %q lists %q, the model %q", rel, got, want)
	}
	return ""
}

// checkXattrs compares the user.* xattrs of p with want.
func checkXattrs(p, rel string, want map[string]string) string {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		return fmt.Sprintf("listxattr %s: %v", rel, err)
	}
	got := map[string]string{}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		v := make([]byte, 4096)
		vn, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			return fmt.Sprintf("getxattr %s %s: %v", rel, name, err)
		}
		got[strings.TrimPrefix(name, "user.")] = string(v[:vn])
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		return fmt.Sprintf("%s has xattrs %v, the model %v", rel, got, want)
	}
	return ""
}

// firstDiff returns the first offset at which a and b differ.
func firstDiff(a, b []byte) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// CompareStressErrors compares the step errors of two runs of the same seed and describes the first
// disagreement of each worker, "" if they agree.
func CompareStressErrors(ref, sut *StressResult) string {
	var msgs []string
	for w := range ref.Errs {
		for k := 0; k < len(ref.Errs[w]) && k < len(sut.Errs[w]); k++ {
			if ref.Errs[w][k] != sut.Errs[w][k] {
				msgs = append(msgs, fmt.Sprintf("worker %d step %d %v: the reference says %s, the union %s", w, k,
					ref.Ops[w][k], errText(ref.Errs[w][k]), errText(sut.Errs[w][k])))
				break
			}
		}
	}
	return strings.Join(msgs, "\n")
}

// ReplayWorker runs one worker's operations alone on a union mounted at mnt (whose lowers FillStressLowers
// filled for at least one worker) and returns the first failure, "" if none. With Shrink it turns a failure a
// concurrent run found into a short reproducer.
func ReplayWorker(mnt string, ops []Op) string {
	umask := uint32(unix.Umask(0))
	unix.Umask(int(umask))
	_, fails, _ := runWorker(filepath.Join(mnt, stressWorkerDir(0)), ops, stressModel(umask))
	return strings.Join(fails, "; ")
}

func errText(s string) string {
	if s == "" {
		return "success"
	}
	return s
}
