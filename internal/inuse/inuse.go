// Package inuse tells whether a directory is the upper layer of a live union, so that the offline tools (merge,
// check --repair, convert) refuse to read or change an upper layer underneath its mount.
package inuse

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/mountinfo"
)

// Upper reports whether the directory upper is the upper layer of a live union, and describes it:
//
//   - a kernel overlayfs mount with upperdir=upper in /proc/self/mountinfo;
//   - a FUSE mount whose source names upper as its writable branch (rw=, upperdir=, or unionfs-fuse's
//     upper=RW);
//   - a FUSE daemon (ltsp-unionfs, unionfs-fuse, fuse-overlayfs...), in any mount namespace: a process that
//     holds /dev/fuse open and holds upper open or names it in its command line. ltsp-unionfs keeps a
//     descriptor of its upper layer, so this finds it whatever its mount's source says.
//
// Directories are compared by device and inode number, so any path to upper matches. Processes whose /proc
// entries cannot be read are skipped.
func Upper(upper string) (string, error) {
	var want unix.Stat_t
	if err := unix.Stat(upper, &want); err != nil {
		return "", err
	}
	same := func(p string) bool {
		var st unix.Stat_t
		return p != "" && unix.Stat(p, &st) == nil && st.Dev == want.Dev && st.Ino == want.Ino &&
			st.Mode&unix.S_IFMT == unix.S_IFDIR
	}
	canon, err := filepath.EvalSymlinks(upper)
	if err == nil {
		canon, err = filepath.Abs(canon)
	}
	if err != nil {
		canon = ""
	}
	if by := mountUsing(mountinfo.Self, canon, same); by != "" {
		return by, nil
	}
	return daemonUsing(canon, &want), nil
}

// mountUsing returns a description of the mount in the mountinfo file whose upper layer is the one at the
// canonical path canon, for which same reports true, or "".
func mountUsing(table, canon string, same func(string) bool) string {
	ms, _ := mountinfo.Read(table) // a table that cannot be read lists no mount
	for _, m := range ms {
		switch {
		case m.FSType == "overlay":
			// Commas inside values are escaped in octal: every raw comma separates options.
			for _, opt := range strings.Split(m.SuperOpts, ",") {
				if v, ok := strings.CutPrefix(opt, "upperdir="); ok && same(overlayPath(v)) {
					return fmt.Sprintf("the overlayfs mount on %s", m.MountPoint)
				}
			}
		case m.FSType == "fuse" || strings.HasPrefix(m.FSType, "fuse."):
			// Compared as strings: a stat(2) could hang on a path below a stopped FUSE daemon.
			for _, p := range branchPaths(m.Source) {
				if canon != "" && filepath.Clean(p) == canon {
					return fmt.Sprintf("the %s mount on %s", m.FSType, m.MountPoint)
				}
			}
		}
	}
	return ""
}

// overlayPath decodes a path overlayfs shows in its mount options: mountinfo escapes it in octal (see
// mountinfo.Unescape) and then the path still holds the backslashes that escaped ',' and ':' in the options it was
// mounted with ("upperdir=/a\,b" shows as upperdir=/a\134\054b).
func overlayPath(v string) string {
	v = mountinfo.Unescape(v)
	if !strings.Contains(v, `\`) {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] == '\\' && i+1 < len(v) {
			i++
		}
		b.WriteByte(v[i])
	}
	return b.String()
}

// branchPaths returns the writable-branch paths a union's source or command-line argument names: rw=P and
// upperdir=P (ltsp-unionfs, overlayfs options), P=RW (unionfs-fuse).
func branchPaths(s string) []string {
	var out []string
	for _, part := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ':' }) {
		k, v, ok := strings.Cut(part, "=")
		switch {
		case !ok:
		case strings.EqualFold(v, "RW"): // first: unionfs-fuse's branch may well be called /rw (/rw=RW)
			out = append(out, k)
		case k == "rw" || k == "upperdir":
			out = append(out, v)
		}
	}
	return out
}

// daemonUsing returns a description of a FUSE daemon that uses the upper layer (canonical path canon, attributes
// want), or "".
// Nothing here may touch another filesystem: a stopped FUSE daemon would hang a stat(2) of its files for ever.
// Descriptors are classified from /proc by their link text and fdinfo (no call reaches their filesystem), and
// the one candidate whose inode number matches is confirmed with a statx that uses cached attributes only.
func daemonUsing(canon string, want *unix.Stat_t) string {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return ""
	}
	self := os.Getpid()
	for _, e := range procs {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		dir := filepath.Join("/proc", e.Name())
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		if err != nil {
			continue
		}
		fuse := false
		for _, fd := range fds {
			if t, err := os.Readlink(filepath.Join(dir, "fd", fd.Name())); err == nil && t == "/dev/fuse" {
				fuse = true
				break
			}
		}
		if !fuse {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join(dir, "comm"))
		by := fmt.Sprintf("process %d (%s), a FUSE daemon", pid, strings.TrimSpace(string(comm)))
		for _, fd := range fds {
			if fdinfoIno(filepath.Join(dir, "fdinfo", fd.Name())) != want.Ino {
				continue
			}
			var stx unix.Statx_t
			err := unix.Statx(unix.AT_FDCWD, filepath.Join(dir, "fd", fd.Name()),
				unix.AT_STATX_DONT_SYNC|unix.AT_NO_AUTOMOUNT, unix.STATX_TYPE|unix.STATX_INO, &stx)
			if err == nil && stx.Ino == want.Ino && unix.Mkdev(stx.Dev_major, stx.Dev_minor) == want.Dev &&
				stx.Mode&unix.S_IFMT == unix.S_IFDIR {
				return by
			}
		}
		if canon == "" {
			continue
		}
		cwd, _ := os.Readlink(filepath.Join(dir, "cwd"))
		if cmdline, err := os.ReadFile(filepath.Join(dir, "cmdline")); err == nil {
			for _, arg := range strings.Split(string(cmdline), "\x00") {
				for _, p := range branchPaths(arg) {
					if !filepath.IsAbs(p) {
						p = filepath.Join(cwd, p)
					}
					if filepath.Clean(p) == canon {
						return by
					}
				}
			}
		}
	}
	return ""
}

// fdinfoIno returns the inode number a /proc/PID/fdinfo file gives, or 0.
func fdinfoIno(path string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "ino:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// BusyError says that a mount uses the upper layer, so that changing it underneath would corrupt the mount's
// view (or the change would be undone by the mount). Every offline tool refuses with it.
type BusyError struct {
	Upper string
	User  string // the mount or process using it, for a person
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("%s is in use as the upper layer of %s: unmount it first", e.Upper, e.User)
}

// Refuse returns a *BusyError if a mount or FUSE daemon uses the directory upper as its upper layer (see Upper).
// An upper that cannot be examined counts as not in use: the tool fails on it when it opens it.
func Refuse(upper string) error {
	if user, ok := InUse(upper); ok {
		return &BusyError{Upper: upper, User: user}
	}
	return nil
}

// InUse reports whether a mount or FUSE daemon uses the directory upper as its upper layer, and describes it
// (see Upper); an upper that cannot be examined counts as not in use.
func InUse(upper string) (string, bool) {
	who, err := Upper(upper)
	return who, err == nil && who != ""
}
