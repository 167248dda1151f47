package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// TestToolsReadLikeOverlay mounts the fixture (below a small top lower) with the binary and with kernel
// overlayfs and runs real tools over both: find, tar, cp -a, getfattr, rsync and du must print the same, stderr
// included (tar says it ignores the fixture's socket on both).
func TestToolsReadLikeOverlay(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLayout(t)
	testutil.Mkdirs(t, filepath.Join(l.lower, "etc"))
	testutil.WriteFile(t, filepath.Join(l.lower, "etc", "hostname"), []byte("top lower\n"), 0644)
	testutil.WriteFile(t, filepath.Join(l.lower, "added"), []byte("added\n"), 0600)
	// overlayfs writes trusted.overlay.uuid into the upper directory when it mounts: mount it first, so that the
	// union does not see its upper layer change behind its back.
	ovl := filepath.Join(l.dir, "ovl")
	work := filepath.Join(l.dir, "work")
	testutil.Mkdirs(t, ovl)
	testutil.Mkdirs(t, work)
	testutil.MountOverlay(t, []string{l.lower, fixtureDir}, l.upper, work, ovl, "ro")
	lowers := l.lower + ":" + fixtureDir
	r := runCLI(t, "", "ro="+lowers, "rw="+l.upper, l.mnt)
	if r.code != 0 {
		t.Fatalf("mount: exit %d: %s", r.code, r.stderr)
	}
	t.Cleanup(func() { unmountAndWait(t, l.mnt) })

	tools := map[string]string{
		"find":     `cd "$1" && find . -printf '%p %y %m %U %G %s %T@ %l\n' | sort`,
		"tar":      `tar -C "$1" --xattrs --xattrs-include='*' --acls -cf - . | tar -tvf - | sort`,
		"getfattr": `cd "$1" && { getfattr -R -P -d -m - . 2>&1; true; } | grep -v '^$' | sort`,
		"rsync":    `rsync -naHAXi --out-format='%n %i' "$1"/ /nonexistent/ | sort`,
		"du":       `du -a --apparent-size "$1" | sed "s|$1||" | sort`,
	}
	for name, script := range tools {
		t.Run(name, func(t *testing.T) {
			want, wantErr := shell(t, script, ovl)
			got, gotErr := shell(t, script, l.mnt)
			if gotErr != wantErr {
				t.Errorf("stderr on the union: %q, on overlayfs: %q", gotErr, wantErr)
			}
			if got != want {
				t.Errorf("output differs from overlayfs:\n%s", lineDiff(want, got))
			}
			if len(got) < 200 {
				t.Errorf("suspiciously little output: %q", got)
			}
		})
	}
	t.Run("cp -a", func(t *testing.T) {
		a, b := filepath.Join(l.dir, "copy-ovl"), filepath.Join(l.dir, "copy-union")
		for src, dst := range map[string]string{ovl: a, l.mnt: b} {
			out, err := exec.Command("cp", "-a", src+"/.", dst).CombinedOutput()
			if err != nil || len(out) > 0 {
				t.Fatalf("cp -a %s: %v: %s", src, err, out)
			}
		}
		fstest.CompareTrees(t, a, b, fstest.CompareOptions{IgnoreAtime: true})
	})
}

// shell runs a bash script with one argument and returns its stdout and stderr.
func shell(t *testing.T, script, arg string) (string, string) {
	t.Helper()
	cmd := exec.Command("bash", "-o", "pipefail", "-c", script, "script", arg)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s on %s: %v: %s", script, arg, err, stderr.String())
	}
	return stdout.String(), stderr.String()
}

// lineDiff shows the lines only one of two outputs has.
func lineDiff(want, got string) string {
	w, g := map[string]bool{}, map[string]bool{}
	for _, s := range strings.Split(want, "\n") {
		w[s] = true
	}
	for _, s := range strings.Split(got, "\n") {
		g[s] = true
	}
	var b strings.Builder
	n := 0
	for s := range w {
		if !g[s] && n < 20 {
			b.WriteString("- " + s + "\n")
			n++
		}
	}
	for s := range g {
		if !w[s] && n < 40 {
			b.WriteString("+ " + s + "\n")
			n++
		}
	}
	return b.String()
}
