package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log"
	"log/syslog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/rootdaemon"
)

// Backgrounding. Go cannot fork, so without --foreground the command re-executes itself as the daemon, with a
// pipe on fd 3 (named by notifyEnv). The daemon mounts, then writes "OK" or "ERR <code> <message>" and closes the
// pipe; the command waits for that and exits with the daemon's verdict, so it returns 0 only once the mount is
// live and answering.

// notifyEnv names the environment variable that tells a process it is the daemon child and which fd to report on.
const notifyEnv = "LTSP_UNIONFS_NOTIFY_FD"

// runBackground starts the daemon and waits for its report.
func runBackground() error {
	exe, err := os.Executable()
	if err != nil {
		return fmt.Errorf("cannot find my own executable to start the daemon: %w", err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		return err
	}
	defer r.Close()
	cmd := exec.Command(exe, os.Args[1:]...)
	cmd.Args[0] = daemonArgv0()
	cmd.Env = append(os.Environ(), notifyEnv+"=3")
	cmd.ExtraFiles = []*os.File{w}
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr // until it is ready: a crash of the daemon shows here
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		w.Close()
		return fmt.Errorf("starting the daemon: %w", err)
	}
	w.Close()
	report, _ := io.ReadAll(io.LimitReader(r, 64<<10))
	line := strings.TrimSpace(string(report))
	switch {
	case line == "OK":
		cmd.Process.Release()
		return nil
	case strings.HasPrefix(line, "ERR "):
		codeStr, msg, _ := strings.Cut(strings.TrimPrefix(line, "ERR "), " ")
		code, err := strconv.Atoi(codeStr)
		if err != nil || code <= 0 {
			code = exitDaemon
		}
		cmd.Wait()
		return withCode(code, errors.New(msg))
	}
	state, err := cmd.Process.Wait()
	if err != nil {
		return withCode(exitDaemon, fmt.Errorf("the daemon died before the mount was live: %w", err))
	}
	return withCode(exitDaemon, fmt.Errorf("the daemon exited (%v) before the mount was live", state))
}

// daemonArgv0 is the argv[0] the daemon runs under: the command's own, marked with a leading '@' in an
// initramfs, where it serves the future root filesystem (see package rootdaemon).
func daemonArgv0() string {
	if rootdaemon.InInitramfs() {
		return rootdaemon.Marked(os.Args[0])
	}
	return os.Args[0]
}

// notifier is the daemon's end of the readiness pipe; nil when running in the foreground.
type notifier struct {
	once sync.Once
	f    *os.File
}

// daemonNotifier returns the readiness pipe if this process is the daemon child, and removes the marker from the
// environment so nothing it might start inherits it.
func daemonNotifier() *notifier {
	v, ok := os.LookupEnv(notifyEnv)
	if !ok {
		return nil
	}
	os.Unsetenv(notifyEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil
	}
	syscall.CloseOnExec(fd)
	return &notifier{f: os.NewFile(uintptr(fd), "notify")}
}

// ready reports success to the waiting command.
func (n *notifier) ready() {
	n.once.Do(func() {
		fmt.Fprintln(n.f, "OK")
		n.f.Close()
	})
}

// fail reports err to the waiting command, which prints it and exits with its code.
func (n *notifier) fail(err error) {
	n.once.Do(func() {
		msg := oneLine(err.Error())
		fmt.Fprintf(n.f, "ERR %d %s\n", exitCode(err), msg)
		n.f.Close()
	})
}

// detach makes a ready daemon independent of the terminal and of whoever waits for its output: standard input
// and output go to /dev/null and the log goes to the system log. (The working directory is already /proc, see
// sysx.AnchorProc.)
func detach(logw *logWriter) {
	if null, err := os.OpenFile("/dev/null", os.O_RDWR, 0); err == nil {
		for _, fd := range []int{0, 1, 2} {
			unix.Dup2(int(null.Fd()), fd)
		}
		null.Close()
	}
	logw.set(systemLog())
}

// systemLog opens where a background daemon logs: in the initramfs the kernel log (no syslog runs there, and
// the daemon outlives switch_root), elsewhere the journal or syslog through /dev/log, else the kernel log.
func systemLog() io.Writer {
	if !rootdaemon.InInitramfs() {
		if w, err := syslog.New(syslog.LOG_DAEMON|syslog.LOG_NOTICE, "ltsp-unionfs"); err == nil {
			return w
		}
	}
	if f, err := os.OpenFile("/dev/kmsg", os.O_WRONLY, 0); err == nil {
		return &kmsgWriter{f} // one write per record: no buffering
	}
	return io.Discard
}

// kmsgWriter writes each log line as one /dev/kmsg record (the logger's "ltsp-unionfs: " prefix is the tag).
type kmsgWriter struct{ f *os.File }

func (k *kmsgWriter) Write(p []byte) (int, error) {
	_, err := k.f.Write(p)
	return len(p), err
}

// logWriter is the daemon's log destination, switchable when the daemon detaches.
type logWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *logWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n, err := l.w.Write(p)
	if f, ok := l.w.(*bufio.Writer); ok {
		f.Flush()
	}
	return n, err
}

func (l *logWriter) set(w io.Writer) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.w = w
}

// newLogger returns the daemon's logger writing to w.
func newLogger(w io.Writer) *log.Logger {
	return log.New(w, "ltsp-unionfs: ", 0)
}
