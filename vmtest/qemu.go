package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
)

// qemuBinary is the emulator: x86-64 guests on an x86-64 host.
const qemuBinary = "qemu-system-x86_64"

// probeKVM reports whether qemu can use KVM here: /dev/kvm exists and a guest kernel without a root boots and
// panics (panic=-1 reboots at once, -no-reboot turns that into an exit) within the timeout. On these machines
// /dev/kvm has been seen to hang or assert, so anything else means TCG.
func probeKVM(kernel string, timeout time.Duration) (bool, string) {
	if _, err := os.Stat("/dev/kvm"); err != nil {
		return false, "no /dev/kvm"
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemuBinary, "-accel", "kvm", "-machine", "pc", "-m", "256", "-nodefaults",
		"-display", "none", "-no-reboot", "-serial", "none", "-kernel", kernel, "-append", "panic=-1 console=ttyS0")
	out, err := cmd.CombinedOutput()
	switch {
	case ctx.Err() != nil:
		return false, fmt.Sprintf("a KVM guest did not finish within %v", timeout)
	case err != nil:
		return false, fmt.Sprintf("qemu with KVM failed: %v: %s", err, firstLine(string(out)))
	}
	return true, "KVM works"
}

// vmOptions are the settings every boot shares.
type vmOptions struct {
	accel         string // "kvm" or "tcg"
	memoryMiB     int
	waitUptime    int           // the guest waits for this uptime (seconds) before its last checks
	extraArgs     string        // more kernel command line
	bootTimeout   time.Duration // the whole boot, from qemu's start to its exit
	poweroffBound time.Duration // from the guest's poweroff report to qemu's exit
}

// slots limits the guests that boot or shut down at the same time (see main). A boot is given one slot when it
// starts and gives it back when its guest first reports; it takes one again when the guest is ready to end, and
// gives it back when qemu exits.
type slots chan struct{}

func (s slots) acquire() { s <- struct{}{} }
func (s slots) release() { <-s }

// runBoot boots one client, which already holds a slot, and judges it. The guest's console goes to console.log
// in dir; its result port (the second serial port, qemu's standard input and output) is read live, so that the
// host can answer the guest's "ready" and time the poweroff.
func runBoot(b boot, img *image, srv servers, o vmOptions, dir string, sl slots) *outcome {
	out := &outcome{boot: b, res: newResults(), consolePath: filepath.Join(dir, "console.log")}
	var bootSlot, endSlot sync.Once
	releaseBoot := func() { bootSlot.Do(sl.release) }
	defer releaseBoot()
	fail := func(err error) *outcome {
		out.problems = append(out.problems, err.Error())
		return out
	}
	if err := os.MkdirAll(dir, 0755); err != nil {
		return fail(err)
	}
	args := []string{
		"-accel", o.accel, "-machine", "pc", "-m", strconv.Itoa(o.memoryMiB), "-smp", "1",
		"-nodefaults", "-display", "none", "-no-reboot",
		"-kernel", img.kernel, "-initrd", img.initrds[b.initrd],
		"-append", strings.TrimSpace(b.cmdline(srv, o.waitUptime) + " " + o.extraArgs),
		"-nic", "user,model=virtio-net-pci",
		"-serial", "file:" + out.consolePath, // ttyS0: the console
		"-serial", "stdio", // ttyS1: the results, and the host's go-ahead to end
	}
	cmd := exec.Command(qemuBinary, args...)
	os.WriteFile(filepath.Join(dir, "qemu.cmdline"), []byte(fmt.Sprintf("%s %q\n", qemuBinary, args)), 0644)
	stderr, err := os.Create(filepath.Join(dir, "qemu.err"))
	if err != nil {
		return fail(err)
	}
	defer stderr.Close()
	cmd.Stderr = stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return fail(err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fail(err)
	}
	resultLog, err := os.Create(filepath.Join(dir, "results.log"))
	if err != nil {
		return fail(err)
	}
	defer resultLog.Close()

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("starting qemu: %w", err))
	}
	var mu sync.Mutex // guards out.res while the reader runs
	holdsEnd := false
	poweroff := make(chan struct{}, 1)
	read := make(chan struct{})
	go func() {
		defer close(read)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			now := time.Now()
			fmt.Fprintf(resultLog, "%7.1fs %s\n", now.Sub(start).Seconds(), sc.Text())
			mu.Lock()
			out.res.add(sc.Text(), now)
			up, ready, off := !out.res.started.IsZero(), !out.res.ready.IsZero(), !out.res.poweroff.IsZero()
			mu.Unlock()
			if up {
				releaseBoot()
			}
			if ready {
				endSlot.Do(func() {
					go func() {
						sl.acquire()
						mu.Lock()
						holdsEnd = true
						mu.Unlock()
						fmt.Fprintln(stdin, "go")
					}()
				})
			}
			if off {
				select {
				case poweroff <- struct{}{}:
				default:
				}
			}
		}
	}()
	exited := make(chan error, 1)
	go func() {
		<-read // all output read before Wait closes the pipe
		exited <- cmd.Wait()
	}()

	overall := time.NewTimer(o.bootTimeout)
	defer overall.Stop()
	var powerDeadline <-chan time.Time
	var exitErr error
wait:
	for {
		select {
		case exitErr = <-exited:
			out.exited = true
			break wait
		case <-poweroff:
			if powerDeadline == nil {
				powerDeadline = time.After(o.poweroffBound)
			}
		case <-powerDeadline:
			break wait
		case <-overall.C:
			out.problems = append(out.problems, fmt.Sprintf("the boot did not end within %v: qemu killed", o.bootTimeout))
			break wait
		}
	}
	end := time.Now()
	if !out.exited {
		cmd.Process.Kill()
		<-exited
	}
	mu.Lock()
	defer mu.Unlock()
	if holdsEnd {
		sl.release()
	}
	if !out.res.started.IsZero() {
		out.bootTime = out.res.started.Sub(start)
	}
	if !out.res.poweroff.IsZero() {
		out.powerTime = end.Sub(out.res.poweroff)
	}
	if exitErr != nil {
		var ee *exec.ExitError
		if errors.As(exitErr, &ee) {
			out.problems = append(out.problems, fmt.Sprintf("qemu exited with %v: %s", exitErr,
				firstLine(readFile(filepath.Join(dir, "qemu.err")))))
		}
	}
	out.judge(readFile(out.consolePath), o.poweroffBound)
	return out
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}
