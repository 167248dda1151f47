package main

import (
	"os/exec"
	"testing"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// TestRemovingManyFilesUnderALowFileLimit removes more files than the daemon may hold descriptors (512): the
// files of a tree just created, which the kernel still knows when rm removes them. The daemon keeps a descriptor
// of a removed file the kernel knows (a process may use it through a descriptor), and used to keep it for the
// whole grace period after the kernel forgot the file: rm -rf then failed, and every program's next create with
// it, with EMFILE ("Too many open files"; found by the untar/rm -rf benchmark under this machine's limit of
// 20,000). A file with no name left is closed as soon as the kernel forgets it.
func TestRemovingManyFilesUnderALowFileLimit(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireTool(t, "prlimit", "util-linux")
	l := newLayout(t)
	if r := runCLIAs(t, "", []string{"prlimit", "--nofile=512:512"}, "ro="+l.lower, "rw="+l.upper, l.mnt); r.code != 0 {
		t.Fatalf("mount: exit %d: %s", r.code, r.stderr)
	}
	t.Cleanup(func() { unmountAndWait(t, l.mnt) })
	script := `set -e
cd "$1"
for round in 1 2 3; do
	mkdir tree
	for d in $(seq 20); do
		mkdir tree/d$d
		for f in $(seq 100); do : > tree/d$d/f$f; done
	done
	find tree -type f | wc -l
	rm -rf tree
done
: > after`
	out, err := exec.Command("bash", "-c", script, "script", l.mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("creating and removing 3 x 2,000 files under a limit of 512 descriptors: %v: %s", err, out)
	}
}
