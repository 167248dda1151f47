package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// TestMemoryPressure runs what a diskless client runs, under memory pressure as a client meets it, on the union
// and on kernel overlayfs over the same squashfs image: a chroot into each mount, with programs started from it
// over and over, find, tar and ls -lR walks of the image with its data, git commits in a repository of the image,
// and dpkg installing and purging a package. The programs run in a memory cgroup with a small limit (their page
// cache, dentries and inodes are reclaimed all the time; none may be OOM-killed), three at a time, while two loops
// drop the kernel's caches. Every step must succeed on the union and print what the same step prints on
// overlayfs, and the daemon must never have told the kernel ESTALE (but to retry after a copy-up), EIO or EINVAL,
// nor panicked. LTSP_UNIONFS_PRESSURE_DURATION sets how long (default 1m, a smoke run in CI; make stress runs it for
// PRESSURE_TIME).
func TestMemoryPressure(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFUSE(t)
	testutil.RequireTool(t, "mksquashfs", "squashfs-tools")
	for _, tool := range []string{"git", "tar", "find", "dpkg", "dpkg-deb", "chroot", "ldd"} {
		testutil.RequireTool(t, tool, tool)
	}
	duration := time.Minute
	if d, err := time.ParseDuration(os.Getenv("LTSP_UNIONFS_PRESSURE_DURATION")); err == nil {
		duration = d
	}
	dir := t.TempDir()
	image := buildPressureImage(t, dir)

	lower := filepath.Join(dir, "lower")
	testutil.Mkdirs(t, lower)
	testutil.Run(t, "mount", "-o", "loop,ro", image, lower)
	t.Cleanup(func() { testutil.Unmount(t, lower) })
	union, ovl := filepath.Join(dir, "union"), filepath.Join(dir, "overlay")
	for _, d := range []string{union, ovl, dir + "/upper", dir + "/oupper", dir + "/owork"} {
		testutil.Mkdirs(t, d)
	}
	if r := runCLI(t, "", "-o", "dev,suid", "ro="+lower, "rw="+dir+"/upper", union); r.code != 0 {
		t.Fatalf("mount: exit %d: %s", r.code, r.stderr)
	}
	t.Cleanup(func() { unmountAndWait(t, union) })
	testutil.MountOverlay(t, []string{lower}, dir+"/oupper", dir+"/owork", ovl)
	base := daemonStats(t, union)

	cg := memoryCgroup(t, 128<<20)
	procs := filepath.Join(cg.dir, "cgroup.procs")
	deadline := time.Now().Add(duration)
	stop := make(chan struct{})
	var droppers sync.WaitGroup
	for _, d := range []struct {
		what  string
		every time.Duration
	}{{"2", 50 * time.Millisecond}, {"3", 130 * time.Millisecond}} {
		droppers.Add(1)
		go func() {
			defer droppers.Done()
			for {
				select {
				case <-stop:
					return
				case <-time.After(d.every):
					os.WriteFile("/proc/sys/vm/drop_caches", []byte(d.what), 0)
				}
			}
		}()
	}

	var failures []string
	var mu sync.Mutex
	fail := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf(format, args...))
		}
	}
	var steps atomic.Int64
	// Each worker runs its steps on the union and then on overlayfs, so that stateful steps (git, dpkg) stay in
	// step on both.
	workers := [][]pressureStep{
		{stepExec, stepFind},
		{stepTar, stepLs},
		{stepGit, stepDpkg},
	}
	var wg sync.WaitGroup
	for w, list := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(deadline); i++ {
				s := list[i%len(list)]
				script := s.script(w*1000000 + i)
				got, gerr := chrootRun(procs, union, script)
				want, werr := chrootRun(procs, ovl, script)
				steps.Add(1)
				switch {
				case gerr != nil:
					fail("%s on the union: %v\n%s", s.name, gerr, got)
				case werr != nil:
					fail("%s on overlayfs (the reference): %v\n%s", s.name, werr, want)
				case got != want:
					fail("%s prints other lines on the union than on overlayfs: %s", s.name, firstDifference(got, want))
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	droppers.Wait()

	end := daemonStats(t, union)
	replies := map[string]uint64{}
	for k, v := range end.Replies {
		if d := v - base.Replies[k]; d > 0 {
			replies[k] = d
		}
	}
	t.Logf("%v: %d steps on each mount; %d requests; error replies %v, %d stale-node retries", duration,
		steps.Load(), sum(end.Requests)-sum(base.Requests), replies, end.StaleRetries-base.StaleRetries)
	if n := cg.oomKills(); n > 0 {
		// A killed program leaves a pipeline's output short: the comparisons below cannot be trusted.
		t.Errorf("the OOM killer ended %d programs of the steps: the cgroup's limit is too small for them", n)
	}
	for _, f := range failures {
		t.Error(f)
	}
	if n := replies["ESTALE"]; n > end.StaleRetries-base.StaleRetries {
		t.Errorf("the daemon replied ESTALE %d times, %d of them to retry after a copy-up", n,
			end.StaleRetries-base.StaleRetries)
	}
	if n := end.Panics - base.Panics; n > 0 {
		t.Errorf("%d requests panicked in the daemon", n)
	}
	for _, e := range []string{"EIO", "EINVAL"} {
		if replies[e] > 0 {
			t.Errorf("the daemon replied %s %d times", e, replies[e])
		}
	}
	if steps.Load() < 6 {
		t.Errorf("only %d steps ran", steps.Load())
	}
}

// pressureStep is one step of TestMemoryPressure: a shell script run in the chroot, whose output must be the
// same on both mounts.
type pressureStep struct {
	name   string
	script func(i int) string
}

// pressureWalked are the trees find and tar walk: what the other steps never change (dpkg makes and removes
// /usr/share, git changes /srv/repo), so that their output is the same whenever they run.
const pressureWalked = "/usr/bin /usr/sbin /usr/lib /srv/tree"

var (
	stepExec = pressureStep{"exec loop", func(int) string {
		return `for n in 1 2 3 4 5 6 7 8 9 10; do /bin/true || exit 1; done; ls -l /usr/bin | wc -l; cat /etc/passwd`
	}}
	stepFind = pressureStep{"find", func(int) string {
		return `find ` + pressureWalked + ` -printf '%y %p %m %s %l\n' > /tmp/find.$$ && sort /tmp/find.$$ && rm /tmp/find.$$`
	}}
	stepLs = pressureStep{"ls -lR", func(int) string {
		return `ls -lR ` + pressureWalked + ` > /tmp/ls.$$ && md5sum < /tmp/ls.$$ && rm /tmp/ls.$$`
	}}
	stepTar = pressureStep{"tar", func(int) string {
		return `{ tar cf - ` + pressureWalked + ` 2>/dev/null; echo $? > /tmp/tar.$$; } | md5sum && exit $(cat /tmp/tar.$$; rm /tmp/tar.$$)`
	}}
	stepGit = pressureStep{"git", func(i int) string {
		k := i % 50 // file k of the repository is dk%7/fk
		return fmt.Sprintf(`cd /srv/repo && git status --porcelain && echo %d > d%d/f%d &&
git -c user.name=t -c user.email=t@example.org commit -qam %d && git status --porcelain && git log --oneline | wc -l`,
			i, k%7, k, i)
	}}
	stepDpkg = pressureStep{"dpkg", func(int) string {
		return `dpkg -i /srv/ltsp-pressure.deb >/dev/null && dpkg-query -W -f '${Status} ${Version}\n' ltsp-pressure &&
cat /usr/share/ltsp-pressure/data && dpkg -P ltsp-pressure >/dev/null && test ! -e /usr/share/ltsp-pressure/data &&
dpkg-query -W -f '${db:Status-Abbrev}\n' ltsp-pressure 2>&1 | tail -1`
	}}
)

// firstDifference describes where output a (the union's) first differs from b (overlayfs's).
func firstDifference(a, b string) string {
	al, bl := strings.Split(a, "\n"), strings.Split(b, "\n")
	for i := 0; i < len(al) && i < len(bl); i++ {
		if al[i] != bl[i] {
			return fmt.Sprintf("line %d: %q against %q", i+1, al[i], bl[i])
		}
	}
	return fmt.Sprintf("%d lines against %d", len(al), len(bl))
}

// chrootRun runs script with sh in a chroot into root, inside the cgroup whose cgroup.procs is procs, and returns
// its output (stdout and stderr).
func chrootRun(procs, root, script string) (string, error) {
	cmd := exec.Command("sh", "-c", `echo $$ > "$1" && exec chroot "$2" /bin/sh -c "$3"`, "sh", procs, root, script)
	cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/root", "LC_ALL=C"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// memCgroup is a memory cgroup of TestMemoryPressure.
type memCgroup struct {
	dir string
	v2  bool
}

// oomKills returns how many processes the OOM killer ended in the cgroup.
func (c memCgroup) oomKills() int {
	file := "memory.oom_control"
	if c.v2 {
		file = "memory.events"
	}
	b, _ := os.ReadFile(filepath.Join(c.dir, file))
	for _, line := range strings.Split(string(b), "\n") {
		var n int
		if _, err := fmt.Sscanf(line, "oom_kill %d", &n); err == nil {
			return n
		}
	}
	return 0
}

// memoryCgroup makes a memory cgroup limited to limit bytes (cgroup v2 if its memory controller is there, v1
// otherwise). It is removed at cleanup.
func memoryCgroup(t *testing.T, limit int64) memCgroup {
	t.Helper()
	name := fmt.Sprintf("ltsp-unionfs-pressure-%d", os.Getpid())
	var cg memCgroup
	limitFile := "memory.limit_in_bytes"
	if b, err := os.ReadFile("/sys/fs/cgroup/cgroup.controllers"); err == nil && strings.Contains(string(b), "memory") {
		os.WriteFile("/sys/fs/cgroup/cgroup.subtree_control", []byte("+memory"), 0)
		cg, limitFile = memCgroup{dir: filepath.Join("/sys/fs/cgroup", name), v2: true}, "memory.max"
	} else if _, err := os.Stat("/sys/fs/cgroup/memory/cgroup.procs"); err == nil {
		cg.dir = filepath.Join("/sys/fs/cgroup/memory", name)
	} else {
		t.Fatal("no memory cgroup controller (neither cgroup v2 nor v1)")
	}
	if err := os.Mkdir(cg.dir, 0755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// The chroots have exited; a process still in it would make rmdir fail, which the test reports.
		for i := 0; ; i++ {
			err := os.Remove(cg.dir)
			if err == nil || i == 50 {
				if err != nil {
					t.Errorf("removing the cgroup: %v", err)
				}
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	if err := os.WriteFile(filepath.Join(cg.dir, limitFile), []byte(fmt.Sprint(limit)), 0); err != nil {
		t.Fatal(err)
	}
	return cg
}

// buildPressureImage builds the client image of TestMemoryPressure in dir and returns its squashfs file: the
// host's programs the steps run, with their libraries, a dpkg database, a git repository, a local package and a
// tree of files with data (48 MiB, to keep the page cache busy).
func buildPressureImage(t *testing.T, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "root")
	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "root", "tmp", "srv",
		"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "var/lib/dpkg/alternatives",
		"var/log", "etc/dpkg/dpkg.cfg.d"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(root, "tmp"), 01777)
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(root, l)); err != nil {
			t.Fatal(err)
		}
	}
	var programs []string
	for _, p := range []string{"sh", "true", "ls", "cat", "find", "sort", "md5sum", "wc", "tail", "test", "tar",
		"git", "dpkg", "dpkg-deb", "dpkg-query", "dpkg-split", "rm", "mkdir", "mv", "ln", "cp", "diff",
		"ldconfig", "start-stop-daemon"} {
		path, err := exec.LookPath(p)
		if err != nil {
			t.Fatalf("%s is needed: %v", p, err)
		}
		programs = append(programs, path)
	}
	files := map[string]bool{}
	for _, p := range programs {
		files[p] = true
		out, err := exec.Command("ldd", p).Output()
		if err != nil {
			continue // a script or a static program
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			for _, f := range strings.Fields(sc.Text()) {
				if strings.HasPrefix(f, "/") {
					files[f] = true
				}
			}
		}
	}
	for f := range files {
		dst := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(dst), 0755); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("cp", "-L", "--preserve=mode", f, dst).CombinedOutput(); err != nil {
			t.Fatalf("copying %s: %v: %s", f, err, out)
		}
	}
	write := func(name, content string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(root, name)
		testutil.Mkdirs(t, filepath.Dir(p))
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Mkdirs(t, filepath.Join(root, "dev"))
	for name, minor := range map[string]uint32{"null": 3, "zero": 5, "random": 8, "urandom": 9} {
		if err := unix.Mknod(filepath.Join(root, "dev", name), unix.S_IFCHR|0666, int(unix.Mkdev(1, minor))); err != nil {
			t.Fatal(err)
		}
	}
	write("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n", 0644)
	write("etc/group", "root:x:0:\n", 0644)
	write("var/lib/dpkg/status", "", 0644)
	write("var/lib/dpkg/available", "", 0644)

	// A tree with data, from a fixed seed.
	rnd := rand.New(rand.NewSource(1))
	buf := make([]byte, 16<<10)
	// 150 directories of 40 files: more listings than the daemon keeps cursors for (maxDirCursors), each longer
	// than one READDIRPLUS reply, so that listings are continued and cursors released while nodes are forgotten.
	for i := 0; i < 6000; i++ {
		rnd.Read(buf)
		write(fmt.Sprintf("srv/tree/d%03d/f%04d", i%150, i), string(buf[:1+(i*7919)%len(buf)]), 0644)
	}
	// A git repository.
	repo := filepath.Join(root, "srv/repo")
	for i := 0; i < 50; i++ {
		write(fmt.Sprintf("srv/repo/d%d/f%d", i%7, i), fmt.Sprintf("file %d\n", i), 0644)
	}
	mustRun(t, repo, "git", "init", "-q")
	mustRun(t, repo, "git", "add", ".")
	mustRun(t, repo, "git", "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "start")
	// A package to install and purge.
	pkg := filepath.Join(dir, "pkg")
	testutil.Mkdirs(t, filepath.Join(pkg, "DEBIAN"))
	testutil.Mkdirs(t, filepath.Join(pkg, "usr/share/ltsp-pressure"))
	os.WriteFile(filepath.Join(pkg, "DEBIAN/control"), []byte("Package: ltsp-pressure\nVersion: 1.0\n"+
		"Architecture: all\nMaintainer: t <t@example.org>\nDescription: test package\n"), 0644)
	testutil.WriteFile(t, filepath.Join(pkg, "usr/share/ltsp-pressure/data"), []byte("installed\n"), 0644)
	mustRun(t, "", "dpkg-deb", "--root-owner-group", "-b", pkg, filepath.Join(root, "srv/ltsp-pressure.deb"))

	image := filepath.Join(dir, "root.squashfs")
	mustRun(t, "", "mksquashfs", root, image, "-noappend", "-quiet", "-no-progress")
	t.Logf("image: %d programs and libraries, 6000 files of data, a git repository, a package", len(files))
	return image
}
