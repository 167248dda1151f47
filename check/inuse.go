package check

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// BusyError says that a mount uses the upper layer, so that changing it underneath would corrupt the mount's
// view (or the change would be undone by the mount).
type BusyError struct {
	Upper string
	User  string // the mount or process using it, for a person
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("%s is in use as the upper layer of %s: unmount it first", e.Upper, e.User)
}

// RefuseInUse returns a *BusyError if a mount uses the directory upper as its upper layer (see InUse).
func RefuseInUse(upper string) error {
	if user, ok := InUse(upper); ok {
		return &BusyError{Upper: upper, User: user}
	}
	return nil
}

// InUse reports whether a mount of this mount namespace uses the directory upper as its upper layer, and
// describes it: a kernel overlayfs mount whose upperdir is upper (from /proc/self/mountinfo), or a FUSE daemon
// (ltsp-unionfs, unionfs-fuse: any process holding /dev/fuse) that holds a descriptor of upper, has it as its
// working directory or names it as a branch on its command line (rw=UPPER, upperdir=UPPER, UPPER=RW, dirs=...).
// The ltsp-unionfs daemon always holds a descriptor of its upper layer; its mount's source does not name the
// layers. Paths are compared as strings (upper made absolute, with and without its symlinks resolved): stat(2)
// of another process's descriptors could hang on an unresponsive FUSE mount.
func InUse(upper string) (string, bool) {
	names := map[string]bool{}
	if abs, err := filepath.Abs(upper); err == nil {
		names[abs] = true
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			names[real] = true
		}
	}
	same := func(p string) bool { return names[filepath.Clean(p)] }
	if m, ok := overlayUsing(same); ok {
		return m, true
	}
	return fuseDaemonUsing(same)
}

// overlayUsing finds an overlay mount whose upperdir is the directory same recognises.
func overlayUsing(same func(string) bool) (string, bool) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f1, f2 := strings.Fields(pre), strings.Fields(post)
		if len(f1) < 5 || len(f2) < 3 || f2[0] != "overlay" {
			continue
		}
		for _, opt := range splitOptions(f2[2]) {
			if v, ok := strings.CutPrefix(opt, "upperdir="); ok && same(unescapeMountinfo(v)) {
				return "the overlay mount on " + unescapeMountinfo(f1[4]), true
			}
		}
	}
	return "", false
}

// splitOptions splits overlayfs's super options at commas not escaped with a backslash.
func splitOptions(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case ',':
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// unescapeMountinfo decodes the octal escapes of mountinfo fields (\040 for a space) and overlayfs's backslash
// escapes of commas and colons.
func unescapeMountinfo(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		if i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i+1])
		i++
	}
	return b.String()
}

// fuseDaemonUsing finds a process that serves a FUSE mount (it holds /dev/fuse) and uses the directory same
// recognises: a descriptor, its working or root directory, or a command-line argument naming it.
func fuseDaemonUsing(same func(string) bool) (string, bool) {
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return "", false
	}
	self := os.Getpid()
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == self {
			continue
		}
		dir := filepath.Join("/proc", p.Name())
		fds, err := os.ReadDir(filepath.Join(dir, "fd"))
		if err != nil {
			continue
		}
		fuse, uses := false, false
		for _, fd := range fds {
			fp := filepath.Join(dir, "fd", fd.Name())
			t, err := os.Readlink(fp)
			if err != nil {
				continue
			}
			if t == "/dev/fuse" {
				fuse = true
			} else if same(t) {
				uses = true
			}
		}
		if !fuse {
			continue
		}
		cmdline, _ := os.ReadFile(filepath.Join(dir, "cmdline"))
		args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
		if !uses {
			cwd, _ := os.Readlink(filepath.Join(dir, "cwd"))
			uses = cwd != "" && same(cwd) || argsName(args, same)
		}
		if uses {
			return fmt.Sprintf("the FUSE mount served by process %d (%s)", pid, strings.Join(args, " ")), true
		}
	}
	return "", false
}

// argsName reports whether a command-line argument names the directory same recognises, alone or as a part
// separated by ',', ':' or '=' (branch lists and mount options).
func argsName(args []string, same func(string) bool) bool {
	for i, a := range args {
		if i == 0 {
			continue
		}
		for _, part := range strings.FieldsFunc(a, func(r rune) bool { return r == ',' || r == ':' || r == '=' }) {
			if strings.HasPrefix(part, "/") && same(part) {
				return true
			}
		}
	}
	return false
}
