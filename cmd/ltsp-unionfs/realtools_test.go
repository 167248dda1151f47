package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ltsp/ltsp-unionfs/fstest"
	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// Real tools changing the union: each scenario runs the same shell script on ltsp-unionfs and on kernel
// overlayfs (redirect_dir=on) over copies of the same lowers. The script must succeed with an empty stderr on
// the union, and the two resulting views must be the same.

// toolScenarios are shell scripts run with the mount point as $1 and a scratch directory as $2.
var toolScenarios = map[string]string{
	"cp -a": `cp -a "$1/usr" "$1/usr-copy" && cp -a "$1/etc/." "$1/etc-copy" && cp -a "$1/etc/hostname" "$1/usr/lib/"`,
	"tar x over lower files": `tar -C "$1" -cf "$2/etc.tar" etc usr/share && rm -rf "$1/etc/conf.d" &&
		tar -C "$1" --xattrs --xattrs-include='*' -xpf "$2/etc.tar" && tar -C "$1/usr/lib" -xpf "$2/etc.tar" etc`,
	"mv of lower directories": `mv "$1/usr/share" "$1/share" && mv "$1/share/doc" "$1/etc/doc" &&
		mv "$1/deep/0" "$1/deep/zero" && mkdir "$1/usr/share" && echo new > "$1/usr/share/file" &&
		mv "$1/many" "$1/usr/share/many" && mv "$1/etc/doc" "$1/usr/share/doc"`,
	"rsync -aHAX": `rsync -aHAX "$1/etc/" "$1/etc-sync/" && rsync -aHAX --delete "$1/usr/" "$1/deep/" &&
		rsync -aHAX "$1/etc-sync/" "$1/etc/"`,
	"rm -rf and recreate": `rm -rf "$1/usr" "$1/many" && mkdir -p "$1/usr/lib" && echo x > "$1/usr/lib/x" &&
		rm -rf "$1/deep/0/1" && mkdir "$1/deep/0/1" && chmod 700 "$1/deep/0/1"`,
	"chmod chown touch -R": `chmod -R go-w "$1/etc" && chown -R 1234:5678 "$1/usr/share" &&
		touch -h -d 2020-01-01 "$1/usr/lib/libx.so.1" && find "$1/many" -type f -exec chmod 600 {} +`,
	"ln and sed -i": `ln "$1/etc/hostname" "$1/etc/hostname.link" && sed -i s/fixture/changed/ "$1/etc/hostname" &&
		ln -sf /etc/hostname "$1/usr/lib/absolute-link" && ln -s ../deep "$1/etc/deep-link"`,
}

// toolCompare is what the views of a tool scenario must agree on: tools set times to now, so mtimes differ.
var toolCompare = fstest.CompareOptions{IgnoreAtime: true, IgnoreMtime: true, IgnoreDirSize: true}

func TestRealToolsLikeOverlay(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFUSE(t)
	for name, script := range toolScenarios {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			views := map[string]string{}
			for _, kind := range []string{"overlay", "union"} {
				base := filepath.Join(dir, kind)
				lower, upper, work, mnt, scratch := base+"/lower", base+"/upper", base+"/work", base+"/mnt", base+"/scratch"
				for _, d := range []string{lower, upper, work, mnt, scratch} {
					testutil.Mkdirs(t, d)
				}
				if err := testutil.BuildFixture(lower); err != nil {
					t.Fatal(err)
				}
				if kind == "overlay" {
					testutil.MountOverlay(t, []string{lower}, upper, work, mnt, "redirect_dir=on")
				} else {
					r := runCLI(t, "", "ro="+lower, "rw="+upper, mnt)
					if r.code != 0 {
						t.Fatalf("mount: %s", r.stderr)
					}
					t.Cleanup(func() { unmountAndWait(t, mnt) })
				}
				cmd := exec.Command("bash", "-e", "-o", "pipefail", "-c", script, "script", mnt, scratch)
				var stderr bytes.Buffer
				cmd.Stderr = &stderr
				cmd.Dir = scratch
				if err := cmd.Run(); err != nil {
					t.Fatalf("%s on %s: %v\n%s", name, kind, err, stderr.String())
				}
				if kind == "union" && stderr.Len() > 0 {
					t.Errorf("stderr on the union: %s", stderr.String())
				}
				views[kind] = mnt
			}
			want, err := fstest.Describe(views["overlay"], toolCompare)
			if err != nil {
				t.Fatal(err)
			}
			got, err := fstest.Describe(views["union"], toolCompare)
			if err != nil {
				t.Fatal(err)
			}
			if d := fstest.DiffDescriptions(want, got); d != "" {
				t.Errorf("the union's result differs from overlayfs's:\n%s", d)
			}
		})
	}
}

// TestGitOnUnion uses git on a repository that lives in the lower layer: status, commit, clone, checkout.
func TestGitOnUnion(t *testing.T) {
	testutil.RequireFUSE(t)
	l := newLayout(t)
	repo := filepath.Join(l.lower, "repo")
	script := `set -e
git init -q -b main "$1"
cd "$1"
git config user.email t@example.com
git config user.name tester
for i in 1 2 3; do mkdir -p dir$i; echo "file $i" > dir$i/file; done
git add -A
git commit -q -m initial
echo more >> dir1/file
git commit -q -am second`
	if out, err := exec.Command("bash", "-c", script, "script", repo).CombinedOutput(); err != nil {
		t.Fatalf("making the lower repository: %v\n%s", err, out)
	}
	mountBG(t, l)
	run := func(dir string, args ...string) string {
		t.Helper()
		cmd := exec.Command("git", args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@e", "GIT_COMMITTER_NAME=t",
			"GIT_COMMITTER_EMAIL=t@e", "GIT_CONFIG_NOSYSTEM=1", "HOME="+l.dir)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, stderr.String())
		}
		if stderr.Len() > 0 {
			t.Errorf("git %v wrote to stderr: %s", args, stderr.String())
		}
		return stdout.String()
	}
	mrepo := filepath.Join(l.mnt, "repo")
	run(l.dir, "config", "--global", "--add", "safe.directory", "*")
	if out := run(mrepo, "status", "--porcelain"); out != "" {
		t.Errorf("a clean lower repository shows changes through the union: %q", out)
	}
	testutil.WriteFile(t, filepath.Join(mrepo, "dir2", "file"), []byte("changed\n"), 0644)
	os.RemoveAll(filepath.Join(mrepo, "dir3"))
	if out := run(mrepo, "status", "--porcelain"); !strings.Contains(out, " M dir2/file") || !strings.Contains(out, " D dir3/file") {
		t.Errorf("status after changes: %q", out)
	}
	run(mrepo, "commit", "-q", "-am", "through the union")
	if out := run(mrepo, "status", "--porcelain"); out != "" {
		t.Errorf("status after commit: %q", out)
	}
	run(l.mnt, "clone", "-q", mrepo, filepath.Join(l.mnt, "clone"))
	if out := run(filepath.Join(l.mnt, "clone"), "log", "--oneline"); strings.Count(out, "\n") != 3 {
		t.Errorf("the clone has %q", out)
	}
	run(mrepo, "checkout", "-q", "HEAD~2")
	if b, _ := os.ReadFile(filepath.Join(mrepo, "dir3", "file")); string(b) != "file 3\n" {
		t.Errorf("checkout restored %q", b)
	}
	run(mrepo, "gc", "-q")
	run(mrepo, "fsck", "--no-progress")
}

// TestDpkgInstallOnUnion installs, upgrades and removes a package with dpkg on a root that lives in the lower
// layer: dpkg's own way of replacing files (unpack to .dpkg-new, rename over) and its database updates.
func TestDpkgInstallOnUnion(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFUSE(t)
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Fatal("dpkg-deb is needed")
	}
	l := newLayout(t)
	// A minimal dpkg root in the lower layer, with a file the package will replace.
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "usr/share/doc", "etc"} {
		testutil.Mkdirs(t, filepath.Join(l.lower, d))
	}
	testutil.WriteFile(t, filepath.Join(l.lower, "var/lib/dpkg/status"), nil, 0644)
	testutil.WriteFile(t, filepath.Join(l.lower, "var/lib/dpkg/available"), nil, 0644)
	testutil.WriteFile(t, filepath.Join(l.lower, "usr/share/doc/existing"), []byte("from the image\n"), 0644)
	build := func(version string) string {
		pkg := filepath.Join(l.dir, "pkg-"+version)
		testutil.Mkdirs(t, filepath.Join(pkg, "DEBIAN"))
		testutil.Mkdirs(t, filepath.Join(pkg, "usr/share/ltsp-test"))
		testutil.Mkdirs(t, filepath.Join(pkg, "etc"))
		os.WriteFile(filepath.Join(pkg, "DEBIAN/control"), []byte("Package: ltsp-test\nVersion: "+version+
			"\nArchitecture: all\nMaintainer: t <t@e>\nDescription: test package\n"), 0644)
		testutil.WriteFile(t, filepath.Join(pkg, "DEBIAN/conffiles"), []byte("/etc/ltsp-test.conf\n"), 0644)
		testutil.WriteFile(t, filepath.Join(pkg, "etc/ltsp-test.conf"), []byte("version="+version+"\n"), 0644)
		testutil.WriteFile(t, filepath.Join(pkg, "usr/share/ltsp-test/data"), bytes.Repeat([]byte(version), 10000), 0644)
		deb := pkg + ".deb"
		if out, err := exec.Command("dpkg-deb", "--root-owner-group", "-Zgzip", "--build", pkg, deb).CombinedOutput(); err != nil {
			t.Fatalf("dpkg-deb: %v\n%s", err, out)
		}
		return deb
	}
	v1, v2 := build("1.0"), build("2.0")
	mountBG(t, l)
	dpkg := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("dpkg", append([]string{"--root=" + l.mnt, "--force-not-root", "--force-script-chrootless",
			"--log=/dev/null"}, args...)...)
		cmd.Env = append(os.Environ(), "PATH=/usr/sbin:/usr/bin:/sbin:/bin")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("dpkg %v: %v\n%s%s", args, err, stdout.String(), stderr.String())
		}
		for _, line := range dpkgStderr(stderr.String()) {
			t.Errorf("dpkg %v wrote to stderr: %s", args, line)
		}
		return stdout.String()
	}
	dpkg("-i", v1)
	if out := dpkg("-s", "ltsp-test"); !strings.Contains(out, "Status: install ok installed") || !strings.Contains(out, "Version: 1.0") {
		t.Fatalf("after install: %s", out)
	}
	dpkg("-i", v2)
	if b, _ := os.ReadFile(filepath.Join(l.mnt, "etc/ltsp-test.conf")); string(b) != "version=2.0\n" {
		t.Errorf("conffile after upgrade: %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(l.mnt, "usr/share/ltsp-test/data")); !bytes.Equal(b, bytes.Repeat([]byte("2.0"), 10000)) {
		t.Error("data file after upgrade has the wrong content")
	}
	dpkg("--purge", "ltsp-test")
	for _, p := range []string{"etc/ltsp-test.conf", "usr/share/ltsp-test"} {
		if _, err := os.Lstat(filepath.Join(l.mnt, p)); !os.IsNotExist(err) {
			t.Errorf("%s after purge: %v", p, err)
		}
	}
	if out := dpkg("-l"); strings.Contains(out, "ltsp-test") {
		t.Errorf("still listed after purge: %s", out)
	}
	if b, err := os.ReadFile(filepath.Join(l.lower, "var/lib/dpkg/status")); err != nil || len(b) != 0 {
		t.Errorf("the lower dpkg database changed: %q %v", b, err)
	}
	if b, _ := os.ReadFile(filepath.Join(l.mnt, "usr/share/doc/existing")); string(b) != "from the image\n" {
		t.Errorf("an unrelated lower file changed: %q", b)
	}
}

// chrootBinaries are the host programs a dpkg chroot needs (with their libraries, found with ldd).
var chrootBinaries = []string{"/usr/bin/dpkg", "/usr/bin/dpkg-deb", "/usr/bin/dpkg-query", "/usr/bin/dpkg-split",
	"/bin/sh", "/usr/bin/rm", "/usr/bin/tar", "/usr/bin/diff", "/sbin/ldconfig", "/sbin/start-stop-daemon"}

// buildChroot copies the programs dpkg needs, with their libraries, into root, and makes an empty dpkg database.
func buildChroot(t *testing.T, root string) {
	t.Helper()
	copyFile := func(src string) {
		real, err := filepath.EvalSymlinks(src)
		if err != nil {
			t.Fatalf("%s: %v", src, err)
		}
		testutil.Mkdirs(t, filepath.Join(root, filepath.Dir(real)))
		if out, err := exec.Command("cp", "-aL", real, filepath.Join(root, real)).CombinedOutput(); err != nil {
			t.Fatalf("cp %s: %v: %s", real, err, out)
		}
		if real != src {
			testutil.Mkdirs(t, filepath.Join(root, filepath.Dir(src)))
			testutil.Symlink(t, real, filepath.Join(root, src))
		}
	}
	for _, b := range chrootBinaries {
		copyFile(b)
		out, _ := exec.Command("ldd", b).Output()
		for _, f := range strings.Fields(string(out)) {
			if strings.HasPrefix(f, "/") {
				if _, err := os.Stat(filepath.Join(root, f)); os.IsNotExist(err) {
					copyFile(f)
				}
			}
		}
	}
	for _, d := range []string{"var/lib/dpkg/info", "var/lib/dpkg/updates", "var/lib/dpkg/triggers", "tmp", "etc"} {
		testutil.Mkdirs(t, filepath.Join(root, d))
	}
	testutil.WriteFile(t, filepath.Join(root, "var/lib/dpkg/status"), nil, 0644)
	testutil.WriteFile(t, filepath.Join(root, "var/lib/dpkg/available"), nil, 0644)
}

// TestDpkgInChroot installs a package with maintainer scripts into a chroot whose root lives in the lower layer:
// dpkg, its shell and its libraries run from the union.
func TestDpkgInChroot(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFUSE(t)
	l := newLayout(t)
	buildChroot(t, l.lower)
	pkg := filepath.Join(l.dir, "pkg")
	testutil.Mkdirs(t, filepath.Join(pkg, "DEBIAN"))
	testutil.Mkdirs(t, filepath.Join(pkg, "usr/share/ltsp-test"))
	os.WriteFile(filepath.Join(pkg, "DEBIAN/control"), []byte("Package: ltsp-test\nVersion: 1.0\nArchitecture: all\n"+
		"Maintainer: t <t@e>\nDescription: test package\n"), 0644)
	testutil.WriteFile(t, filepath.Join(pkg, "DEBIAN/postinst"), []byte("#!/bin/sh\nset -e\necho configured > /var/lib/ltsp-test.state\n"), 0755)
	testutil.WriteFile(t, filepath.Join(pkg, "DEBIAN/postrm"), []byte("#!/bin/sh\nset -e\nrm -f /var/lib/ltsp-test.state\n"), 0755)
	testutil.WriteFile(t, filepath.Join(pkg, "usr/share/ltsp-test/data"), []byte("packaged\n"), 0644)
	if out, err := exec.Command("dpkg-deb", "--root-owner-group", "--build", pkg, filepath.Join(l.dir, "pkg.deb")).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb: %v: %s", err, out)
	}
	mountBG(t, l)
	deb, _ := os.ReadFile(filepath.Join(l.dir, "pkg.deb"))
	testutil.WriteFile(t, filepath.Join(l.mnt, "tmp/pkg.deb"), deb, 0644)
	chroot := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("chroot", append([]string{l.mnt}, args...)...)
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("chroot %v: %v\n%s%s", args, err, stdout.String(), stderr.String())
		}
		for _, line := range dpkgStderr(stderr.String()) {
			t.Errorf("chroot %v wrote to stderr: %s", args, line)
		}
		return stdout.String()
	}
	chroot("/usr/bin/dpkg", "-i", "/tmp/pkg.deb")
	if b, _ := os.ReadFile(filepath.Join(l.mnt, "var/lib/ltsp-test.state")); string(b) != "configured\n" {
		t.Errorf("postinst did not run: %q", b)
	}
	if out := chroot("/usr/bin/dpkg-query", "-W", "-f=${Status}", "ltsp-test"); out != "install ok installed" {
		t.Errorf("status %q", out)
	}
	chroot("/usr/bin/dpkg", "--purge", "ltsp-test")
	if _, err := os.Lstat(filepath.Join(l.mnt, "var/lib/ltsp-test.state")); !os.IsNotExist(err) {
		t.Errorf("postrm did not run: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(l.lower, "var/lib/dpkg/status")); len(b) != 0 {
		t.Errorf("the lower dpkg database changed")
	}
}

// dpkgStderr returns the lines of dpkg's stderr that report a problem: dpkg warns on any filesystem when it keeps
// a directory that holds files no package owns (those of the image), which is no problem.
func dpkgStderr(s string) []string {
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(s), "\n") {
		if line != "" && !strings.Contains(line, "not empty so not removed") {
			out = append(out, line)
		}
	}
	return out
}
