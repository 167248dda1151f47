package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// TestDiffMergeExitCodes checks the refusals of diff and merge: usage errors (2), missing or unusable directories
// (3) and an upper layer in use by a live union (8), each with one line naming what is at fault, and that a
// refused merge changes nothing.
func TestDiffMergeExitCodes(t *testing.T) {
	l := newLayout(t)
	file := filepath.Join(l.dir, "file")
	testutil.WriteFile(t, file, nil, 0644)
	into := filepath.Join(l.dir, "into")
	testutil.Mkdirs(t, into)
	testutil.WriteFile(t, filepath.Join(l.lower, "f"), []byte("lower\n"), 0644)
	testutil.WriteFile(t, filepath.Join(l.upper, "f"), []byte("upper\n"), 0644)
	inside := filepath.Join(l.upper, "inside")
	testutil.Mkdirs(t, inside)
	nope := filepath.Join(l.dir, "nope")
	cases := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"diff without upper", []string{"diff"}, exitUsage, "diff: missing UPPER"},
		{"diff with two uppers", []string{"diff", l.upper, l.lower}, exitUsage, "unexpected arguments after UPPER: " + l.lower},
		{"diff unknown flag", []string{"diff", "--bogus", l.upper}, exitUsage, "unknown flag: --bogus"},
		{"diff empty lower", []string{"diff", l.upper, "--lower", l.lower + "::" + l.lower2}, exitUsage, "empty layer path"},
		{"merge without --into", []string{"merge", l.upper}, exitUsage, "missing --into DIR"},
		{"merge without upper", []string{"merge", "--into", into}, exitUsage, "merge: missing UPPER"},
		{"diff missing upper", []string{"diff", nope}, exitLayer, "upper layer " + nope + " does not exist"},
		{"diff upper is a file", []string{"diff", file}, exitLayer, "upper layer " + file + " is not a directory"},
		{"diff missing lower", []string{"diff", l.upper, "--lower", l.lower + ":" + nope}, exitLayer, "lower layer " + nope + " does not exist"},
		{"merge missing upper", []string{"merge", nope, "--into", into}, exitLayer, "upper layer " + nope + " does not exist"},
		{"merge missing into", []string{"merge", l.upper, "--into", nope}, exitLayer, "directory " + nope + " does not exist"},
		{"merge into a file", []string{"merge", l.upper, "--into", file}, exitLayer, "directory " + file + " is not a directory"},
		{"merge into the upper", []string{"merge", l.upper, "--into", l.upper}, exitLayer, "is the upper layer itself"},
		{"merge into inside the upper", []string{"merge", l.upper, "--into", inside}, exitLayer, "lies inside the upper layer"},
		{"merge upper inside into", []string{"merge", inside, "--into", l.upper}, exitLayer, "lies inside the directory"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := runCLI(t, "", c.args...)
			if r.code != c.code {
				t.Errorf("exit %d, want %d; stderr: %s", r.code, c.code, r.stderr)
			}
			lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
			if len(lines) != 1 || !strings.HasPrefix(lines[0], "ltsp-unionfs: ") || !strings.Contains(lines[0], c.want) {
				t.Errorf("stderr %q, want one line containing %q", r.stderr, c.want)
			}
		})
	}

	// An upper layer in use: by ltsp-unionfs (its mount source does not name the upper layer), by kernel
	// overlayfs, by unionfs-fuse. Each refusal leaves the directory as it was; once unmounted, merge works.
	testutil.RequireRoot(t)
	work := filepath.Join(l.dir, "work")
	testutil.Mkdirs(t, work)
	before, _ := testutil.Snapshot(into)
	busy := func(t *testing.T, upper, want string) {
		t.Helper()
		for _, args := range [][]string{{"merge", upper, "--into", into}, {"merge", upper, "--into", into, "--dry-run"}} {
			r := runCLI(t, "", args...)
			if r.code != exitBusy || !strings.Contains(r.stderr, "is in use as the upper layer of "+want) || strings.Count(r.stderr, "\n") != 1 {
				t.Errorf("%v: exit %d, stderr %q; want %d and %q", args, r.code, r.stderr, exitBusy, want)
			}
		}
		// diff only reads: it works on a live upper layer.
		if r := runCLI(t, "", "diff", upper); r.code != 0 {
			t.Errorf("diff of a live upper layer: exit %d: %s", r.code, r.stderr)
		}
		after, _ := testutil.Snapshot(into)
		if d := testutil.DiffSnapshots(before, after); len(d) > 0 {
			t.Errorf("a refused merge changed the directory: %v", d)
		}
	}
	t.Run("ltsp-unionfs", func(t *testing.T) {
		mountBG(t, l, "-o", "fsname=union")
		busy(t, l.upper, "process ")
		unmountAndWait(t, l.mnt)
	})
	t.Run("ltsp-unionfs relative path", func(t *testing.T) {
		// Started from the layout directory with relative paths; merge names the upper layer another way.
		testutil.RequireFUSE(t)
		if r := runCLI(t, l.dir, "ro=lower", "rw=upper", "mnt"); r.code != 0 {
			t.Fatalf("mount: %s", r.stderr)
		}
		t.Cleanup(func() { unmountAndWait(t, l.mnt) })
		busy(t, l.upper+"/.", "process ")
		unmountAndWait(t, l.mnt)
	})
	t.Run("kernel overlayfs", func(t *testing.T) {
		testutil.MountOverlay(t, []string{l.lower}, l.upper, work, l.mnt)
		busy(t, l.upper, "the overlayfs mount on "+l.mnt)
		testutil.Unmount(t, l.mnt)
	})
	t.Run("unionfs-fuse", func(t *testing.T) {
		mountUnionfsFuse(t, requireUnionfsFuse(t), l.lower, l.upper, l.mnt)
		busy(t, l.upper, "")
		if out, err := exec.Command("fusermount3", "-u", l.mnt).CombinedOutput(); err != nil {
			t.Fatalf("fusermount3 -u: %v: %s", err, out)
		}
	})
	if r := runCLI(t, "", "merge", l.upper, "--into", into); r.code != 0 {
		t.Fatalf("merge after unmounting: exit %d: %s", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(into, "f")); string(b) != "upper\n" {
		t.Errorf("merged f holds %q", b)
	}
}

// TestMergeBigTree merges an upper layer of hundreds of changes into a copy of a lower layer of 1500 files,
// compares the result with the union's view, and checks that progress is drawn on a terminal (and nowhere else:
// the other tests require an empty stderr).
func TestMergeBigTree(t *testing.T) {
	testutil.RequireRoot(t)
	d := t.TempDir()
	lower, upper := filepath.Join(d, "lower"), filepath.Join(d, "upper")
	testutil.Mkdirs(t, lower)
	testutil.Mkdirs(t, upper)
	const dirs, files = 15, 100
	for i := 0; i < dirs; i++ {
		ld, ud := filepath.Join(lower, fmt.Sprintf("d%02d", i)), filepath.Join(upper, fmt.Sprintf("d%02d", i))
		testutil.Mkdirs(t, ld)
		testutil.Mkdirs(t, ud)
		for j := 0; j < files; j++ {
			name := fmt.Sprintf("f%03d", j)
			testutil.WriteFile(t, filepath.Join(ld, name), []byte(name+"\n"), 0644)
			switch j % 10 {
			case 0: // modified
				testutil.WriteFile(t, filepath.Join(ud, name), []byte("changed "+name+"\n"), 0644)
			case 1: // deleted
				if err := unix.Mknod(filepath.Join(ud, name), unix.S_IFCHR, 0); err != nil {
					t.Fatal(err)
				}
			case 2: // added beside
				testutil.WriteFile(t, filepath.Join(ud, name+".new"), []byte("new\n"), 0600)
			}
		}
	}
	into := filepath.Join(d, "into")
	testutil.Run(t, "cp", "-a", lower, into)

	start := time.Now()
	r := runCLI(t, "", "diff", upper, "--lower", lower)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("diff: exit %d: %s", r.code, r.stderr)
	}
	lines := strings.Count(r.stdout, "\n")
	if want := dirs * files * 3 / 10; lines != want {
		t.Errorf("diff listed %d changes, want %d", lines, want)
	}
	t.Logf("diff of %d lower files and %d upper objects: %d changes in %v", dirs*files, dirs*files*3/10+dirs, lines,
		time.Since(start))

	// On a terminal, progress shows on stderr.
	master, slave := openPty(t)
	cmd := exec.Command(binary, "merge", upper, "--into", into)
	cmd.Stderr = slave
	start = time.Now()
	if err := cmd.Run(); err != nil {
		t.Fatalf("merge: %v", err)
	}
	t.Logf("merge: %v", time.Since(start))
	slave.Close()
	master.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1<<16)
	n, _ := master.Read(buf)
	if out := string(buf[:n]); !strings.Contains(out, "\robjects read and changes applied: ") || !strings.HasSuffix(out, "\r\x1b[K") {
		t.Errorf("merge on a terminal drew %q, want a progress line that is erased at the end", out)
	}

	view := filepath.Join(d, "view")
	testutil.Mkdirs(t, view)
	if r := runCLI(t, "", "-o", "ro", "ro="+lower, "rw="+upper, view); r.code != 0 {
		t.Fatalf("mounting the view: %s", r.stderr)
	}
	t.Cleanup(func() { unmountAndWait(t, view) })
	n2 := fstest.CompareTrees(t, view, into, fstest.CompareOptions{IgnoreAtime: true, IgnoreDirNlink: true, IgnoreDirSize: true})
	if want := 1 + dirs + dirs*files; n2 != want {
		t.Errorf("compared %d objects, want %d", n2, want)
	}
}

// openPty opens a pseudo-terminal pair: the master to read what is drawn, the slave as a command's terminal.
func openPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("no pseudo-terminals: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); m.Close() })
	return m, s
}

// TestDiffMergeHelp checks that the help of diff and merge documents every flag, every exit code and (diff) the
// JSON fields.
func TestDiffMergeHelp(t *testing.T) {
	wants := map[string][]string{
		"diff":  {"--lower", "--json", `"kind"`, `"lower_type"`, `"from"`, `"metadata"`, `"metacopy"`, `"link"`, "Example"},
		"merge": {"--into", "--dry-run", "--verbose", "Example"},
	}
	for cmd, want := range wants {
		r := runCLI(t, "", cmd, "--help")
		if r.code != 0 {
			t.Fatalf("%s --help: exit %d", cmd, r.code)
		}
		for code := exitOK; code <= exitBusy; code++ {
			if !strings.Contains(r.stdout, fmt.Sprintf("\n  %d  ", code)) {
				t.Errorf("%s --help does not document exit code %d", cmd, code)
			}
		}
		for _, w := range want {
			if !strings.Contains(r.stdout, w) {
				t.Errorf("%s --help does not mention %s", cmd, w)
			}
		}
	}
}
