// Package rootdaemon makes a process fit to serve the root filesystem from the initramfs until the machine
// powers off: a root storage daemon in the sense of systemd's ROOT_STORAGE_DAEMONS.md.
//
// systemd's document asks for one thing, argv[0] starting with '@', which spares the process from the killing
// sprees at switch_root and at the end of shutdown (systemd 38 and later). A real boot shows that this is not
// enough: a daemon started by a unit of the initrd stays in that unit's cgroup, and after switch_root the real
// root's systemd no longer knows the unit (its file exists only in the initramfs), so it stops it with the
// default KillMode=control-group, SIGKILLs the cgroup when the stop times out, and the root filesystem dies
// under the running system. So the daemon also leaves the cgroup of whatever started it (LeaveServiceCgroup) and
// takes itself out of the OOM killer's reach (ProtectFromOOM): a diskless client whose tmpfs upper layer fills
// the memory must lose a program, not its root filesystem.
package rootdaemon

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/mountinfo"
)

// InInitramfs reports whether the process runs in an initramfs. systemd's and dracut's images carry
// /etc/initrd-release (systemd's INITRD_INTERFACE.md), the test systemd's document prescribes for deciding to mark
// argv[0]; initramfs-tools' images (Debian 12, Ubuntu) do not, so the root filesystem decides too: an initramfs
// runs on the kernel's rootfs, which nothing runs on after switch_root or run-init. Without /proc the answer is no.
func InInitramfs() bool {
	if _, err := os.Stat("/etc/initrd-release"); err == nil {
		return true
	}
	mounts, err := mountinfo.Read(mountinfo.Self)
	return err == nil && onRootfs(mounts)
}

// onRootfs reports whether the topmost mount on "/" in mounts is the kernel's initial rootfs.
func onRootfs(mounts []mountinfo.Mount) bool {
	fstype := ""
	for _, m := range mounts {
		if m.MountPoint == "/" {
			fstype = m.FSType // the last one is on top
		}
	}
	return fstype == "rootfs"
}

// Marked returns argv0 with the leading '@' that systemd's killing sprees spare: the argv[0] to start a daemon
// with.
func Marked(argv0 string) string {
	if strings.HasPrefix(argv0, "@") {
		return argv0
	}
	return "@" + argv0
}

// MarkSelf makes /proc/self/cmdline start with '@' in a process already running, by overwriting the first byte
// of its argv in place: Go's os.Args[0] shares the memory the kernel shows as cmdline. The process name (comm)
// is unchanged, as systemd's document asks.
func MarkSelf() {
	a := os.Args[0]
	if a == "" || a[0] == '@' {
		return
	}
	unsafe.Slice(unsafe.StringData(a), len(a))[0] = '@'
}

// ProtectFromOOM sets the process's oom_score_adj to -1000: the OOM killer never picks it.
func ProtectFromOOM() error {
	return os.WriteFile("/proc/self/oom_score_adj", []byte("-1000\n"), 0)
}

// cgroupRoot is where the cgroup filesystems are mounted; a variable for the tests.
var cgroupRoot = "/sys/fs/cgroup"

// initScope is the cgroup of systemd's init.scope unit: PID 1's own, a perpetual unit that no job stops or
// kills, and where systemd itself puts every process it finds in the root cgroup when it starts (so also the
// processes that predate it, which is what a root storage daemon is).
const initScope = "init.scope"

// LeaveServiceCgroup moves the calling process, with all its threads, out of the cgroup it was started in (a
// service's, when a unit of the initrd started it) into init.scope, or into the root cgroup where there is no
// init.scope (no systemd yet, as in an initramfs without systemd: systemd then moves it into its init.scope
// when it starts). It does so in each hierarchy systemd tracks units with: the unified cgroup2 hierarchy and,
// on legacy and hybrid machines, the name=systemd cgroup v1 hierarchy. It returns the cgroups it moved the
// process to, as "hierarchy:path"; none, and no error, where no such hierarchy is mounted or the process
// already is where it should be.
func LeaveServiceCgroup() ([]string, error) {
	return leaveServiceCgroup(os.Getpid())
}

func leaveServiceCgroup(pid int) ([]string, error) {
	own, err := ownCgroups(pid)
	if err != nil {
		return nil, err
	}
	var moved []string
	var errs []error
	for _, h := range hierarchies() {
		current, ok := own[h.key]
		if !ok {
			continue
		}
		to, err := h.leave(pid, current)
		if err != nil {
			errs = append(errs, err)
		} else if to != "" {
			moved = append(moved, h.name+":"+to)
		}
	}
	return moved, errors.Join(errs...)
}

// hierarchy is one mounted cgroup hierarchy systemd keeps units in.
type hierarchy struct {
	name string // for messages
	dir  string // where it is mounted
	key  string // the controller field of /proc/PID/cgroup that gives the process's place in it
}

// hierarchies lists the mounted hierarchies systemd tracks units in, found where systemd mounts them (as
// systemd itself finds them, by the filesystem type at those places).
func hierarchies() []hierarchy {
	var hs []hierarchy
	for _, c := range []struct {
		sub   string
		magic int64
		name  string
		key   string
	}{
		{"", unix.CGROUP2_SUPER_MAGIC, "cgroup2", ""},                        // unified
		{"unified", unix.CGROUP2_SUPER_MAGIC, "cgroup2", ""},                 // hybrid
		{"systemd", unix.CGROUP_SUPER_MAGIC, "name=systemd", "name=systemd"}, // legacy and hybrid
	} {
		dir := filepath.Join(cgroupRoot, c.sub)
		var fs unix.Statfs_t
		if unix.Statfs(dir, &fs) == nil && int64(fs.Type) == c.magic {
			hs = append(hs, hierarchy{name: c.name, dir: dir, key: c.key})
		}
	}
	return hs
}

// leave moves pid from the cgroup current (a path in h) into init.scope or the root, and returns where to, or
// "" if it already was there.
func (h hierarchy) leave(pid int, current string) (string, error) {
	to := "/"
	if st, err := os.Stat(filepath.Join(h.dir, initScope)); err == nil && st.IsDir() {
		to = "/" + initScope
	}
	if current == to || current == "/" {
		return "", nil
	}
	procs := filepath.Join(h.dir, to, "cgroup.procs")
	if err := os.WriteFile(procs, []byte(strconv.Itoa(pid)+"\n"), 0); err != nil {
		return "", fmt.Errorf("cannot leave the %s cgroup %s: %w", h.name, current, err)
	}
	return to, nil
}

// ownCgroups reads /proc/PID/cgroup: the cgroup of pid in each hierarchy, by controller field ("" for the
// unified hierarchy, "name=systemd", "memory"...).
func ownCgroups(pid int) (map[string]string, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, nil // a kernel without cgroups
		}
		return nil, err
	}
	defer f.Close()
	own := make(map[string]string)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// "ID:CONTROLLERS:PATH"; the path may contain colons.
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		for _, c := range strings.Split(parts[1], ",") {
			own[c] = parts[2]
		}
	}
	return own, sc.Err()
}
