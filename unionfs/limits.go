package unionfs

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// RaiseFileLimit raises the process's limit of open descriptors as far as it may, before Mount: the soft limit
// to the hard one, and for a privileged process both to the kernel's ceiling (/proc/sys/fs/nr_open). It returns
// the soft limit in force afterwards.
//
// Why: the daemon holds descriptors for every directory the kernel has cached (one per layer that has it) and for
// files that lost or moved their names. The Go runtime only raises the soft limit to the hard one, and an
// initramfs without systemd starts the daemon with the kernel's default hard limit of 4,096: a root filesystem
// whose client has walked a few thousand directories would then fail lookups with EMFILE.
func RaiseFileLimit() uint64 {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil {
		if ceiling, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil && ceiling > lim.Max {
			if unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: ceiling, Max: ceiling}) == nil {
				return ceiling
			}
		}
	}
	if lim.Cur < lim.Max {
		if unix.Setrlimit(unix.RLIMIT_NOFILE, &unix.Rlimit{Cur: lim.Max, Max: lim.Max}) == nil {
			return lim.Max
		}
	}
	return lim.Cur
}
