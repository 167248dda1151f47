package progress

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// openPty opens a pseudo-terminal pair: the master to read what is drawn, the slave as the reporter's terminal.
func openPty(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		testutil.Unavailable(t, fmt.Sprintf("no pseudo-terminals: %v", err))
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); m.Close() })
	return m, s
}

func TestSilentWhenNotATerminal(t *testing.T) {
	var buf bytes.Buffer
	r := New(&buf, "counting")
	r.SetInterval(0)
	for i := 0; i < 100; i++ {
		r.Add(1)
	}
	r.Done()
	if buf.Len() != 0 || r.Active() {
		t.Errorf("a reporter on a buffer wrote %q (active %v)", buf.String(), r.Active())
	}
	if r.Count() != 100 {
		t.Errorf("count %d, want 100", r.Count())
	}
	// A pipe is no terminal either.
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer pr.Close()
	p := New(pw, "counting")
	p.Add(5)
	p.Done()
	pw.Close()
	if b, _ := readAll(pr); len(b) != 0 {
		t.Errorf("a reporter on a pipe wrote %q", b)
	}
	var nilR *Reporter
	nilR.Add(1)
	nilR.Done()
}

func readAll(f *os.File) ([]byte, error) {
	var out []byte
	buf := make([]byte, 4096)
	for {
		n, err := f.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil || n == 0 {
			return out, nil
		}
	}
}

func TestDrawsOnTerminalRateLimited(t *testing.T) {
	m, s := openPty(t)
	r := New(s, "reading")
	if !r.Active() {
		t.Fatal("a reporter on a pseudo-terminal is not active")
	}
	now := time.Unix(1000, 0)
	r.now = func() time.Time { return now }
	r.Add(1) // first: drawn
	for i := 0; i < 50; i++ {
		r.Add(1) // same instant: not drawn
	}
	now = now.Add(DefaultInterval)
	r.Add(1) // drawn: 52
	r.SetLabel("merging")
	r.Add(1) // a new label draws at once: 53
	r.Done()
	want := "\rreading: 1\x1b[K\rreading: 52\x1b[K\rmerging: 53\x1b[K\r\x1b[K"
	got := make([]byte, 0, len(want))
	buf := make([]byte, 256)
	m.SetReadDeadline(time.Now().Add(5 * time.Second))
	for len(got) < len(want) {
		n, err := m.Read(buf)
		if err != nil {
			break
		}
		got = append(got, buf[:n]...)
	}
	// The terminal's output processing may turn \n into \r\n, but there is no \n: the bytes come through as written.
	if string(got) != want {
		t.Errorf("terminal got %q, want %q", got, want)
	}
	if strings.Count(string(got), "reading:") != 2 {
		t.Errorf("redraws were not rate-limited: %q", got)
	}
}
