package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// system is one way of serving the union.
type system struct {
	name     string
	readOnly bool // serves the lower only (mergerfs as a read-only reference, the bare lower)
	bare     bool // no union: reads from the lower, writes to the tmpfs
	daemon   bool // a FUSE daemon whose memory is measured
	// mount serves lower (read-only) and upper (a fresh directory on a tmpfs; work is another) on mnt.
	mount func(lower, upper, work, mnt string) error
}

// allSystems lists the systems in the order of the table.
func allSystems(bin string) []system {
	return []system{
		{name: "ltsp-unionfs", daemon: true, mount: func(lower, upper, work, mnt string) error {
			_, err := run(bin, "ro="+lower, "rw="+upper, mnt)
			return err
		}},
		{name: "overlayfs", mount: func(lower, upper, work, mnt string) error {
			_, err := run("mount", "-t", "overlay", "overlay", "-o",
				"lowerdir="+lower+",upperdir="+upper+",workdir="+work, mnt)
			return err
		}},
		{name: "fuse-overlayfs", daemon: true, mount: func(lower, upper, work, mnt string) error {
			_, err := run("fuse-overlayfs", "-o", "lowerdir="+lower+",upperdir="+upper+",workdir="+work+",allow_other", mnt)
			return err
		}},
		{name: "unionfs-fuse", daemon: true, mount: func(lower, upper, work, mnt string) error {
			_, err := run("unionfs", "-o", "cow,allow_other,suid,dev,hide_meta_files", upper+"=RW:"+lower+"=RO", mnt)
			return err
		}},
		{name: "mergerfs", daemon: true, readOnly: true, mount: func(lower, upper, work, mnt string) error {
			_, err := run("mergerfs", "-o", "allow_other,use_ino,category.create=ff", lower+"=RO", mnt)
			return err
		}},
		{name: "bare", bare: true, mount: func(lower, upper, work, mnt string) error {
			// Reads see the lower itself; write workloads get the upper tmpfs (see run.prepare).
			_, err := run("mount", "--bind", lower, mnt)
			return err
		}},
	}
}

// unmountAndWait unmounts mnt and waits for a daemon serving it to exit.
func unmountAndWait(mnt string, pid int) error {
	var err error
	for i := 0; i < 50; i++ {
		if _, err = run("umount", mnt); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		run("umount", "-l", mnt)
		return err
	}
	for i := 0; pid > 0 && i < 100; i++ {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return nil
}

// daemonPID finds the process serving the FUSE mount mnt: the one holding /dev/fuse whose command line names mnt.
func daemonPID(mnt string) int {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, a := range strings.Split(string(cmdline), "\x00") {
			if a == mnt {
				return pid
			}
		}
	}
	return 0
}

// memKiB returns a field (VmHWM, VmRSS) of /proc/PID/status in KiB.
func memKiB(pid int, field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, field+":") {
			f := strings.Fields(line)
			if len(f) >= 2 {
				v, err := strconv.ParseFloat(f[1], 64)
				return v, err
			}
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// dropCaches makes the kernel forget cached pages, dentries and inodes: the next accesses are cold.
func dropCaches() {
	exec.Command("sync").Run()
	os.WriteFile("/proc/sys/vm/drop_caches", []byte("3"), 0)
}
