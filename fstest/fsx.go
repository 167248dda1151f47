package fstest

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Fsx is a data-integrity run in the manner of fsx (the file system exerciser of xfstests): random reads,
// writes, truncates, mapped reads and writes, fallocate (allocate, keep size, punch hole, zero range) and
// copy_file_range (from another file and within the file) on one file, each checked against an in-memory model
// of the file's bytes. The file is closed and opened again now and then, so that a union's open-mode decisions
// (page cache or passthrough, by size) change under the run.

// FsxConfig says what one Fsx run does.
type FsxConfig struct {
	Seed    int64
	Ops     int
	MaxSize int64 // the file never grows past this
}

// FsxResult is what an Fsx run did and found.
type FsxResult struct {
	Counts  map[string]int // operations done, by kind
	Failure string         // the first disagreement with the model, "" if none
	Log     []string       // the operations up to the failure (the last 20)
}

// Fsx runs cfg on the file at path, whose content is initially want, using the file at src (content srcData)
// as the source of copy_file_range. It stops at the first disagreement.
func Fsx(path string, want []byte, src string, srcData []byte, cfg FsxConfig) FsxResult {
	x := &fsx{path: path, model: append([]byte(nil), want...), src: src, srcData: srcData, cfg: cfg,
		r: rand.New(rand.NewSource(cfg.Seed)), res: FsxResult{Counts: map[string]int{}}}
	x.run()
	return x.res
}

type fsx struct {
	path, src string
	model     []byte
	srcData   []byte
	cfg       FsxConfig
	r         *rand.Rand
	f         *os.File
	res       FsxResult
}

func (x *fsx) failf(format string, args ...any) {
	if x.res.Failure == "" {
		x.res.Failure = fmt.Sprintf(format, args...)
	}
}

func (x *fsx) logf(format string, args ...any) {
	x.res.Log = append(x.res.Log, fmt.Sprintf(format, args...))
	if len(x.res.Log) > 20 {
		x.res.Log = x.res.Log[1:]
	}
}

func (x *fsx) open() bool {
	f, err := os.OpenFile(x.path, os.O_RDWR, 0)
	if err != nil {
		x.failf("open: %v", err)
		return false
	}
	x.f = f
	return true
}

func (x *fsx) run() {
	if !x.open() {
		return
	}
	defer func() { x.f.Close() }()
	ops := []func(){x.read, x.read, x.write, x.write, x.truncate, x.mapRead, x.mapWrite, x.fallocate,
		x.copyRange, x.copySelf, x.sync, x.reopen}
	for i := 0; i < x.cfg.Ops && x.res.Failure == ""; i++ {
		ops[x.r.Intn(len(ops))]()
		if i%16 == 15 || i == x.cfg.Ops-1 {
			x.verifyAll()
		}
	}
}

// offLen picks a range that mostly lies in the file, sometimes beyond its end.
func (x *fsx) offLen(maxLen int) (int64, int) {
	size := int64(len(x.model))
	limit := size + size/8 + 1
	if limit > x.cfg.MaxSize {
		limit = x.cfg.MaxSize
	}
	off := x.r.Int63n(limit)
	n := 1 + x.r.Intn(maxLen)
	if off+int64(n) > x.cfg.MaxSize {
		n = int(x.cfg.MaxSize - off)
	}
	return off, n
}

func (x *fsx) pattern(n int) []byte {
	b := make([]byte, n)
	x.r.Read(b)
	return b
}

// verify compares n bytes at off, read with pread, with the model.
func (x *fsx) verify(what string, off int64, n int) {
	want := sliceAt(x.model, off, n)
	got := make([]byte, n)
	m, err := x.f.ReadAt(got, off)
	if err != nil && m != len(want) {
		x.failf("after %s: pread %d bytes at %d: %d bytes, %v; the model has %d", what, n, off, m, err, len(want))
		return
	}
	if !bytes.Equal(got[:m], want) {
		x.failf("after %s: %d bytes at %d differ from the model at offset %d", what, n, off,
			off+int64(firstDiff(got[:m], want)))
	}
}

// verifyAll compares the size and the whole file, read through a new descriptor, with the model.
func (x *fsx) verifyAll() {
	got, err := os.ReadFile(x.path)
	if err != nil {
		x.failf("reading the whole file: %v", err)
		return
	}
	if !bytes.Equal(got, x.model) {
		x.failf("the whole file (%d bytes) differs from the model (%d bytes) at offset %d", len(got), len(x.model),
			firstDiff(got, x.model))
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(x.f.Fd()), &st); err != nil || st.Size != int64(len(x.model)) {
		x.failf("fstat: size %d, %v; the model has %d", st.Size, err, len(x.model))
	}
}

func sliceAt(b []byte, off int64, n int) []byte {
	if off >= int64(len(b)) {
		return nil
	}
	end := off + int64(n)
	if end > int64(len(b)) {
		end = int64(len(b))
	}
	return b[off:end]
}

func (x *fsx) read() {
	off, n := x.offLen(64 << 10)
	x.logf("read %d at %d", n, off)
	x.res.Counts["read"]++
	x.verify("read", off, n)
}

func (x *fsx) write() {
	off, n := x.offLen(64 << 10)
	data := x.pattern(n)
	x.logf("write %d at %d", n, off)
	if _, err := x.f.WriteAt(data, off); err != nil {
		x.failf("pwrite %d at %d: %v", n, off, err)
		return
	}
	x.res.Counts["write"]++
	x.model = writeAt(x.model, off, data)
	x.verify("write", off, n)
}

func (x *fsx) truncate() {
	n := x.r.Int63n(x.cfg.MaxSize)
	if x.r.Intn(2) == 0 {
		n = x.r.Int63n(int64(len(x.model)) + 1)
	}
	x.logf("truncate %d", n)
	if err := x.f.Truncate(n); err != nil {
		x.failf("ftruncate %d: %v", n, err)
		return
	}
	x.res.Counts["truncate"]++
	old := int64(len(x.model))
	x.model = resize(x.model, n)
	if n > old {
		x.verify("truncate", old, int(n-old))
	}
}

// mapping maps the whole file; nil for an empty file.
func (x *fsx) mapping(prot int) []byte {
	if len(x.model) == 0 {
		return nil
	}
	m, err := unix.Mmap(int(x.f.Fd()), 0, len(x.model), prot, unix.MAP_SHARED)
	if err != nil {
		x.failf("mmap %d bytes: %v", len(x.model), err)
		return nil
	}
	return m
}

func (x *fsx) mapRead() {
	m := x.mapping(unix.PROT_READ)
	if m == nil {
		return
	}
	defer unix.Munmap(m)
	off, n := x.offLen(64 << 10)
	off %= int64(len(m))
	n = min(n, len(m)-int(off))
	x.logf("mapread %d at %d", n, off)
	x.res.Counts["mapread"]++
	if !bytes.Equal(m[off:off+int64(n)], x.model[off:off+int64(n)]) {
		x.failf("mapped read of %d bytes at %d differs from the model at offset %d", n, off,
			off+int64(firstDiff(m[off:off+int64(n)], x.model[off:off+int64(n)])))
	}
}

func (x *fsx) mapWrite() {
	m := x.mapping(unix.PROT_READ | unix.PROT_WRITE)
	if m == nil {
		return
	}
	off, n := x.offLen(64 << 10)
	off %= int64(len(m))
	n = min(n, len(m)-int(off))
	data := x.pattern(n)
	x.logf("mapwrite %d at %d", n, off)
	copy(m[off:], data)
	err := unix.Msync(m, unix.MS_SYNC)
	unix.Munmap(m)
	if err != nil {
		x.failf("msync: %v", err)
		return
	}
	x.res.Counts["mapwrite"]++
	copy(x.model[off:], data)
	x.verify("mapwrite", off, n)
}

func (x *fsx) fallocate() {
	modes := []struct {
		name string
		mode uint32
	}{{"allocate", 0}, {"keep-size", unix.FALLOC_FL_KEEP_SIZE},
		{"punch-hole", unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE}, {"zero-range", unix.FALLOC_FL_ZERO_RANGE}}
	mode := modes[x.r.Intn(len(modes))]
	off, n := x.offLen(256 << 10)
	x.logf("fallocate %s %d at %d", mode.name, n, off)
	err := unix.Fallocate(int(x.f.Fd()), mode.mode, off, int64(n))
	if errors.Is(err, syscall.EOPNOTSUPP) && mode.mode != 0 {
		x.res.Counts["fallocate-unsupported"]++
		return // the layer's filesystem lacks the mode (tmpfs has no zero range): nothing changed
	}
	if err != nil {
		x.failf("fallocate %s %d at %d: %v", mode.name, n, off, err)
		return
	}
	x.res.Counts["fallocate-"+mode.name]++
	end := off + int64(n)
	switch mode.mode {
	case 0, unix.FALLOC_FL_ZERO_RANGE:
		if end > int64(len(x.model)) {
			x.model = resize(x.model, end)
		}
		if mode.mode == unix.FALLOC_FL_ZERO_RANGE {
			clear(x.model[off:end])
		}
	case unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE:
		if off < int64(len(x.model)) {
			clear(x.model[off:min(end, int64(len(x.model)))])
		}
	}
	x.verify("fallocate", off, n)
}

// copyRange copies a range of the source file into the file with copy_file_range(2).
func (x *fsx) copyRange() {
	if len(x.srcData) == 0 {
		return
	}
	src, err := os.Open(x.src)
	if err != nil {
		x.failf("opening the copy source: %v", err)
		return
	}
	defer src.Close()
	soff := x.r.Int63n(int64(len(x.srcData)))
	off, n := x.offLen(256 << 10)
	x.logf("copy_file_range %d from source %d to %d", n, soff, off)
	x.copyFrom(src, soff, off, n, sliceAt(x.srcData, soff, n))
}

// copySelf copies one range of the file to another, not overlapping, with copy_file_range(2).
func (x *fsx) copySelf() {
	if len(x.model) < 2 {
		return
	}
	n := 1 + x.r.Intn(min(len(x.model)/2, 128<<10))
	soff := x.r.Int63n(int64(len(x.model) - n + 1))
	off := x.r.Int63n(min(x.cfg.MaxSize-int64(n), int64(len(x.model))) + 1)
	if off < soff+int64(n) && soff < off+int64(n) {
		return // overlapping ranges are EINVAL
	}
	x.logf("copy_file_range %d within the file from %d to %d", n, soff, off)
	x.copyFrom(x.f, soff, off, n, append([]byte(nil), sliceAt(x.model, soff, n)...))
}

func (x *fsx) copyFrom(src *os.File, soff, off int64, n int, data []byte) {
	done := 0
	for done < len(data) {
		so, do := soff+int64(done), off+int64(done)
		c, err := unix.CopyFileRange(int(src.Fd()), &so, int(x.f.Fd()), &do, len(data)-done, 0)
		if err != nil {
			x.failf("copy_file_range %d bytes: %v", len(data)-done, err)
			return
		}
		if c == 0 {
			break
		}
		done += c
	}
	if done != len(data) {
		x.failf("copy_file_range copied %d of %d bytes", done, len(data))
		return
	}
	x.res.Counts["copy_file_range"]++
	x.model = writeAt(x.model, off, data)
	x.verify("copy_file_range", off, n)
}

func (x *fsx) sync() {
	x.logf("fsync")
	var err error
	if x.r.Intn(2) == 0 {
		err = x.f.Sync()
	} else {
		err = unix.Fdatasync(int(x.f.Fd()))
	}
	if err != nil {
		x.failf("fsync: %v", err)
	}
	x.res.Counts["fsync"]++
}

func (x *fsx) reopen() {
	x.logf("reopen")
	if err := x.f.Close(); err != nil {
		x.failf("close: %v", err)
	}
	if x.open() {
		x.res.Counts["reopen"]++
	}
}
