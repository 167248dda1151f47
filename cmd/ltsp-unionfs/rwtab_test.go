package main

import (
	"bufio"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// stockRwtab is /etc/rwtab as initscripts ships it (readonly-root): the allow-list of what a read-only root makes
// writable with a bind mount each. Under the union every path is writable without it.
const stockRwtab = `
dirs	/var/cache/man
dirs	/var/gdm
dirs	/var/lib/xkb
dirs	/var/log
dirs	/var/lib/puppet
dirs	/var/lib/dbus
dirs	/var/lib/nfs

empty	/tmp
empty	/var/cache/foomatic
empty	/var/cache/logwatch
empty	/var/cache/httpd/ssl
empty	/var/cache/httpd/proxy
empty	/var/cache/php-pear
empty	/var/cache/systemtap
empty	/var/db/nscd
empty	/var/lib/dav
empty	/var/lib/dhcpd
empty	/var/lib/dhclient
empty	/var/lib/php
empty	/var/lib/pulse
empty	/var/lib/systemd/timers
empty	/var/lib/ups
empty	/var/tmp

files	/etc/adjtime
files	/etc/ntp.conf
files	/etc/resolv.conf
files	/etc/lvm/cache
files	/etc/lvm/archive
files	/etc/lvm/backup
files	/var/account
files	/var/lib/arpwatch
files	/var/lib/NetworkManager
files	/var/cache/alchemist
files	/var/lib/gdm
files	/var/lib/iscsi
files	/var/lib/logrotate.status
files	/var/lib/ntp
files	/var/lib/xen
files	/var/empty/sshd/etc/localtime
files	/var/lib/random-seed
files	/var/spool
files	/var/lib/samba
files	/var/log/audit/audit.log
`

// rwtabFiles are the "files" entries that are regular files (the others are directories).
var rwtabFiles = map[string]bool{"/etc/adjtime": true, "/etc/ntp.conf": true, "/etc/resolv.conf": true,
	"/var/lib/logrotate.status": true, "/var/empty/sshd/etc/localtime": true, "/var/lib/random-seed": true,
	"/var/log/audit/audit.log": true}

// TestRwtabParity builds a lower layer holding every path of the stock rwtab and checks, through the union, what
// readonly-root's bind mounts allow and more: writing, replacing and deleting in each of them, rename() over
// /etc/resolv.conf (EBUSY on a bind-mounted file), hard links in /var, a socket in /run, and useradd, usermod
// and groupadd replacing /etc/passwd, /etc/shadow and /etc/group atomically with their lock files. The lower is
// unchanged.
func TestRwtabParity(t *testing.T) {
	testutil.RequireRoot(t)
	l := newLayout(t)
	var dirs, files []string
	sc := bufio.NewScanner(strings.NewReader(stockRwtab))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		if f[0] == "files" && rwtabFiles[f[1]] {
			files = append(files, f[1])
		} else {
			dirs = append(dirs, f[1])
		}
	}
	if len(dirs)+len(files) < 40 {
		t.Fatalf("parsed only %d rwtab paths", len(dirs)+len(files))
	}
	for _, d := range dirs {
		testutil.Mkdirs(t, filepath.Join(l.lower, d))
		testutil.WriteFile(t, filepath.Join(l.lower, d, "existing"), []byte("from the image\n"), 0644)
	}
	for _, f := range files {
		testutil.Mkdirs(t, filepath.Join(l.lower, filepath.Dir(f)))
		testutil.WriteFile(t, filepath.Join(l.lower, f), []byte("from the image\n"), 0644)
	}
	testutil.Mkdirs(t, filepath.Join(l.lower, "run"))
	testutil.Mkdirs(t, filepath.Join(l.lower, "home"))
	for _, f := range []string{"passwd", "group", "shadow", "gshadow", "login.defs"} {
		if out, err := exec.Command("cp", "-a", "/etc/"+f, filepath.Join(l.lower, "etc", f)).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
	}
	before, err := testutil.Snapshot(l.lower)
	if err != nil {
		t.Fatal(err)
	}
	mountBG(t, l)
	m := func(p string) string { return filepath.Join(l.mnt, p) }

	for _, d := range dirs {
		if err := os.WriteFile(m(d+"/new"), []byte("new\n"), 0644); err != nil {
			t.Errorf("creating a file in %s: %v", d, err)
		}
		if err := os.WriteFile(m(d+"/existing"), []byte("changed\n"), 0644); err != nil {
			t.Errorf("changing a file in %s: %v", d, err)
		}
		if err := os.Remove(m(d + "/existing")); err != nil {
			t.Errorf("removing a file in %s: %v", d, err)
		}
		if err := os.Mkdir(m(d+"/sub"), 0700); err != nil {
			t.Errorf("mkdir in %s: %v", d, err)
		}
	}
	for _, f := range files {
		// Replaced the way editors and resolvconf do: write a temporary file, rename it over the name.
		tmp := f + ".tmp"
		if err := os.WriteFile(m(tmp), []byte("replaced\n"), 0644); err != nil {
			t.Errorf("writing %s: %v", tmp, err)
			continue
		}
		if err := os.Rename(m(tmp), m(f)); err != nil {
			t.Errorf("rename over %s: %v", f, err)
		}
		if got, _ := os.ReadFile(m(f)); string(got) != "replaced\n" {
			t.Errorf("%s reads %q after the rename", f, got)
		}
	}
	// Hard links in /var.
	if err := os.Link(m("/var/lib/logrotate.status"), m("/var/lib/logrotate.status.old")); err != nil {
		t.Errorf("hard link in /var: %v", err)
	}
	if err := os.Link(m("/var/log/new"), m("/var/log/new.1")); err != nil {
		t.Errorf("hard link of a new file in /var/log: %v", err)
	}
	// A socket in /run.
	ln, err := net.Listen("unix", m("/run/test.sock"))
	if err != nil {
		t.Errorf("socket in /run: %v", err)
	} else {
		c, err := net.Dial("unix", m("/run/test.sock"))
		if err != nil {
			t.Errorf("connecting to the socket in /run: %v", err)
		} else {
			c.Close()
		}
		ln.Close()
	}
	// Accounts: useradd, usermod and groupadd lock, write and rename /etc/passwd, /etc/shadow, /etc/group and
	// /etc/gshadow, as passwd(1) does.
	for _, tool := range []string{"useradd", "usermod", "groupadd"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s (package passwd) is needed", tool)
		}
	}
	if out, err := exec.Command("useradd", "--root", l.mnt, "-m", "-s", "/bin/sh", "ltsptest").CombinedOutput(); err != nil {
		t.Fatalf("useradd --root: %v: %s", err, out)
	}
	const hash = "$6$saltsalt$qFmFH.bQmmtXzyBY0s9v7Oicd2z4XSIecDzlB5KiA2/jctKu9YterLp8wwnSq.qc.eoxqOmSuNw2xG8Z2L1WN0"
	if out, err := exec.Command("usermod", "--root", l.mnt, "-p", hash, "ltsptest").CombinedOutput(); err != nil {
		t.Fatalf("usermod --root: %v: %s", err, out)
	}
	if out, err := exec.Command("groupadd", "--root", l.mnt, "ltspgroup").CombinedOutput(); err != nil {
		t.Fatalf("groupadd --root: %v: %s", err, out)
	}
	for f, want := range map[string]string{"/etc/passwd": "ltsptest:", "/etc/group": "ltspgroup:",
		"/etc/gshadow": "ltspgroup:", "/etc/shadow": "ltsptest:" + hash + ":"} {
		b, _ := os.ReadFile(m(f))
		if !strings.Contains(string(b), want) {
			t.Errorf("%s has no %s entry", f, want)
		}
	}
	if st, err := os.Stat(m("/home/ltsptest")); err != nil || !st.IsDir() {
		t.Errorf("useradd -m made no home directory: %v", err)
	}
	unmountAndWait(t, l.mnt)
	after, err := testutil.Snapshot(l.lower)
	if err != nil {
		t.Fatal(err)
	}
	if d := testutil.DiffSnapshots(before, after); len(d) > 0 {
		t.Errorf("the lower layer changed:\n%s", strings.Join(d, "\n"))
	}
}
