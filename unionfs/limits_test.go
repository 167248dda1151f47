package unionfs

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestRaiseFileLimit: the soft limit reaches the hard one, and the hard one never drops; as root both reach the
// kernel's ceiling unless the machine refuses (a container without CAP_SYS_RESOURCE does).
func TestRaiseFileLimit(t *testing.T) {
	var before unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &before); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Setrlimit(unix.RLIMIT_NOFILE, &before) })
	got := RaiseFileLimit()
	var after unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &after); err != nil {
		t.Fatal(err)
	}
	if got != after.Cur || after.Cur != after.Max {
		t.Errorf("RaiseFileLimit returned %d; the limits are now %d/%d", got, after.Cur, after.Max)
	}
	if after.Max < before.Max {
		t.Errorf("the hard limit dropped from %d to %d", before.Max, after.Max)
	}
	if b, err := os.ReadFile("/proc/sys/fs/nr_open"); err == nil && os.Geteuid() == 0 {
		ceiling, _ := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
		if after.Max < ceiling {
			probe := unix.Rlimit{Cur: ceiling, Max: ceiling}
			if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &probe); err == nil {
				t.Errorf("as root the limit stayed at %d although %d is allowed", after.Max, ceiling)
			} else {
				t.Logf("this machine refuses a limit of %d (%v); the limit is %d", ceiling, err, after.Max)
			}
		}
	}
}
