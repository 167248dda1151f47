package fstest

import (
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// Differential testing: the same operations applied to a reference union (kernel overlayfs) and to the union
// under test, over identical lower layers; after every operation the errors and the merged views must agree.
// A failing random sequence is shrunk to a short reproducer, printed as Go code.

// Op is one filesystem operation on paths relative to a union's root.
type Op struct {
	Kind  string // see Apply
	Path  string
	Path2 string
	Data  string
	N     int64
}

// String renders op as a Go literal, for reproducers.
func (op Op) String() string {
	return fmt.Sprintf("{Kind: %q, Path: %q, Path2: %q, Data: %q, N: %d}", op.Kind, op.Path, op.Path2, op.Data, op.N)
}

// Apply performs op under root and returns its error as an errno (nil on success).
func (op Op) Apply(root string) error {
	p := filepath.Join(root, op.Path)
	p2 := filepath.Join(root, op.Path2)
	var err error
	switch op.Kind {
	case "create":
		var f *os.File
		if f, err = os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_TRUNC|unix.O_NONBLOCK, os.FileMode(op.N)); err == nil {
			_, err = f.Write([]byte(op.Data))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	case "write":
		var f *os.File
		// O_NONBLOCK everywhere: a FIFO must not block the run.
		if f, err = os.OpenFile(p, os.O_WRONLY|unix.O_NONBLOCK, 0); err == nil {
			_, err = f.WriteAt([]byte(op.Data), op.N)
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	case "append":
		var f *os.File
		if f, err = os.OpenFile(p, os.O_WRONLY|os.O_APPEND|unix.O_NONBLOCK, 0); err == nil {
			_, err = f.Write([]byte(op.Data))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	case "truncate":
		err = unix.Truncate(p, op.N)
	case "mkdir":
		err = unix.Mkdir(p, uint32(op.N))
	case "rmdir":
		err = unix.Rmdir(p)
	case "unlink":
		err = unix.Unlink(p)
	case "rename":
		err = unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, p2, uint(op.N))
	case "link":
		err = unix.Link(p, p2)
	case "symlink":
		err = unix.Symlink(op.Data, p)
	case "chmod":
		err = unix.Chmod(p, uint32(op.N))
	case "chown":
		err = unix.Lchown(p, int(op.N), int(op.N)+1)
	case "utimes":
		ts := []unix.Timespec{{Sec: op.N, Nsec: 1}, {Sec: op.N + 1, Nsec: 2}}
		err = unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	case "setxattr":
		err = unix.Lsetxattr(p, "user."+op.Path2, []byte(op.Data), 0)
	case "removexattr":
		err = unix.Lremovexattr(p, "user."+op.Path2)
	case "mkfifo":
		err = unix.Mkfifo(p, uint32(op.N))
	case "mmapwrite":
		err = mmapWrite(p, op.N, op.Data)
	case "fsync":
		var f *os.File
		if f, err = os.OpenFile(p, os.O_RDONLY|unix.O_NONBLOCK, 0); err == nil {
			err = f.Sync()
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	case "open":
		err = openAndUse(p, int(op.N), op.Data)
	case "tmpfile":
		err = tmpfileAndLink(p, p2, op.Data)
	case "fdtruncate":
		err = truncateBesideReader(p, op.N)
	case "fallocate":
		err = fallocateBesideReader(p, uint32(op.N>>32), op.N&0xffff, op.N>>16&0xffff)
	case "copyrange":
		err = copyRange(p, p2, int(op.N))
	case "read":
		var f *os.File
		if f, err = os.OpenFile(p, os.O_RDONLY|unix.O_NONBLOCK, 0); err == nil {
			buf := make([]byte, 4096)
			_, err = f.Read(buf)
			if errors.Is(err, io.EOF) || errors.Is(err, syscall.EAGAIN) {
				err = nil
			}
			f.Close()
		}
	default:
		return fmt.Errorf("unknown op %q", op.Kind)
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		var pe *os.PathError
		if isNeverOK(errno) && errors.As(err, &pe) {
			return &callError{Errno: errno, Call: pe.Op} // which call failed, for the failure message
		}
		return errno
	}
	return err
}

// callError is an errno with the system call that returned it. It reads and compares as the bare errno (the two
// unions of a run must agree on errors, whichever call reported them); failure messages name the call.
type callError struct {
	Errno syscall.Errno
	Call  string
}

func (e *callError) Error() string { return e.Errno.Error() }
func (e *callError) Unwrap() error { return e.Errno }

// describeErr is err for a failure message: with the system call that returned it, where known.
func describeErr(err error) string {
	var ce *callError
	if errors.As(err, &ce) {
		return fmt.Sprintf("%v (from %s)", ce.Errno, ce.Call)
	}
	return fmt.Sprint(err)
}

// openAndUse opens p with flags (and O_NONBLOCK, so that no FIFO blocks the run), writes data if the descriptor
// is open for writing, reads if it is open for reading, fstats it, and closes it.
func openAndUse(p string, flags int, data string) error {
	f, fd, err := openFd(p, flags|unix.O_NONBLOCK, 0644)
	if err != nil {
		return err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	if flags&unix.O_PATH != 0 || st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return nil
	}
	direct := flags&unix.O_DIRECT != 0
	// Direct I/O's alignment rules belong to each filesystem (ext4 refuses an unaligned offset or length with
	// EINVAL, tmpfs and a FUSE filesystem caching through the kernel do not), so a direct descriptor only reads a
	// page at offset 0 into a page, which every filesystem serves.
	if acc := flags & unix.O_ACCMODE; acc != unix.O_RDONLY && data != "" && !direct {
		if _, err := unix.Write(fd, []byte(data)); err != nil && !errors.Is(err, syscall.EAGAIN) {
			return err
		}
	}
	if flags&unix.O_ACCMODE != unix.O_WRONLY {
		buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
		if err != nil {
			return fmt.Errorf("a page for reading: %w", err)
		}
		defer unix.Munmap(buf)
		if _, err := unix.Pread(fd, buf, 0); err != nil && !errors.Is(err, syscall.EAGAIN) &&
			!errors.Is(err, syscall.ESPIPE) {
			return err
		}
	}
	return f.Close()
}

// openFd opens p as an *os.File, so that deferred and explicit closes can meet (an *os.File closes its descriptor
// once; a descriptor number closed twice could be another goroutine's by then), and returns its descriptor too.
func openFd(p string, flags int, mode uint32) (*os.File, int, error) {
	fd, err := unix.Open(p, flags|unix.O_CLOEXEC, mode)
	if err != nil {
		return nil, -1, err
	}
	return os.NewFile(uintptr(fd), p), fd, nil
}

// tmpfileAndLink makes an unnamed file in directory dir (O_TMPFILE), writes data and gives it the name p2.
func tmpfileAndLink(dir, p2, data string) error {
	f, fd, err := openFd(dir, unix.O_TMPFILE|unix.O_RDWR, 0640)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := unix.Write(fd, []byte(data)); err != nil {
		return err
	}
	return unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD, p2, unix.AT_SYMLINK_FOLLOW)
}

// besideReader opens p for reading and for writing and passes the writer to change; then the reader must see the
// size stat gives for p.
func besideReader(p string, change func(writer int) error) error {
	rf, reader, err := openFd(p, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer rf.Close()
	wf, writer, err := openFd(p, unix.O_WRONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	err = change(writer)
	if cerr := wf.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	var byFd, byName unix.Stat_t
	if err := unix.Fstat(reader, &byFd); err != nil {
		return err
	}
	if err := unix.Stat(p, &byName); err != nil {
		return err
	}
	if byFd.Size != byName.Size {
		return fmt.Errorf("a reader open during the change sees size %d, stat %d", byFd.Size, byName.Size)
	}
	return nil
}

// truncateBesideReader truncates p through a descriptor to size while another descriptor holds it for reading.
func truncateBesideReader(p string, size int64) error {
	return besideReader(p, func(w int) error { return unix.Ftruncate(w, size) })
}

// fallocateBesideReader calls fallocate(mode, off, n) on a descriptor of p while another holds it for reading.
func fallocateBesideReader(p string, mode uint32, off, n int64) error {
	return besideReader(p, func(w int) error { return unix.Fallocate(w, mode, off, n) })
}

// copyRange copies up to n bytes from the start of src to the start of dst with copy_file_range(2).
func copyRange(src, dst string, n int) error {
	inf, in, err := openFd(src, unix.O_RDONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer inf.Close()
	outf, out, err := openFd(dst, unix.O_WRONLY|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer outf.Close()
	var inOff, outOff int64
	if _, err := unix.CopyFileRange(in, &inOff, out, &outOff, n, 0); err != nil {
		return err
	}
	return outf.Close()
}

// openFlags returns random open(2) flags: an access mode with some of the flags Linux accepts for files, or
// O_PATH with the few flags that go with it.
func openFlags(r *rand.Rand) int64 {
	if r.Intn(8) == 0 {
		return int64(unix.O_PATH | []int{0, unix.O_NOFOLLOW, unix.O_DIRECTORY}[r.Intn(3)])
	}
	flags := []int{unix.O_RDONLY, unix.O_WRONLY, unix.O_RDWR}[r.Intn(3)]
	for _, f := range []int{unix.O_TRUNC, unix.O_APPEND, unix.O_CREAT, unix.O_EXCL, unix.O_NOATIME, unix.O_NOFOLLOW,
		unix.O_DIRECTORY, unix.O_SYNC, unix.O_DIRECT} {
		if r.Intn(4) == 0 {
			flags |= f
		}
	}
	return int64(flags)
}

// fallocateArgs packs a random fallocate mode, offset and length into an Op's N (mode<<32 | len<<16 | off).
func fallocateArgs(r *rand.Rand) int64 {
	mode := []uint32{0, unix.FALLOC_FL_KEEP_SIZE, unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE,
		unix.FALLOC_FL_ZERO_RANGE}[r.Intn(4)]
	return int64(mode)<<32 | int64(1+r.Intn(40))<<16 | int64(r.Intn(30))
}

// mmapWrite writes data through a shared writable mapping of the file at p, at the place mmapRegion says.
func mmapWrite(p string, off int64, data string) error {
	f, err := os.OpenFile(p, os.O_RDWR|unix.O_NONBLOCK, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return syscall.EINVAL
	}
	off, b := mmapRegion(st.Size, off, data)
	if len(b) == 0 {
		return nil
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return err
	}
	copy(m[off:], b)
	if err := unix.Msync(m, unix.MS_SYNC); err != nil {
		unix.Munmap(m)
		return err
	}
	if err := unix.Munmap(m); err != nil {
		return err
	}
	return f.Close()
}

// DiffPair makes the two unions of a differential run, over lower layers filled identically by fill.
type DiffPair struct {
	// Ref and SUT make the reference union and the union under test.
	Ref, SUT func(t *testing.T) Union
	// Fill fills lower layers 0 and 1 of a union before it is mounted.
	Fill func(t *testing.T, lower0, lower1 string)
	// IgnoreDirNlink skips directory link counts: a union that copies a renamed directory's subtree instead of
	// redirecting it reports the real count where overlayfs reports 1 for a merged directory.
	IgnoreDirNlink bool
}

// DiffCompare are the attributes the merged views of a differential run must agree on: times differ because the
// two unions run the operations at different instants, directory sizes because the uppers hold different
// entries.
var DiffCompare = CompareOptions{IgnoreAtime: true, IgnoreMtime: true, IgnoreDirSize: true}

// RunDiff applies ops to fresh unions from pair and returns a description of the first disagreement, or "" if
// the unions agreed throughout. The unions are unmounted when it returns; then check, if not nil, gets them.
func RunDiff(t *testing.T, pair DiffPair, ops []Op, check func(ref, sut Union) string) string {
	t.Helper()
	ref, sut := pair.Ref(t), pair.SUT(t)
	pair.Fill(t, ref.Lower(0), ref.Lower(1))
	pair.Fill(t, sut.Lower(0), sut.Lower(1))
	rm, sm := ref.Mount(t), sut.Mount(t)
	msg := ""
	for i, op := range ops {
		re, se := op.Apply(rm), op.Apply(sm)
		if !sameErr(re, se) {
			msg = fmt.Sprintf("step %d %v: the reference says %v, the union %v", i, op, re, se)
			break
		}
		opt := DiffCompare
		opt.IgnoreDirNlink = pair.IgnoreDirNlink
		if d := diffViews(rm, sm, opt); d != "" {
			msg = fmt.Sprintf("step %d %v: the views differ:\n%s", i, op, d)
			break
		}
	}
	ref.Unmount(t)
	sut.Unmount(t)
	if msg == "" && check != nil {
		msg = check(ref, sut)
	}
	return msg
}

func sameErr(a, b error) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Error() == b.Error()
}

// diffViews compares two merged views and describes the differences, "" if none.
func diffViews(a, b string, opt CompareOptions) string {
	da, err := Describe(a, opt)
	if err != nil {
		return "describing the reference: " + err.Error()
	}
	db, err := Describe(b, opt)
	if err != nil {
		return "describing the union: " + err.Error()
	}
	return DiffDescriptions(da, db)
}

// DiffDescriptions lists the differences between two Describe results, "" if none.
func DiffDescriptions(want, got map[string]string) string {
	var d []string
	for k, w := range want {
		if g, ok := got[k]; !ok {
			d = append(d, "  only in the reference: "+k+" "+w)
		} else if g != w {
			d = append(d, fmt.Sprintf("  %s:\n    reference: %s\n    union:     %s", k, w, g))
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			d = append(d, "  only in the union: "+k+" "+g)
		}
	}
	sort.Strings(d)
	return strings.Join(d, "\n")
}

// diffNames is the small namespace random operations use, so that they collide often.
var diffNames = []string{"a", "b", "d1", "d1/a", "d1/c", "d2", "d2/b", "d2/d3", "d2/d3/a", "lower", "lower/x",
	"lower/sub", "lower/sub/y", "both", "both/x", "both/z", "f", "g"}

// RandomOps returns n random operations from seed, over the namespace the lower layers of FillLowers use.
func RandomOps(seed int64, n int, root bool) []Op {
	r := rand.New(rand.NewSource(seed))
	pick := func() string { return diffNames[r.Intn(len(diffNames))] }
	kinds := []string{"create", "write", "append", "truncate", "mkdir", "rmdir", "unlink", "rename", "rename",
		"link", "symlink", "chmod", "utimes", "setxattr", "removexattr", "mkfifo", "read", "open", "open",
		"tmpfile", "fdtruncate", "fallocate", "copyrange"}
	if root {
		kinds = append(kinds, "chown")
	}
	ops := make([]Op, 0, n)
	for i := 0; i < n; i++ {
		op := Op{Kind: kinds[r.Intn(len(kinds))], Path: pick()}
		switch op.Kind {
		case "create":
			op.Data, op.N = fmt.Sprintf("content %d\n", i), int64([]int{0644, 0600, 0755}[r.Intn(3)])
		case "write", "append":
			op.Data, op.N = fmt.Sprintf("<%d>", i), int64(r.Intn(20))
		case "truncate":
			op.N = int64(r.Intn(30))
		case "mkdir":
			op.N = int64([]int{0755, 0700, 0711}[r.Intn(3)])
		case "rename":
			op.Path2 = pick()
			op.N = int64([]uint{0, 0, 0, unix.RENAME_NOREPLACE, unix.RENAME_EXCHANGE}[r.Intn(5)])
		case "link":
			op.Path2 = pick()
		case "symlink":
			op.Data = pick()
		case "chmod":
			op.N = int64([]int{0600, 0755, 04755, 0700, 01777}[r.Intn(5)])
		case "chown":
			op.N = int64(1000 + r.Intn(3))
		case "utimes":
			op.N = int64(1e9 + r.Intn(1000))
		case "setxattr", "removexattr":
			op.Path2, op.Data = []string{"k1", "k2"}[r.Intn(2)], fmt.Sprintf("v%d", i)
		case "mkfifo":
			op.N = 0644
		case "open":
			op.N, op.Data = openFlags(r), fmt.Sprintf("(%d)", i)
		case "tmpfile":
			op.Path2, op.Data = pick(), fmt.Sprintf("tmp %d\n", i)
		case "fdtruncate":
			op.N = int64(r.Intn(30))
		case "fallocate":
			op.N = fallocateArgs(r)
		case "copyrange":
			op.Path2, op.N = pick(), int64(r.Intn(20))
		}
		ops = append(ops, op)
	}
	return ops
}

// FillLowers puts the tree random operations work on into two lower layers: names in one layer or both, with
// fixed times so that both unions of a pair see identical lowers.
func FillLowers(t *testing.T, l0, l1 string) {
	t.Helper()
	files := map[string]string{
		"0:lower/x": "lower x\n", "0:lower/sub/y": "lower y\n", "0:both/x": "top x\n", "1:both/x": "bottom x\n",
		"1:both/z": "bottom z\n", "1:f": "lower f\n", "0:d1/a": "d1/a in 0\n",
	}
	dirs := []string{"0:lower/sub", "0:both", "1:both", "0:d1", "1:d2/d3"}
	layer := func(s string) (string, string) {
		if s[0] == '0' {
			return l0, s[2:]
		}
		return l1, s[2:]
	}
	for _, d := range dirs {
		base, rel := layer(d)
		mkdirAll(t, filepath.Join(base, rel))
	}
	for k, v := range files {
		base, rel := layer(k)
		mkdirAll(t, filepath.Dir(filepath.Join(base, rel)))
		writeFile(t, filepath.Join(base, rel), v, 0644)
	}
	if err := os.Symlink("lower/x", filepath.Join(l1, "g")); err != nil {
		t.Fatal(err)
	}
	ts := []unix.Timespec{{Sec: 1e9}, {Sec: 1e9}}
	for _, base := range []string{l0, l1} {
		filepath.Walk(base, func(p string, info os.FileInfo, err error) error {
			if err == nil {
				unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
			}
			return nil
		})
	}
}

// Shrink returns a shorter sequence for which fails still holds, removing chunks of operations and then single
// ones (delta debugging).
func Shrink(ops []Op, fails func([]Op) bool) []Op {
	for chunk := len(ops) / 2; chunk >= 1; chunk /= 2 {
		for i := 0; i+chunk <= len(ops); {
			try := append(append([]Op{}, ops[:i]...), ops[i+chunk:]...)
			if fails(try) {
				ops = try
			} else {
				i += chunk
			}
		}
	}
	return ops
}

// Reproducer renders ops as Go code for a regression test.
func Reproducer(ops []Op) string {
	var b strings.Builder
	b.WriteString("ops := []fstest.Op{\n")
	for _, op := range ops {
		b.WriteString("\t" + op.String() + ",\n")
	}
	b.WriteString("}")
	return b.String()
}
