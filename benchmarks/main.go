// Command bench runs the same workloads on ltsp-unionfs and its peers (kernel overlayfs, fuse-overlayfs,
// unionfs-fuse, mergerfs) and on the bare layers, in one run, alternating systems, and prints one table of
// medians with the ratio of each system to kernel overlayfs. It appends the table to benchmarks/RESULTS.md.
//
// It needs root, /dev/fuse, loop devices and squashfs, and the peers from Debian's packages (fuse-overlayfs,
// unionfs-fuse, mergerfs). The lower layer is a squashfs image of a Debian root (debootstrap --variant=minbase,
// or a copy of /usr when debootstrap cannot run) plus a 1 GiB file, built once into a cache directory outside the
// repository. Each system gets a fresh tmpfs as its upper layer for every repetition.
//
//	go run ./benchmarks [--quick] [--reps N] [--systems a,b] [--workloads a,b] [--cache DIR] [--results FILE]
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

func main() {
	quick := flag.Bool("quick", false, "one repetition, short fio runs, no dpkg workload: under 3 minutes")
	reps := flag.Int("reps", 3, "repetitions of every workload on every system (medians are reported)")
	systemsFlag := flag.String("systems", "", "comma-separated systems to run (default: all)")
	workloadsFlag := flag.String("workloads", "", "comma-separated workloads to run (default: all)")
	cache := flag.String("cache", defaultCache(), "directory for the image, built once")
	results := flag.String("results", "benchmarks/RESULTS.md", "ledger the table is appended to (\"\" for none)")
	binary := flag.String("binary", "", "ltsp-unionfs binary (default: build it)")
	flag.Parse()

	if os.Geteuid() != 0 {
		fatalf("bench needs root (loop devices, mounts, drop_caches)")
	}
	cfg := config{quick: *quick, reps: *reps}
	if cfg.quick {
		cfg.reps = 1
	}
	bin := *binary
	if bin == "" {
		bin = filepath.Join(os.TempDir(), "ltsp-unionfs-bench-binary")
		out, err := exec.Command("go", "build", "-o", bin, "./cmd/ltsp-unionfs").CombinedOutput()
		if err != nil {
			fatalf("building ltsp-unionfs: %v\n%s", err, out)
		}
	}
	start := time.Now()
	img, err := prepareImage(*cache)
	if err != nil {
		fatalf("preparing the image: %v", err)
	}
	fmt.Printf("image: %s (%s)\n", img.squashfs, img.describe())
	lower, cleanup, err := img.mount()
	if err != nil {
		fatalf("mounting the image: %v", err)
	}
	defer cleanup()

	systems := selectSystems(allSystems(bin), *systemsFlag)
	workloads := selectWorkloads(allWorkloads(cfg, img), *workloadsFlag)
	r := newRun(cfg, lower, img, systems, workloads)
	r.execute()
	table := r.table()
	fmt.Println()
	fmt.Print(table)
	fmt.Printf("\nelapsed: %s\n", time.Since(start).Round(time.Second))
	if *results != "" {
		if err := appendResults(*results, cfg, img, table); err != nil {
			fatalf("appending to %s: %v", *results, err)
		}
		fmt.Printf("appended to %s\n", *results)
	}
}

// config holds the run's settings.
type config struct {
	quick bool
	reps  int
}

func defaultCache() string {
	if d := os.Getenv("LTSP_UNIONFS_BENCH_CACHE"); d != "" {
		return d
	}
	return "/var/cache/ltsp-unionfs-bench"
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(1)
}

// run executes a command and returns its combined output, or an error that includes it.
func run(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

func selectSystems(all []system, names string) []system {
	if names == "" {
		return all
	}
	var out []system
	for _, s := range all {
		if strings.Contains(","+names+",", ","+s.name+",") {
			out = append(out, s)
		}
	}
	return out
}

func selectWorkloads(all []workload, names string) []workload {
	if names == "" {
		return all
	}
	var out []workload
	for _, w := range all {
		if strings.Contains(","+names+",", ","+w.name+",") {
			out = append(out, w)
		}
	}
	return out
}
