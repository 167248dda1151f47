package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"time"
)

// runState collects the measurements of a run: results[workload][system] holds one value per repetition.
type runState struct {
	cfg       config
	lower     string
	img       *image
	systems   []system
	workloads []workload
	results   map[string]map[string][]float64
	failures  map[string]map[string]string
}

func newRun(cfg config, lower string, img *image, systems []system, workloads []workload) *runState {
	return &runState{cfg: cfg, lower: lower, img: img, systems: systems, workloads: workloads,
		results: map[string]map[string][]float64{}, failures: map[string]map[string]string{}}
}

// execute runs every repetition; within one, the systems take turns, each on a fresh mount with a fresh tmpfs
// upper layer, in an order rotated from one repetition to the next.
func (r *runState) execute() {
	for rep := 0; rep < r.cfg.reps; rep++ {
		for i := range r.systems {
			s := r.systems[(i+rep)%len(r.systems)]
			fmt.Printf("repetition %d/%d: %s\n", rep+1, r.cfg.reps, s.name)
			if err := r.runSystem(s); err != nil {
				fmt.Printf("  %s: %v\n", s.name, err)
			}
		}
	}
}

// runSystem mounts s and runs every workload on it once.
func (r *runState) runSystem(s system) error {
	base, err := os.MkdirTemp("", "bench-"+s.name+"-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(base)
	tmpfs, mnt := filepath.Join(base, "tmpfs"), filepath.Join(base, "mnt")
	os.Mkdir(tmpfs, 0755)
	os.Mkdir(mnt, 0755)
	if _, err := run("mount", "-t", "tmpfs", "-o", "size=3g,mode=0755", "tmpfs", tmpfs); err != nil {
		return err
	}
	defer run("umount", "-l", tmpfs)
	upper, work := filepath.Join(tmpfs, "upper"), filepath.Join(tmpfs, "work")
	os.Mkdir(upper, 0755)
	os.Mkdir(work, 0755)
	if err := s.mount(r.lower, upper, work, mnt); err != nil {
		return err
	}
	pid := 0
	if s.daemon {
		pid = daemonPID(mnt)
	}
	defer unmountAndWait(mnt, pid)
	for _, w := range r.workloads {
		e := &env{mnt: mnt, img: r.img, pid: pid, quick: r.cfg.quick}
		switch {
		case w.writes && s.readOnly, w.upOnly && s.bare, w.rss && pid == 0:
			continue
		case w.writes && s.bare:
			// No union: write into the tmpfs directly.
			e.mnt = upper
			os.MkdirAll(filepath.Join(upper, "tmp"), 0755)
		}
		v, err := w.run(e)
		if err != nil {
			r.fail(w.name, s.name, err)
			fmt.Printf("  %-32s failed: %v\n", w.name, err)
			continue
		}
		r.record(w.name, s.name, v)
		fmt.Printf("  %-32s %10.3f %s\n", w.name, v, w.unit)
	}
	return nil
}

func (r *runState) record(w, s string, v float64) {
	if r.results[w] == nil {
		r.results[w] = map[string][]float64{}
	}
	r.results[w][s] = append(r.results[w][s], v)
}

func (r *runState) fail(w, s string, err error) {
	if r.failures[w] == nil {
		r.failures[w] = map[string]string{}
	}
	r.failures[w][s] = err.Error()
}

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// table renders the medians as a Markdown table: one row per workload, one column per system, each cell the
// median and its ratio to kernel overlayfs (for times and sizes: system/overlayfs, lower is better; for
// throughputs: system/overlayfs, higher is better).
func (r *runState) table() string {
	var b strings.Builder
	b.WriteString("| workload | unit |")
	for _, s := range r.systems {
		b.WriteString(" " + s.name + " |")
	}
	b.WriteString("\n|---|---|")
	for range r.systems {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	for _, w := range r.workloads {
		ref, hasRef := r.results[w.name]["overlayfs"]
		fmt.Fprintf(&b, "| %s | %s |", w.name, w.unit)
		for _, s := range r.systems {
			v, ok := r.results[w.name][s.name]
			switch {
			case !ok && r.failures[w.name][s.name] != "":
				b.WriteString(" failed |")
			case !ok:
				b.WriteString(" n/a |")
			default:
				m := median(v)
				cell := fmt.Sprintf(" %s", format(m))
				if hasRef && s.name != "overlayfs" && median(ref) > 0 {
					cell += fmt.Sprintf(" (%.2fx)", m/median(ref))
				}
				b.WriteString(cell + " |")
			}
		}
		b.WriteString("\n")
	}
	r.sumRow(&b, "chmod + first write, 1GiB file", "chmod of the 1GiB file", "first write to the 1GiB file")
	better := "time and memory: lower is better; MB/s: higher is better"
	fmt.Fprintf(&b, "\nMedians of %d repetition(s); (Nx) = ratio to overlayfs; %s.\n", r.cfg.reps, better)
	for w, m := range r.failures {
		for s, msg := range m {
			fmt.Fprintf(&b, "- %s on %s failed: %s\n", w, s, firstLine(msg))
		}
	}
	return b.String()
}

// sumRow adds a row with the sum of the medians of two workloads, for systems that ran both: metadata-only
// copy-up moves the data copy of a chmod to the first write, so only the sum compares across systems.
func (r *runState) sumRow(b *strings.Builder, name, a, c string) {
	sum := func(sys string) (float64, bool) {
		va, oka := r.results[a][sys]
		vc, okc := r.results[c][sys]
		if !oka || !okc {
			return 0, false
		}
		return median(va) + median(vc), true
	}
	ref, hasRef := sum("overlayfs")
	any := false
	for _, s := range r.systems {
		if _, ok := sum(s.name); ok {
			any = true
		}
	}
	if !any {
		return
	}
	fmt.Fprintf(b, "| %s | s |", name)
	for _, s := range r.systems {
		v, ok := sum(s.name)
		switch {
		case !ok:
			b.WriteString(" n/a |")
		case hasRef && s.name != "overlayfs" && ref > 0:
			fmt.Fprintf(b, " %s (%.2fx) |", format(v), v/ref)
		default:
			fmt.Fprintf(b, " %s |", format(v))
		}
	}
	b.WriteString("\n")
}

func format(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.4f", v)
	}
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	if len(s) > 160 {
		return s[:160]
	}
	return s
}

// appendResults appends a dated section with the machine, the commit and the table to the ledger.
func appendResults(path string, cfg config, img *image, table string) error {
	kernel, _ := run("uname", "-r")
	commit, _ := exec.Command("git", "describe", "--always", "--dirty").Output()
	mode := "full"
	if cfg.quick {
		mode = "quick"
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0644)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintf(f, "\n## %s, %s run\n\nKernel %s, %d CPUs, commit %s, lower: squashfs of %s plus a 1 GiB file, upper: tmpfs.\n\n%s",
		time.Now().UTC().Format("2006-01-02 15:04 MST"), mode, strings.TrimSpace(kernel), runtime.NumCPU(),
		strings.TrimSpace(string(commit)), img.source, table)
	return err
}
