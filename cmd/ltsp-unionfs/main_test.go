package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// These tests run the real binary, built once by TestMain (with the race detector when the tests have it).

var (
	binary     string // path of the built ltsp-unionfs
	packageTmp string // every temporary directory of the package's tests is below it
	fixtureDir string // read-only fixture used as a lower layer; TestMain proves the tests never change it
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	flag.Parse()
	if f := flag.Lookup("test.fuzzworker"); f != nil && f.Value.String() == "true" {
		return m.Run() // a fuzzing worker runs one fuzz target, which needs neither the binary nor the fixture
	}
	return testutil.RunPackage(m, "cli", func(tmp, fixture string) error {
		packageTmp, fixtureDir = tmp, fixture
		binary = filepath.Join(tmp, "ltsp-unionfs")
		args := []string{"build", "-o", binary}
		if raceEnabled {
			args = append(args, "-race")
		}
		if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
			return fmt.Errorf("building ltsp-unionfs: %v\n%s", err, out)
		}
		return nil
	})
}

// result is what one run of the binary did.
type result struct {
	stdout, stderr string
	code           int
}

// runCLI runs the binary with args (in dir, if not empty) and returns its output and exit code. It fails the test
// if the binary does not finish within a minute.
func runCLI(t *testing.T, dir string, args ...string) result {
	t.Helper()
	return runCLIAs(t, dir, nil, args...)
}

// runCLIAs is runCLI with the command's start prefixed by prefix (e.g. setpriv to run as another user).
func runCLIAs(t *testing.T, dir string, prefix []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	argv := append(append(append([]string{}, prefix...), binary), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%v did not finish within a minute; stderr: %s", argv, stderr.String())
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %v: %v", argv, err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// layout is a set of layer directories and a mount point under one temporary directory.
type layout struct {
	dir, lower, lower2, upper, mnt string
}

func newLayout(t *testing.T) layout {
	t.Helper()
	d := t.TempDir()
	l := layout{dir: d, lower: filepath.Join(d, "lower"), lower2: filepath.Join(d, "lower2"),
		upper: filepath.Join(d, "upper"), mnt: filepath.Join(d, "mnt")}
	for _, p := range []string{l.lower, l.lower2, l.upper, l.mnt} {
		if err := os.Mkdir(p, 0755); err != nil {
			t.Fatal(err)
		}
	}
	return l
}

// mountBG mounts the layout with the binary in the background and registers an unmount at cleanup.
func mountBG(t *testing.T, l layout, extra ...string) {
	t.Helper()
	testutil.RequireFUSE(t)
	args := append([]string{"ro=" + l.lower + ":" + l.lower2, "rw=" + l.upper, l.mnt}, extra...)
	r := runCLI(t, "", args...)
	if r.code != 0 {
		t.Fatalf("mount: exit %d: %s", r.code, r.stderr)
	}
	t.Cleanup(func() { unmountAndWait(t, l.mnt) })
}

// unmountAndWait unmounts mnt if it is an ltsp-unionfs mount and waits for its daemon to exit.
func unmountAndWait(t *testing.T, mnt string) {
	t.Helper()
	m, ok := testutil.MountAt(mnt)
	if !ok || m.FSType != "fuse.ltsp-unionfs" {
		return
	}
	pids := daemonPIDs(mnt)
	if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
		t.Errorf("umount %s: %v: %s", mnt, err, out)
		testutil.Unmount(t, mnt)
	}
	waitGone(t, pids)
}

// daemonPIDs returns the processes whose command line names mnt as an argument and runs the binary.
func daemonPIDs(mnt string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "%d", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(cmdline), "\x00")
		exe, _ := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if exe != binary {
			continue
		}
		for _, a := range args {
			if a == mnt {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// waitGone waits up to ten seconds for the processes to exit.
func waitGone(t *testing.T, pids []int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for {
			if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
				break
			}
			stat, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
			if f := strings.Fields(string(stat)); len(f) > 2 && f[2] == "Z" {
				break // exited; its parent has not reaped it yet
			}
			if time.Now().After(deadline) {
				t.Errorf("daemon %d still runs 10s after its mount was unmounted", pid)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}
