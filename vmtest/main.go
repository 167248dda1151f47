// Command vmtest is the VM boot test: it boots real diskless clients under qemu with the project's initramfs
// support (the dracut module, the initramfs-tools hook) and checks, from inside each client, that the union is
// their root filesystem and stays alive through every transition of a systemd machine, up to a clean poweroff.
//
// A namespace test cannot show what kills a root filesystem daemon on a real machine (systemd stopping the unit
// that started it after switch_root, mount propagation under systemd's shared mounts, the shutdown's killing
// spree and return to the initramfs); a boot can. vmtest builds a Debian guest (debootstrap, cached between
// runs), installs the project into it from its Debian package (dpkg -i, whose trigger rebuilds the guest's own
// dracut image) or with `make install DESTDIR=`, builds its other initramfs images with its own dracut (without
// systemd) and mkinitramfs (initramfs-tools), serves its root the two ways LTSP does (a squashfs image over NBD
// with nbdkit, the image tree over NFSv4 with nfs-ganesha) and boots these clients at the same time:
//
//	nbd        the union over the NBD image, systemd initramfs
//	nfs        the union over the NFS root, systemd initramfs
//	nosystemd  the union over NBD, initramfs without systemd (dracut's hooks, util-linux switch_root)
//	itools     the union over NBD, initramfs-tools image (local-bottom script, run-init)
//	fallback   the union asked for and made to fail: the client must boot the old way, with a warning
//	control    on demand only (--boots control or all): the NBD client without the union, for its times
//
// The guest side (vmtest/guest) reports each check on the second serial port and powers off; the host judges
// the reports, the console and the poweroff time, prints the boot and poweroff times, and exits 0 only if every
// boot passed. Needs root, qemu-system-x86, nbdkit, nfs-ganesha(-vfs), debootstrap, squashfs-tools and network
// access to the Debian archive for the first build (`make vm-test` installs the tools).
//
//	go run ./vmtest [--deb PKG] [--boots nbd,nfs,...|default|all] [--cache DIR] [--work DIR] [--keep] [--wait SECONDS]
package main

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

// Exit codes.
const (
	exitFailed = 1 // a boot failed
	exitSetup  = 2 // the test could not run (tools, image, servers)
)

func main() {
	os.Exit(run())
}

// run is the whole test; it returns the exit code, so that its deferred cleanups (the servers) always run.
func run() int {
	bootsFlag := flag.String("boots", "default", "comma-separated boots to run ("+bootNames()+
		"), or default (all but the on-demand control), or all")
	cache := flag.String("cache", "/var/cache/ltsp-unionfs-vmtest", "directory for the base image, kept between runs")
	work := flag.String("work", "", "directory for this run's image and logs (default: a new one under /var/tmp)")
	keep := flag.Bool("keep", false, "keep the work directory even when every boot passed")
	repo := flag.String("repo", ".", "the project's source tree (make install runs there)")
	deb := flag.String("deb", "", "install the project into the guest from this Debian package instead of make install")
	wait := flag.Int("wait", 200, "uptime in seconds the union boots reach before their last checks: past "+
		"systemd's 90 s stop timeout after switch_root")
	memory := flag.Int("memory", 1536, "guest memory in MiB")
	parallel := flag.Int("parallel", runtime.NumCPU(), "guests booting at the same time")
	appendArgs := flag.String("append", "", "more kernel command line for every boot (e.g. rd.debug)")
	accel := flag.String("accel", "auto", "qemu accelerator: kvm, tcg, or auto (KVM if a probe boot works, else TCG)")
	flag.Parse()

	logf := func(format string, args ...any) {
		fmt.Printf("vmtest: "+format+"\n", args...)
	}
	if os.Geteuid() != 0 {
		return fail(exitSetup, "vmtest needs root (debootstrap, chroot, mounts)")
	}
	boots, err := selectBoots(*bootsFlag)
	if err != nil {
		return fail(exitSetup, err.Error())
	}
	for _, tool := range []string{qemuBinary, "nbdkit", "ganesha.nfsd", "debootstrap", "mksquashfs", "dpkg-deb",
		"unshare", "make"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fail(exitSetup, fmt.Sprintf("%s is missing: `make vm-test` installs the tools", tool))
		}
	}
	start := time.Now()
	if *work == "" {
		*work, err = os.MkdirTemp("/var/tmp", "ltsp-unionfs-vmtest-")
		if err != nil {
			return fail(exitSetup, err.Error())
		}
	}
	*work, _ = filepath.Abs(*work)
	*repo, _ = filepath.Abs(*repo)

	base, err := baseImage(*cache, baseRecipe, logf)
	if err != nil {
		return fail(exitSetup, "base image: "+err.Error())
	}
	if *deb != "" {
		*deb, _ = filepath.Abs(*deb)
	}
	img, err := buildImage(base, *repo, *deb, *work, logf)
	if err != nil {
		return fail(exitSetup, "image: "+err.Error())
	}

	o := vmOptions{accel: *accel, memoryMiB: *memory, waitUptime: *wait, extraArgs: *appendArgs,
		// dracut-shutdown unpacks the 200 MB initramfs before the poweroff (NBD and NFS roots ask for the return
		// to it): 40-100 s of the poweroff under TCG, with or without the union.
		bootTimeout: 25 * time.Minute, poweroffBound: 3 * time.Minute}
	if o.accel == "auto" {
		kvm, why := probeKVM(img.kernel, 60*time.Second)
		o.accel = "tcg"
		if kvm {
			o.accel = "kvm"
		}
		logf("accelerator: %s (%s)", o.accel, why)
	}

	srv := servers{nfsPath: nfsPseudoPath}
	nbd, port, err := startNBD(img.squashfs, *work)
	if err != nil {
		return fail(exitSetup, "NBD server: "+err.Error())
	}
	defer nbd.stop()
	srv.nbdPort = port
	if needsNFS(boots) {
		nfs, port, err := startNFS(img.tree, *work)
		if err != nil {
			return fail(exitSetup, "NFS server: "+err.Error())
		}
		defer nfs.stop()
		srv.nfsPort = port
	}

	logf("booting %d clients (%s, %d MiB each), the union boots waiting for %d s of uptime",
		len(boots), o.accel, o.memoryMiB, o.waitUptime)
	outcomes := make([]*outcome, len(boots))
	// A guest under TCG that boots or shuts down takes a whole CPU; one that runs its checks or waits mostly
	// idles. With more busy guests than CPUs everything slowed down until timeouts fired (RCU stalls, device
	// timeouts, dracut-shutdown taking minutes), and a poweroff timed among booting guests measures them, not
	// the union. So --parallel slots (one per CPU) are shared by booting and ending guests: a boot takes one to
	// start and gives it back when its guest reports; a guest ready to end waits for one (the host answers it on
	// its result port). Boots start in order, the union boots first: the others boot while those wait out their
	// uptime.
	sl := make(slots, max(1, *parallel))
	var wg sync.WaitGroup
	for i, b := range boots {
		sl.acquire()
		wg.Add(1)
		go func() {
			defer wg.Done()
			outcomes[i] = runBoot(b, img, srv, o, filepath.Join(*work, "boot-"+b.name), sl)
			logf("%s: %s", b.name, outcomes[i].summary())
		}()
	}
	wg.Wait()

	failed := report(outcomes)
	fmt.Printf("vmtest: %d boots in %v (logs: %s)\n", len(outcomes), time.Since(start).Round(time.Second), *work)
	if failed {
		fmt.Println("vmtest: FAILED")
		return exitFailed
	}
	if !*keep {
		os.RemoveAll(*work)
	}
	fmt.Println("vmtest: all boots passed")
	return 0
}

func needsNFS(boots []boot) bool {
	for _, b := range boots {
		if b.transport == "nfs" {
			return true
		}
	}
	return false
}

func bootNames() string {
	var names []string
	for _, b := range allBoots {
		names = append(names, b.name)
	}
	return strings.Join(names, ",")
}

// summary is one line on an outcome.
func (o *outcome) summary() string {
	verdict := "passed"
	if len(o.problems) > 0 {
		verdict = fmt.Sprintf("FAILED (%d problems)", len(o.problems))
	}
	return fmt.Sprintf("%s; multi-user after %v, poweroff in %v", verdict, o.bootTime.Round(time.Second),
		o.powerTime.Round(100*time.Millisecond))
}

// report prints the table of times and every problem with the console lines around it, and says whether any
// boot failed.
func report(outcomes []*outcome) bool {
	fmt.Println()
	fmt.Printf("%-10s %-7s %-12s %-10s %s\n", "boot", "result", "multi-user", "poweroff", "guest: systemd-analyze time")
	failed := false
	for _, o := range outcomes {
		result := "ok"
		if len(o.problems) > 0 {
			result, failed = "FAIL", true
		}
		fmt.Printf("%-10s %-7s %-12s %-10s %s\n", o.boot.name, result, o.bootTime.Round(time.Second),
			o.powerTime.Round(100*time.Millisecond), o.res.info("boot"))
	}
	for _, o := range outcomes {
		if len(o.problems) == 0 {
			continue
		}
		fmt.Printf("\n== %s (%s) failed:\n", o.boot.name, o.boot.about)
		for _, p := range o.problems {
			fmt.Println("   " + p)
		}
		fmt.Printf("   last console lines (%s):\n", o.consolePath)
		for _, line := range strings.Split(lastLines(stripANSI(readFile(o.consolePath)), 25), " | ") {
			fmt.Println("     " + line)
		}
	}
	fmt.Println()
	return failed
}

// fail prints msg and returns code.
func fail(code int, msg string) int {
	fmt.Fprintln(os.Stderr, "vmtest: "+msg)
	return code
}
