package unionfs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/fstest"
)

// Clients in a child process. A test that serves the union from its own process must not touch the mount with
// mmap: a page fault on a mapped FUSE file blocks its thread in the kernel until the daemon answers, and if Go's
// garbage collector stops the world meanwhile it waits for that thread forever while the daemon's goroutines
// wait for the collector. The stress and fsx workloads therefore run in a child process of the test binary
// (TestMain runs clientMain instead of the tests when clientEnv names a client), and report back as JSON.

const clientEnv = "LTSP_UNIONFS_TEST_CLIENT"

// stressArgs are the arguments of the "stress" and "replay" clients.
type stressArgs struct {
	Mnt string
	Cfg fstest.StressConfig
	Ops []fstest.Op // replay: one worker's operations
}

// fsxArgs are the arguments of the "fsx" client: the file, and files holding its initial content and the copy
// source (the lower layer's copies).
type fsxArgs struct {
	Path, WantFrom, Src, SrcFrom string
	Cfg                          fstest.FsxConfig
}

// mmapArgs are the arguments of the "mmap" client: it maps Len bytes of the file at Path (read-write when Write
// is set, which it copies to the mapping's start and msyncs) and returns the mapping's first Len bytes.
type mmapArgs struct {
	Path  string
	Len   int
	Write string
}

// mmapInChild maps a file in a child process (see above) and returns what the mapping held.
func mmapInChild(t *testing.T, path string, n int, write string) string {
	t.Helper()
	var got string
	runClient(t, "mmap", mmapArgs{Path: path, Len: n, Write: write}, &got)
	return got
}

// mmapFile is the "mmap" client.
func mmapFile(a mmapArgs) (string, error) {
	flag, prot := os.O_RDONLY, unix.PROT_READ
	if a.Write != "" {
		flag, prot = os.O_RDWR, unix.PROT_READ|unix.PROT_WRITE
	}
	f, err := os.OpenFile(a.Path, flag, 0)
	if err != nil {
		return "", err
	}
	defer f.Close()
	m, err := unix.Mmap(int(f.Fd()), 0, a.Len, prot, unix.MAP_SHARED)
	if err != nil {
		return "", err
	}
	defer unix.Munmap(m)
	if a.Write != "" {
		copy(m, a.Write)
		if err := unix.Msync(m, unix.MS_SYNC); err != nil {
			return "", err
		}
	}
	return string(m), nil
}

// runClient runs the named client with args in a child process and decodes its result into result.
func runClient(t *testing.T, name string, args, result any) {
	t.Helper()
	in, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), clientEnv+"="+name)
	cmd.Stdin = bytes.NewReader(in)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("client %s: %v\n%s", name, err, stderr.String())
	}
	if err := json.Unmarshal(out, result); err != nil {
		t.Fatalf("client %s: %v in its output %q\n%s", name, err, out, stderr.String())
	}
}

// clientMain runs the named client: arguments as JSON on stdin, the result as JSON on stdout.
func clientMain(name string) int {
	var result any
	switch name {
	case "stress", "replay":
		var a stressArgs
		if err := json.NewDecoder(os.Stdin).Decode(&a); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		if name == "stress" {
			result = fstest.Stress(a.Mnt, a.Cfg)
		} else {
			result = fstest.ReplayWorker(a.Mnt, a.Ops)
		}
	case "mmap":
		var a mmapArgs
		if err := json.NewDecoder(os.Stdin).Decode(&a); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		got, err := mmapFile(a)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		result = got
	case "fsx":
		var a fsxArgs
		if err := json.NewDecoder(os.Stdin).Decode(&a); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		want, err := os.ReadFile(a.WantFrom)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		src, err := os.ReadFile(a.SrcFrom)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		result = fstest.Fsx(a.Path, want, a.Src, src, a.Cfg)
	default:
		fmt.Fprintf(os.Stderr, "unknown client %q\n", name)
		return 2
	}
	if err := json.NewEncoder(os.Stdout).Encode(result); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
