package unionfs

import (
	"runtime"
	"testing"
)

func TestSpareProcsLeavesAnIdleP(t *testing.T) {
	orig := runtime.GOMAXPROCS(0)
	t.Cleanup(func() { runtime.GOMAXPROCS(orig) })
	t.Setenv("GOMAXPROCS", "")
	for _, procs := range []int{1, 2, 3, 8, 16, 17, 64} {
		runtime.GOMAXPROCS(procs)
		readers := goFuseReaders(procs)
		got := SpareProcs()
		if got != runtime.GOMAXPROCS(0) {
			t.Errorf("GOMAXPROCS %d: SpareProcs returned %d, runtime has %d", procs, got, runtime.GOMAXPROCS(0))
		}
		// go-fuse lets one reader more than its limit into read(2); one P must still be idle.
		if got < readers+2 || got < procs {
			t.Errorf("GOMAXPROCS %d (%d readers): SpareProcs set %d, want at least %d", procs, readers, got, max(readers+2, procs))
		}
	}
	runtime.GOMAXPROCS(2)
	t.Setenv("GOMAXPROCS", "2")
	if got := SpareProcs(); got != 2 || runtime.GOMAXPROCS(0) != 2 {
		t.Errorf("with GOMAXPROCS=2 in the environment: SpareProcs set %d, want it left at 2", got)
	}
}
