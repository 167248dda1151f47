// Package progress shows the progress of a long command on a terminal: a counter and a label, redrawn in place on
// one line at most a few times a second, and erased when the work is done. On anything that is not a terminal (a
// pipe, a file, a log) it writes nothing at all, so scripts and logs stay clean.
package progress

import (
	"fmt"
	"io"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultInterval is the least time between two redraws.
const DefaultInterval = 100 * time.Millisecond

// Reporter counts work done and shows the count on a terminal. The zero value and a nil *Reporter are valid
// no-op reporters. All methods are safe for concurrent use.
type Reporter struct {
	mu       sync.Mutex
	w        io.Writer // nil: not a terminal, report nothing
	label    string
	count    int64
	interval time.Duration
	last     time.Time // time of the last redraw
	drawn    bool      // a line is on the screen and must be erased by Done
	now      func() time.Time
}

// New returns a reporter that draws on w if w is a terminal (an *os.File, or anything with an Fd method, whose
// descriptor is a tty) and does nothing otherwise. label says what is counted, e.g. "reading upper layer".
func New(w io.Writer, label string) *Reporter {
	r := &Reporter{label: label, interval: DefaultInterval, now: time.Now}
	if IsTerminal(w) {
		r.w = w
	}
	return r
}

// IsTerminal reports whether w is a terminal.
func IsTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Active reports whether the reporter draws anything.
func (r *Reporter) Active() bool { return r != nil && r.w != nil }

// SetInterval changes the least time between two redraws (for tests, or slower terminals).
func (r *Reporter) SetInterval(d time.Duration) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.interval = d
	r.mu.Unlock()
}

// SetLabel changes the label and redraws at the next opportunity.
func (r *Reporter) SetLabel(label string) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.label = label
	r.last = time.Time{}
}

// Add counts n more units of work, and redraws if the last redraw is old enough.
func (r *Reporter) Add(n int) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.count += int64(n)
	if r.w == nil {
		return
	}
	if now := r.now(); now.Sub(r.last) >= r.interval {
		r.last = now
		r.draw()
	}
}

// Count returns the count so far.
func (r *Reporter) Count() int64 {
	if r == nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.count
}

// draw rewrites the line. Preconditions: r.mu is held, r.w is not nil.
func (r *Reporter) draw() {
	// \r returns to the start of the line, \x1b[K erases what a longer earlier line left.
	fmt.Fprintf(r.w, "\r%s: %d\x1b[K", r.label, r.count)
	r.drawn = true
}

// Done erases the progress line, so that what is printed next starts on a clean line. The reporter may be used
// again afterwards.
func (r *Reporter) Done() {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.w != nil && r.drawn {
		fmt.Fprint(r.w, "\r\x1b[K")
		r.drawn = false
	}
	r.last = time.Time{}
}
