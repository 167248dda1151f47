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
		"link", "symlink", "chmod", "utimes", "setxattr", "removexattr", "mkfifo", "read"}
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
