package fstest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Cases of one file shared by several users at once: a lease holder and a writer, a fanotify listener and the
// programs it watches, a mapping and the descriptors that change the file under it, a writer under a file size
// limit. Each runs on a file of a lower layer (the first write copies it up under the others) and on a file of
// the upper layer.

// sharingNames are the two files each case below works on, filled by fillSharing.
var sharingNames = []string{"lower", "upper"}

// fillSharing puts content in a lower file before the mount and in an upper file through the mount, and returns
// the mount point.
func fillSharing(t *testing.T, u Union, content string) string {
	t.Helper()
	writeFile(t, filepath.Join(u.Lower(0), "lower"), content, 0644)
	mnt := u.Mount(t)
	writeFile(t, filepath.Join(mnt, "upper"), content, 0644)
	return mnt
}

// openOrFail opens path with flags (and O_CLOEXEC) or ends the test.
func openOrFail(t *testing.T, path string, flags int) int {
	t.Helper()
	fd, err := unix.Open(path, flags|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open(%s, %#o): %v", path, flags, err)
	}
	return fd
}

// LeaseBlocksWriters takes a read lease on a descriptor and opens the file again: readers open, a non-blocking
// writer is refused with EWOULDBLOCK (the lease break has begun), and once the holder gives the lease up a writer
// opens and writes. A write lease on the only descriptor of a file blocks a reader the same way.
func LeaseBlocksWriters(t *testing.T, u Union) {
	requireRoot(t) // a lease on a file one does not own needs CAP_LEASE
	mnt := fillSharing(t, u, "before")
	for _, name := range sharingNames {
		path := filepath.Join(mnt, name)
		holder := openOrFail(t, path, unix.O_RDONLY)
		if _, err := unix.FcntlInt(uintptr(holder), unix.F_SETLEASE, unix.F_RDLCK); err != nil {
			t.Fatalf("%s: F_SETLEASE F_RDLCK: %v", name, err)
		}
		if got, err := unix.FcntlInt(uintptr(holder), unix.F_GETLEASE, 0); err != nil || got != unix.F_RDLCK {
			t.Errorf("%s: F_GETLEASE: %d, %v; want F_RDLCK", name, got, err)
		}
		reader := openOrFail(t, path, unix.O_RDONLY|unix.O_NONBLOCK)
		unix.Close(reader)
		_, err := unix.Open(path, unix.O_WRONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		wantErrno(t, name+": a non-blocking writer under a read lease", err, syscall.EWOULDBLOCK)
		if _, err := unix.FcntlInt(uintptr(holder), unix.F_SETLEASE, unix.F_UNLCK); err != nil {
			t.Fatalf("%s: F_SETLEASE F_UNLCK: %v", name, err)
		}
		writer := openOrFail(t, path, unix.O_WRONLY|unix.O_TRUNC)
		if _, err := unix.Write(writer, []byte("after")); err != nil {
			t.Errorf("%s: write after the lease was given up: %v", name, err)
		}
		unix.Close(writer)
		var st unix.Stat_t
		if err := unix.Fstat(holder, &st); err != nil {
			t.Errorf("%s: fstat of the former lease holder: %v", name, err)
		}
		unix.Close(holder)
		wantContent(t, path, "after")

		holder = openOrFail(t, path, unix.O_WRONLY)
		if _, err := unix.FcntlInt(uintptr(holder), unix.F_SETLEASE, unix.F_WRLCK); err != nil {
			t.Fatalf("%s: F_SETLEASE F_WRLCK on the only descriptor: %v", name, err)
		}
		_, err = unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
		wantErrno(t, name+": a non-blocking reader under a write lease", err, syscall.EWOULDBLOCK)
		if _, err := unix.FcntlInt(uintptr(holder), unix.F_SETLEASE, unix.F_UNLCK); err != nil {
			t.Fatalf("%s: F_SETLEASE F_UNLCK of a write lease: %v", name, err)
		}
		unix.Close(holder)
		wantContent(t, path, "after")
	}
}

// FanotifyWatchesFile watches a file and the whole mount with fanotify while a reader holds the file open and a
// writer changes it. Reading the events works (the kernel opens the file for each event), each event's
// descriptor reads the file, and the writes land.
func FanotifyWatchesFile(t *testing.T, u Union) {
	requireRoot(t) // fanotify needs CAP_SYS_ADMIN
	mnt := fillSharing(t, u, "before")
	for _, name := range sharingNames {
		path := filepath.Join(mnt, name)
		fan, err := unix.FanotifyInit(unix.FAN_CLASS_NOTIF|unix.FAN_CLOEXEC|unix.FAN_NONBLOCK, unix.O_RDONLY)
		if err != nil {
			t.Fatalf("fanotify_init: %v", err)
		}
		events := uint64(unix.FAN_OPEN | unix.FAN_MODIFY | unix.FAN_CLOSE_WRITE | unix.FAN_ACCESS)
		if err := unix.FanotifyMark(fan, unix.FAN_MARK_ADD, events, unix.AT_FDCWD, path); err != nil {
			t.Fatalf("%s: fanotify_mark on the file: %v", name, err)
		}
		if err := unix.FanotifyMark(fan, unix.FAN_MARK_ADD|unix.FAN_MARK_MOUNT, unix.FAN_OPEN, unix.AT_FDCWD,
			mnt); err != nil {
			t.Fatalf("%s: fanotify_mark on the mount: %v", name, err)
		}
		reader := openOrFail(t, path, unix.O_RDONLY)
		for i, content := range []string{"first", "second write"} {
			writer := openOrFail(t, path, unix.O_WRONLY|unix.O_TRUNC)
			if _, err := unix.Write(writer, []byte(content)); err != nil {
				t.Errorf("%s: write %d under fanotify: %v", name, i, err)
			}
			unix.Close(writer)
			wantContent(t, path, content)
			n := readFanotify(t, name, fan, content)
			if n == 0 {
				t.Errorf("%s: write %d: fanotify reported no event", name, i)
			}
		}
		if err := unix.FanotifyMark(fan, unix.FAN_MARK_REMOVE, events, unix.AT_FDCWD, path); err != nil {
			t.Errorf("%s: fanotify_mark remove: %v", name, err)
		}
		unix.Close(reader)
		unix.Close(fan)
	}
}

// readFanotify reads the pending events of fan, checks that each event's descriptor of a regular file reads
// want, closes the descriptors and returns the number of events.
func readFanotify(t *testing.T, name string, fan int, want string) int {
	t.Helper()
	buf := make([]byte, 64<<10)
	events := 0
	for {
		n, err := unix.Read(fan, buf)
		if errors.Is(err, syscall.EAGAIN) {
			return events
		}
		if err != nil {
			t.Errorf("%s: reading fanotify events: %v", name, err)
			return events
		}
		for off := 0; off+unix.FAN_EVENT_METADATA_LEN <= n; {
			meta := (*unix.FanotifyEventMetadata)(unsafe.Pointer(&buf[off]))
			if meta.Event_len < unix.FAN_EVENT_METADATA_LEN {
				t.Fatalf("%s: malformed fanotify event of %d bytes", name, meta.Event_len)
			}
			off += int(meta.Event_len)
			events++
			if meta.Fd < 0 {
				t.Errorf("%s: fanotify event %#x without a descriptor (%d)", name, meta.Mask, meta.Fd)
				continue
			}
			fd := int(meta.Fd)
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				t.Errorf("%s: fstat of a fanotify event's descriptor: %v", name, err)
			} else if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size == int64(len(want)) {
				got := make([]byte, len(want))
				if k, err := unix.Pread(fd, got, 0); err != nil || string(got[:k]) != want {
					t.Errorf("%s: a fanotify event's descriptor reads %q, %v; want %q", name, got[:k], err, want)
				}
			}
			unix.Close(fd)
		}
	}
}

// MappingBesideDescriptors maps a file shared and read-only while other descriptors write, truncate and punch
// holes in it: the mapping of an upper file sees each change (the page cache is the file's), and no access to a
// mapped page inside the file faults. A lower file mapped before its copy-up may keep showing the lower data (as
// on overlayfs), but its pages stay readable and a new mapping shows the copy. A private mapping of the writer
// keeps its own copy of a page it wrote.
func MappingBesideDescriptors(t *testing.T, u Union) {
	const size = 8192
	mnt := fillSharing(t, u, strings.Repeat("a", size))
	for _, name := range sharingNames {
		path := filepath.Join(mnt, name)
		reader := openOrFail(t, path, unix.O_RDONLY)
		m, err := unix.Mmap(reader, 0, size, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			t.Fatalf("%s: mmap: %v", name, err)
		}
		coherent := name == "upper"
		writer := openOrFail(t, path, unix.O_RDWR)
		if _, err := unix.Pwrite(writer, []byte("XYZ"), 100); err != nil {
			t.Fatalf("%s: pwrite: %v", name, err)
		}
		if got, err := readMapped(m, 100, 3); err != nil {
			t.Errorf("%s: the mapping after a pwrite: %v", name, err)
		} else if coherent && got != "XYZ" || got != "XYZ" && got != "aaa" {
			t.Errorf("%s: the mapping shows %q after a pwrite of XYZ", name, got)
		}

		private, err := unix.Mmap(writer, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE)
		if err != nil {
			t.Fatalf("%s: private mmap of the writer: %v", name, err)
		}
		copy(private[200:], "private")
		if err := unix.Fallocate(writer, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, 4096); err != nil {
			t.Errorf("%s: punching a hole under the mappings: %v", name, err)
		}
		if got, err := readMapped(private, 200, 7); err != nil || got != "private" {
			t.Errorf("%s: a private mapping's own write reads %q, %v after a hole was punched", name, got, err)
		}
		if got, err := readMapped(m, 100, 3); err != nil {
			t.Errorf("%s: the mapping after a hole was punched: %v", name, err)
		} else if coherent && got != "\x00\x00\x00" {
			t.Errorf("%s: the mapping shows %q where a hole was punched", name, got)
		}
		if err := unix.Ftruncate(writer, 4096); err != nil {
			t.Errorf("%s: ftruncate under the mappings: %v", name, err)
		}
		if got, err := readMapped(m, 4000, 3); err != nil {
			t.Errorf("%s: the mapping inside the file after a shrink: %v", name, err)
		} else if coherent && got != "\x00\x00\x00" {
			t.Errorf("%s: the mapping shows %q inside the shrunk file", name, got)
		}
		if err := unix.Ftruncate(writer, size); err != nil {
			t.Errorf("%s: ftruncate back to %d: %v", name, size, err)
		}
		if _, err := unix.Pwrite(writer, []byte("tail"), size-4); err != nil {
			t.Errorf("%s: pwrite at the end: %v", name, err)
		}
		if got, err := readMapped(m, size-4, 4); err != nil {
			t.Errorf("%s: the mapping's last page after the file grew again: %v", name, err)
		} else if coherent && got != "tail" {
			t.Errorf("%s: the mapping's last bytes read %q, want \"tail\"", name, got)
		}
		if err := unix.Msync(m, unix.MS_SYNC|unix.MS_INVALIDATE); err != nil {
			t.Errorf("%s: msync: %v", name, err)
		}
		unix.Munmap(private)
		unix.Munmap(m)
		unix.Close(writer)
		unix.Close(reader)

		fresh := openOrFail(t, path, unix.O_RDONLY)
		m, err = unix.Mmap(fresh, 0, size, unix.PROT_READ, unix.MAP_SHARED)
		if err != nil {
			t.Fatalf("%s: mmap after the changes: %v", name, err)
		}
		if got, err := readMapped(m, size-4, 4); err != nil || got != "tail" {
			t.Errorf("%s: a new mapping reads %q, %v at the end; want \"tail\"", name, got, err)
		}
		if got, err := readMapped(m, 100, 3); err != nil || got != "\x00\x00\x00" {
			t.Errorf("%s: a new mapping reads %q, %v in the hole", name, got, err)
		}
		unix.Munmap(m)
		unix.Close(fresh)
	}
}

// readMapped copies n bytes at off out of a mapping, turning a fault (SIGBUS on a page the file no longer backs)
// into an error instead of a crash of the test binary.
func readMapped(m []byte, off, n int) (s string, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("fault reading the mapping at %d: %v", off, r)
		}
	}()
	return string(m[off : off+n]), nil
}

// RlimitFsize grows, shrinks and writes a file from programs under a file size limit (RLIMIT_FSIZE of 4096
// bytes, SIGXFSZ ignored), as the kernel's EFBIG path and stress tools exercise it, while the test holds a
// reader open: growing past the limit fails with "File too large" and leaves the size, shrinking and writing up
// to the limit succeed.
func RlimitFsize(t *testing.T, u Union) {
	for _, tool := range []string{"prlimit", "truncate", "dd", "sh"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed (util-linux, coreutils): %v", tool, err)
		}
	}
	mnt := fillSharing(t, u, "0123456789")
	limited := func(args ...string) (string, error) {
		// An ignored signal stays ignored across exec, so the tool gets EFBIG instead of dying of SIGXFSZ.
		script := `trap "" XFSZ; exec "$@"`
		cmd := exec.Command("prlimit", append([]string{"--fsize=4096", "--", "sh", "-c", script, "sh"}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, name := range sharingNames {
		path := filepath.Join(mnt, name)
		reader := openOrFail(t, path, unix.O_RDONLY)
		size := func(want int64, step string) {
			t.Helper()
			var st unix.Stat_t
			if err := unix.Fstat(reader, &st); err != nil || st.Size != want {
				t.Errorf("%s, %s: the reader sees size %d, %v; want %d", name, step, st.Size, err, want)
			}
			if err := unix.Stat(path, &st); err != nil || st.Size != want {
				t.Errorf("%s, %s: stat says size %d, %v; want %d", name, step, st.Size, err, want)
			}
		}
		out, err := limited("truncate", "-s", "8192", path)
		if err == nil || !strings.Contains(out, "File too large") {
			t.Errorf("%s: truncate past the limit: %v: %s; want it to fail with File too large", name, err, out)
		}
		size(10, "after a refused truncate")
		if out, err := limited("truncate", "-s", "4096", path); err != nil {
			t.Errorf("%s: truncate to the limit: %v: %s", name, err, out)
		}
		size(4096, "after a truncate to the limit")
		out, err = limited("dd", "if=/dev/zero", "of="+path, "bs=1000", "count=10", "conv=notrunc", "status=none")
		if err == nil || !strings.Contains(out, "File too large") {
			t.Errorf("%s: dd past the limit: %v: %s; want it to fail with File too large", name, err, out)
		}
		size(4096, "after dd stopped at the limit")
		if out, err := limited("truncate", "-s", "5", path); err != nil {
			t.Errorf("%s: shrinking under the limit: %v: %s", name, err, out)
		}
		size(5, "after a shrink")
		unix.Close(reader)
		wantContent(t, path, "\x00\x00\x00\x00\x00") // dd wrote zeros up to the limit
	}
	u.Unmount(t)
	if got, err := os.ReadFile(filepath.Join(u.Lower(0), "lower")); err != nil || string(got) != "0123456789" {
		t.Errorf("the lower file now holds %q, %v", got, err)
	}
}
