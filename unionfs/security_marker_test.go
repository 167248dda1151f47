package unionfs

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

// Whiteout and marker forgery: in each marker format the daemon writes, root and an unprivileged user try to
// create, reveal or remove whiteouts, opaque markers and the daemon's temporary objects through the mount, with
// marker names, marker xattrs, renames, mknod of a 0/0 device and RENAME_WHITEOUT. Every attempt must fail (or
// make an ordinary object that means nothing to the union), the merged view must still hide what was hidden and
// show what was visible, and the upper layer's markers must be exactly as before.

// markerAttempt is one forgery attempt; ok lists the errnos it may end with (0: success, harmless).
type markerAttempt struct {
	name string
	fn   func(m string) error
	ok   []syscall.Errno
}

func setx(p, attr, val string) error { return unix.Lsetxattr(p, attr, []byte(val), 0) }

func getx(p, attr string) error {
	_, err := unix.Lgetxattr(p, attr, make([]byte, 256))
	return err
}

func markerAttempts() []markerAttempt {
	eperm := []syscall.Errno{syscall.EPERM}
	absent := []syscall.Errno{syscall.ENOENT}
	var a []markerAttempt
	add := func(name string, ok []syscall.Errno, fn func(m string) error) {
		a = append(a, markerAttempt{name, fn, ok})
	}
	// Marker names: creating them in any way.
	for _, n := range []string{".wh.visible", ".wh.hidden", ".wh..wh..opq", ".wh.new", whiteout.TempName(), ".wh..wh.aufs"} {
		n := n
		add("create "+n, eperm, func(m string) error { return createFile(m+"/dir/"+n, 0644) })
		add("mkdir "+n, eperm, func(m string) error { return unix.Mkdir(m+"/dir/"+n, 0755) })
		add("symlink "+n, eperm, func(m string) error { return unix.Symlink("visible", m+"/dir/"+n) })
		add("mkfifo "+n, eperm, func(m string) error { return unix.Mkfifo(m+"/dir/"+n, 0644) })
		add("link to "+n, eperm, func(m string) error { return unix.Link(m+"/dir/mine", m+"/dir/"+n) })
		add("rename onto "+n, eperm, func(m string) error { return unix.Rename(m+"/dir/mine", m+"/dir/"+n) })
		add("rename dir onto "+n, eperm, func(m string) error { return unix.Rename(m+"/dir/mydir", m+"/dir/"+n) })
		// Reaching markers that exist (or might) by name.
		add("unlink "+n, absent, func(m string) error { return unix.Unlink(m + "/dir/" + n) })
		add("rmdir "+n, absent, func(m string) error { return unix.Rmdir(m + "/dir/" + n) })
		add("rename from "+n, absent, func(m string) error { return unix.Rename(m+"/dir/"+n, m+"/dir/stolen") })
		add("stat "+n, absent, func(m string) error {
			var st unix.Stat_t
			return unix.Lstat(m+"/dir/"+n, &st)
		})
	}
	// Meta directories of unionfs-fuse, at the root.
	for _, n := range []string{whiteout.UnionfsMetaDir, whiteout.UnionfsLegacyMetaDir} {
		n := n
		add("create /"+n, eperm, func(m string) error { return createFile(m+"/"+n, 0644) })
		add("mkdir /"+n, eperm, func(m string) error { return unix.Mkdir(m+"/"+n, 0755) })
		add("symlink /"+n, eperm, func(m string) error { return unix.Symlink("dir", m+"/"+n) })
		add("rename dir onto /"+n, eperm, func(m string) error { return unix.Rename(m+"/dir/mydir", m+"/"+n) })
		add("create in /"+n, absent, func(m string) error { return createFile(m+"/"+n+"/dir/visible_HIDDEN~", 0644) })
		add("create marker path in /"+n, absent, func(m string) error { return createFile(m+"/"+n+"/x", 0644) })
		add("stat /"+n, absent, func(m string) error {
			var st unix.Stat_t
			return unix.Lstat(m+"/"+n, &st)
		})
		// Below the root the names mean nothing: ordinary directories.
		add("mkdir dir/"+n, []syscall.Errno{0}, func(m string) error { return unix.Mkdir(m+"/dir/"+n, 0777) })
	}
	// Names that look like unionfs-fuse markers outside the meta tree are ordinary names.
	add("create visible_HIDDEN~", []syscall.Errno{0}, func(m string) error { return createFile(m+"/dir/visible_HIDDEN~", 0644) })
	add("mkdir hidden_HIDDEN~", []syscall.Errno{0}, func(m string) error { return unix.Mkdir(m+"/dir/hidden_HIDDEN~", 0777) })
	// unionfs-fuse keeps the markers of a directory "hidden_HIDDEN~" at META/dir/hidden_HIDDEN~, the path of the
	// whiteout of "hidden": removing the directory must not remove the whiteout.
	add("mkdir and rmdir hidden_HIDDEN~", []syscall.Errno{0}, func(m string) error {
		if err := unix.Mkdir(m+"/dir/hidden_HIDDEN~", 0777); err != nil && err != syscall.EEXIST {
			return err
		}
		return unix.Rmdir(m + "/dir/hidden_HIDDEN~")
	})
	add("mkdir dir/.unionfs/dir", []syscall.Errno{0}, func(m string) error { return unix.Mkdir(m+"/dir/.unionfs/dir", 0777) })
	add("create dir/.unionfs/dir/visible_HIDDEN~", []syscall.Errno{0}, func(m string) error {
		return createFile(m+"/dir/.unionfs/dir/visible_HIDDEN~", 0644)
	})
	// Marker xattrs: never set, removed, read or listed.
	for _, x := range []string{whiteout.OverlayOpaqueXattr, whiteout.OverlayUserOpaqueXattr, whiteout.OverlayRedirectXattr,
		"trusted.overlay.metacopy", whiteout.OverlayWhiteoutXattr, whiteout.OverlayUserWhiteoutXattr, "trusted.overlay.origin",
		"user.overlay.redirect"} {
		x := x
		add("setxattr "+x+" on a dir", eperm, func(m string) error { return setx(m+"/dir", x, "y") })
		add("setxattr "+x+" on a file", eperm, func(m string) error { return setx(m+"/dir/mine", x, "y") })
		add("setxattr "+x+" on the opaque dir", eperm, func(m string) error { return setx(m+"/opaque", x, "x") })
		add("removexattr "+x+" of the opaque dir", eperm, func(m string) error { return unix.Lremovexattr(m+"/opaque", x) })
		add("removexattr "+x+" of a dir", eperm, func(m string) error { return unix.Lremovexattr(m+"/dir", x) })
		add("getxattr "+x+" of the opaque dir", []syscall.Errno{syscall.ENODATA}, func(m string) error { return getx(m+"/opaque", x) })
	}
	add("listxattr of the opaque dir", []syscall.Errno{0}, func(m string) error {
		buf := make([]byte, 4096)
		n, err := unix.Llistxattr(m+"/opaque", buf)
		if err != nil {
			return err
		}
		if strings.Contains(string(buf[:n]), "overlay.") {
			return fmt.Errorf("listxattr shows %q", buf[:n])
		}
		return nil
	})
	// Devices and flags that make whiteouts.
	add("mknod c 0 0", eperm, func(m string) error { return unix.Mknod(m+"/dir/new", unix.S_IFCHR|0644, 0) })
	add("mknod c 0 0 over a hidden name", eperm, func(m string) error { return unix.Mknod(m+"/dir/hidden", unix.S_IFCHR|0644, 0) })
	add("RENAME_WHITEOUT", []syscall.Errno{syscall.EINVAL, syscall.EPERM}, func(m string) error {
		return unix.Renameat2(unix.AT_FDCWD, m+"/dir/mine", unix.AT_FDCWD, m+"/dir/moved", unix.RENAME_WHITEOUT)
	})
	return a
}

// markerState describes the upper layer's markers: names with the aufs prefix, 0/0 devices, overlay xattrs and
// the unionfs-fuse meta trees, by path.
func markerState(t *testing.T, upper string) []string {
	t.Helper()
	var out []string
	filepath.Walk(upper, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			t.Errorf("walking %s: %v", p, err)
			return nil
		}
		rel, _ := filepath.Rel(upper, p)
		st := fi.Sys().(*syscall.Stat_t)
		top := strings.SplitN(rel, "/", 2)[0]
		if strings.HasPrefix(fi.Name(), whiteout.AufsPrefix) || top == whiteout.UnionfsMetaDir || top == whiteout.UnionfsLegacyMetaDir ||
			whiteout.IsOverlayWhiteout(&unix.Stat_t{Mode: st.Mode, Rdev: st.Rdev}) {
			out = append(out, fmt.Sprintf("%s %o", rel, st.Mode))
		}
		buf := make([]byte, 4096)
		n, _ := unix.Llistxattr(p, buf)
		for _, x := range strings.Split(string(buf[:max(n, 0)]), "\x00") {
			if whiteout.IsPrivateXattr(x) {
				v := make([]byte, 4096)
				k, _ := unix.Lgetxattr(p, x, v)
				out = append(out, fmt.Sprintf("%s %s=%q", rel, x, v[:max(k, 0)]))
			}
		}
		return nil
	})
	sort.Strings(out)
	return out
}

func TestSecurityMarkerForgery(t *testing.T) {
	testutil.RequireRoot(t)
	for _, format := range []string{"overlay", "aufs", "unionfs-fuse", "unionfs-fuse-1.0"} {
		t.Run(format, func(t *testing.T) {
			u := newTestUnion(t, 1)
			u.cfg.Whiteout = format
			reachable(t, u.dir)
			l := u.Lower(0)
			for _, d := range []string{"dir", "dir/sub", "opaque", "opaque/sub"} {
				must(t, os.Mkdir(filepath.Join(l, d), 0777))
				must(t, os.Chmod(filepath.Join(l, d), 0777))
			}
			for _, f := range []string{"dir/hidden", "dir/visible", "dir/sub/inner", "opaque/lowerfile", "opaque/sub/deep"} {
				must(t, os.WriteFile(filepath.Join(l, f), []byte(f), 0666))
			}
			lowerBefore := mustSnapshot(t, l)
			mnt := u.Mount(t)
			// The marker state: a whiteout (dir/hidden), an opaque directory (opaque, made anew), and objects to play
			// with.
			must(t, os.Remove(filepath.Join(mnt, "dir/hidden")))
			must(t, os.RemoveAll(filepath.Join(mnt, "opaque")))
			must(t, os.Mkdir(filepath.Join(mnt, "opaque"), 0777))
			must(t, os.Chmod(filepath.Join(mnt, "opaque"), 0777))
			must(t, os.WriteFile(filepath.Join(mnt, "opaque/mine"), []byte("mine"), 0666))
			before := markerState(t, u.Upper())
			if len(before) == 0 {
				t.Fatalf("no markers in the upper layer in format %s", format)
			}
			t.Logf("markers: %v", before)
			tried := 0
			for _, who := range []int{0, attacker} {
				// Fresh objects to rename, owned by who.
				for _, p := range []string{"dir/mine", "dir/mydir"} {
					os.RemoveAll(filepath.Join(mnt, p))
				}
				must(t, os.WriteFile(filepath.Join(mnt, "dir/mine"), []byte("mine"), 0666))
				must(t, os.Mkdir(filepath.Join(mnt, "dir/mydir"), 0777))
				must(t, os.Lchown(filepath.Join(mnt, "dir/mine"), who, who))
				must(t, os.Lchown(filepath.Join(mnt, "dir/mydir"), who, who))
				for _, at := range markerAttempts() {
					var err error
					if who == 0 {
						err = at.fn(mnt)
					} else {
						asUserThread(t, who, who, func() { err = at.fn(mnt) })
					}
					tried++
					errno, isErrno := err.(syscall.Errno)
					if err != nil && !isErrno {
						var pe *os.PathError
						if pe2, ok := err.(*os.PathError); ok {
							pe = pe2
							errno, isErrno = pe.Err.(syscall.Errno)
						}
					}
					good := false
					for _, e := range at.ok {
						if (e == 0 && err == nil) || (isErrno && e == errno) {
							good = true
						}
					}
					// A user meets the kernel's checks first: trusted.* and RENAME_WHITEOUT need capabilities,
					// the root directory is not theirs.
					if who != 0 && isErrno && (errno == syscall.EPERM || errno == syscall.EACCES && strings.Contains(at.name, " /")) {
						good = true
					}
					if !good {
						t.Errorf("as %d: %s: %v, want one of %v", who, at.name, err, at.ok)
					}
				}
				// Ordinary objects made by the attempts go, so that the next round starts alike.
				for _, p := range []string{"dir/.unionfs", "dir/.unionfs-fuse", "dir/visible_HIDDEN~", "dir/hidden_HIDDEN~", "dir/moved"} {
					os.RemoveAll(filepath.Join(mnt, p))
				}
			}
			t.Logf("%d attempts", tried)
			// The merged view: hidden stays hidden, visible stays visible, the opaque directory stays opaque.
			for _, p := range []string{"dir/hidden", "opaque/lowerfile", "opaque/sub", "dir/.wh.hidden", ".unionfs", ".unionfs-fuse"} {
				var st unix.Stat_t
				if err := unix.Lstat(filepath.Join(mnt, p), &st); err != syscall.ENOENT {
					t.Errorf("%s: %v, want ENOENT", p, err)
				}
			}
			for _, p := range []string{"dir/visible", "dir/sub/inner", "opaque/mine"} {
				if data, err := os.ReadFile(filepath.Join(mnt, p)); err != nil || !strings.HasSuffix(p, "mine") && string(data) != p {
					t.Errorf("%s: %q, %v", p, data, err)
				}
			}
			for _, d := range []string{".", "dir", "opaque"} {
				for _, n := range dirNames(t, filepath.Join(mnt, d)) {
					if whiteout.IsMarkerName(n) || d == "." && whiteout.IsRootMetaName(n) || n == "hidden" || n == "lowerfile" {
						t.Errorf("%s lists %s", d, n)
					}
				}
			}
			if after := markerState(t, u.Upper()); fmt.Sprint(after) != fmt.Sprint(before) {
				t.Errorf("the upper layer's markers changed:\nbefore: %v\nafter:  %v", before, after)
			}
			// After a remount too (nothing cached).
			u.Unmount(t)
			mnt = u.Mount(t)
			var st unix.Stat_t
			if err := unix.Lstat(filepath.Join(mnt, "dir/hidden"), &st); err != syscall.ENOENT {
				t.Errorf("after a remount dir/hidden: %v", err)
			}
			if err := unix.Lstat(filepath.Join(mnt, "opaque/lowerfile"), &st); err != syscall.ENOENT {
				t.Errorf("after a remount opaque/lowerfile: %v", err)
			}
			if err := unix.Lstat(filepath.Join(mnt, "dir/visible"), &st); err != nil {
				t.Errorf("after a remount dir/visible: %v", err)
			}
			u.Unmount(t)
			checkUnchanged(t, "the lower layer", l, lowerBefore)
		})
	}
}
