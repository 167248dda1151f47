package unionfs

import (
	"os"
	"runtime"
)

// goFuseReaders mirrors go-fuse's choice of how many goroutines may wait in read(2) on /dev/fuse at once:
// GOMAXPROCS when the server is made, kept between 2 and 16 (fuse.NewServer). One more can be reading briefly.
func goFuseReaders(procs int) int {
	return min(max(procs, 2), 16)
}

// SpareProcs raises GOMAXPROCS, after Mount, so that the Go scheduler has a P to spare while every go-fuse reader
// waits in read(2) for the next request. It returns the new value (the old one when it changes nothing).
//
// Why: a goroutine blocked in a system call keeps its P, and once every P is in a system call the runtime's
// monitor takes one back after 20 µs and hands it to a newly woken thread. A daemon that answers one request at a
// time always looks like that: its readers sit in read(2) between requests, so every request paid a futex wake-up,
// a spinning thread and a context switch more than the kernel's own hand-off. With a P to spare the monitor leaves
// syscalls alone for 10 ms. Measured on 2 CPUs (benchmarks/RESULTS.md): one FUSE round trip 43 -> 35 µs
// (fuse-overlayfs, in C: 29-36 µs); in one A/B run (run-to-run spread there is about 15%), untar of 20,000 files
// 7.6 -> 6.5 s and rm -rf of them 2.8 -> 2.5 s. The extra
// Ps cost nothing while idle: goroutines that run Go code are still bounded by the readers plus the few the
// daemon starts itself.
//
// It leaves GOMAXPROCS alone when the environment sets it, and must run after fuse.NewServer (which sizes its
// readers from GOMAXPROCS).
func SpareProcs() int {
	procs := runtime.GOMAXPROCS(0)
	if os.Getenv("GOMAXPROCS") != "" {
		return procs
	}
	want := goFuseReaders(procs) + 2
	if want <= procs {
		return procs
	}
	runtime.GOMAXPROCS(want)
	return want
}
