package main

import (
	"fmt"
	"regexp"
	"strings"
	"time"
)

// The guest reports on its second serial port, one line per event (see vmtest/guest/ltsp-vmtest):
//
//	VMTEST start ...         the checks begin
//	VMTEST ok NAME           a check passed
//	VMTEST FAIL NAME: WHY    a check failed
//	VMTEST info NAME: TEXT   a measurement
//	VMTEST ready HOW         the checks are over; the guest waits for the host's go-ahead to end
//	VMTEST poweroff HOW      the machine powers off (HOW: poweroff or reboot) now
const resultPrefix = "VMTEST "

// results is what one boot's guest reported, with the times the host received the lines.
type results struct {
	passed   map[string]bool
	failures []string // "NAME: WHY", in order
	infos    []string // "NAME: TEXT", in order
	started  time.Time
	ready    time.Time
	poweroff time.Time
	other    []string // lines that are not results (the port may carry noise)
}

func newResults() *results {
	return &results{passed: make(map[string]bool)}
}

// add takes one line from the result port, received at the time at.
func (r *results) add(line string, at time.Time) {
	line = strings.TrimRight(line, "\r\n")
	rest, ok := strings.CutPrefix(line, resultPrefix)
	if !ok {
		if i := strings.Index(line, resultPrefix); i >= 0 { // noise before it on the same line
			rest, ok = line[i+len(resultPrefix):], true
		}
	}
	if !ok {
		if strings.TrimSpace(line) != "" {
			r.other = append(r.other, line)
		}
		return
	}
	verb, arg, _ := strings.Cut(rest, " ")
	switch verb {
	case "start":
		r.started = at
	case "ok":
		r.passed[strings.TrimSpace(arg)] = true
	case "FAIL":
		r.failures = append(r.failures, strings.TrimSpace(arg))
	case "info":
		r.infos = append(r.infos, strings.TrimSpace(arg))
	case "ready":
		r.ready = at
	case "poweroff":
		r.poweroff = at
	default:
		r.other = append(r.other, line)
	}
}

// info returns the text of the measurement name, or "".
func (r *results) info(name string) string {
	for _, s := range r.infos {
		if v, ok := strings.CutPrefix(s, name+": "); ok {
			return v
		}
	}
	return ""
}

// consoleProblems are console lines that fail any boot: the union dying under the running system, shutdown
// waiting for something (systemd's stop timeouts, dracut's unmount loop), or the kernel giving up.
var consoleProblems = regexp.MustCompile(`Transport endpoint is not connected|` +
	`(?i:timed out)|Failed to unmount|Cannot umount /oldroot|Blocking umount of /oldroot|Kernel panic|` +
	`ltsp-unionfs.*[Ww]arning|Freezing execution|emergency shell|Entering emergency mode`)

// outcome is the verdict on one boot.
type outcome struct {
	boot        boot
	res         *results
	bootTime    time.Duration // from starting qemu to the guest's first report (multi-user reached)
	powerTime   time.Duration // from the guest's poweroff report to qemu's exit
	exited      bool          // qemu exited by itself (powered off) before the deadline
	problems    []string
	consolePath string
}

// judge fills in o.problems from the boot's results, whether qemu exited by itself, and the console log.
func (o *outcome) judge(console string, poweroffBound time.Duration) {
	r := o.res
	if r.started.IsZero() {
		o.problems = append(o.problems, "the guest never reported: the boot did not reach multi-user")
	}
	for _, f := range r.failures {
		o.problems = append(o.problems, "check failed: "+f)
	}
	for _, name := range requiredChecks(o.boot.mode) {
		if !r.passed[name] && !failed(r, name) {
			o.problems = append(o.problems, "check missing: "+name)
		}
	}
	switch {
	case r.poweroff.IsZero():
		o.problems = append(o.problems, "the guest never reached its poweroff")
	case !o.exited:
		o.problems = append(o.problems, fmt.Sprintf("qemu did not exit within %v of the poweroff", poweroffBound))
	case o.powerTime > poweroffBound:
		o.problems = append(o.problems, fmt.Sprintf("the poweroff took %v (bound %v)", o.powerTime.Round(time.Second),
			poweroffBound))
	case !strings.Contains(console, o.boot.finalLine()):
		o.problems = append(o.problems, fmt.Sprintf("the console does not end with the kernel's %q", o.boot.finalLine()))
	}
	// Where systemd returns to the initramfs at shutdown, dracut unmounts the old root there: the daemon must
	// still be alive to serve that unmount (it logs it), spared by every killing spree before.
	if o.boot.mode == modeUnion {
		if _, after, ok := strings.Cut(console, "Returning to initrd"); ok && !strings.Contains(after, "ltsp-unionfs: unmounted /sysroot") {
			o.problems = append(o.problems, "the daemon did not serve the final unmount in the shutdown initramfs")
		}
	}
	for _, line := range strings.Split(console, "\n") {
		if consoleProblems.MatchString(line) {
			o.problems = append(o.problems, "console: "+strings.TrimSpace(stripANSI(line)))
		}
	}
}

func failed(r *results, name string) bool {
	for _, f := range r.failures {
		if f == name || strings.HasPrefix(f, name+":") {
			return true
		}
	}
	return false
}

var ansi = regexp.MustCompile(`\x1b\[[0-9;]*[A-Za-z]`)

// stripANSI removes the terminal colours systemd writes to the console.
func stripANSI(s string) string { return ansi.ReplaceAllString(s, "") }
