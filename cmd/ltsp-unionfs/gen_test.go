package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// The man pages and completion scripts (gen.go) are checked against the command tree itself, so that a new
// subcommand, flag, mount option or exit code is covered without changing these tests.

// exitCodeLines returns the exit codes the help text documents, as "CODE text" lines.
func exitCodeLines(t *testing.T) []string {
	t.Helper()
	lines := strings.Split(exitCodesHelp, "\n")[1:]
	if len(lines) <= exitBusy {
		t.Fatalf("exitCodesHelp documents %d codes; exitBusy is %d", len(lines), exitBusy)
	}
	for i := range lines {
		lines[i] = strings.Join(strings.Fields(lines[i]), " ")
	}
	return lines
}

// visibleFlags returns the flags of c that its man page must document: its own and the inherited ones, cobra's
// --help included, hidden ones excluded.
func visibleFlags(c *cobra.Command) []*pflag.Flag {
	c.InitDefaultHelpFlag()
	var flags []*pflag.Flag
	add := func(f *pflag.Flag) {
		if !f.Hidden && f.Deprecated == "" {
			flags = append(flags, f)
		}
	}
	c.NonInheritedFlags().VisitAll(add)
	c.InheritedFlags().VisitAll(add)
	return flags
}

// renderMan renders a man page as plain text, 160 columns wide and without hyphenation.
func renderMan(t *testing.T, page string) string {
	t.Helper()
	out, err := exec.Command("groff", "-man", "-Tascii", "-rHY=0", "-rLL=160n", "-rLT=160n",
		"-P-c", "-P-b", "-P-u", "-P-o", page).Output()
	if err != nil {
		t.Fatalf("groff %s: %v", page, err)
	}
	return string(out)
}

// collapse replaces each run of white space with one space.
func collapse(s string) string { return " " + strings.Join(strings.Fields(s), " ") + " " }

// section returns the collapsed text of a rendered page's section: the lines from its heading (a line that is
// not indented) to the next heading.
func section(text, name string) string {
	var b strings.Builder
	in := false
	for _, line := range strings.Split(text, "\n") {
		if line != "" && line[0] != ' ' && line[0] != '\t' {
			in = line == name
			continue
		}
		if in {
			b.WriteString(line + "\n")
		}
	}
	return collapse(b.String())
}

// TestGenMan generates the man pages with the binary and checks that there is one page per command, that groff
// (and mandoc, if installed) render each without a warning, that each page documents every flag of its command
// and every exit code in its EXIT STATUS section, and that the main page documents every mount option.
func TestGenMan(t *testing.T) {
	testutil.RequireTool(t, "groff", "groff-base")
	dir := filepath.Join(t.TempDir(), "man8")
	r := runCLI(t, "", "gen", "man", dir)
	if r.code != 0 || r.stderr != "" || r.stdout != "" {
		t.Fatalf("gen man: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	root := newRootCommand(nil)
	var want, got []string
	cmds := manCommands(root)
	for _, c := range cmds {
		want = append(want, manPageName(c))
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		got = append(got, e.Name())
	}
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("gen man wrote %v, want a page per command: %v", got, want)
	}
	if len(cmds) < 6 {
		t.Fatalf("only %d commands have pages; the tree has at least the root, stats, version, gen and its two", len(cmds))
	}
	_, haveMandoc := exec.LookPath("mandoc")
	for _, c := range cmds {
		page := filepath.Join(dir, manPageName(c))
		t.Run(manPageName(c), func(t *testing.T) {
			var stderr bytes.Buffer
			cmd := exec.Command("groff", "-man", "-Tutf8", "-ww", "-z", page)
			cmd.Stderr = &stderr
			if err := cmd.Run(); err != nil || stderr.Len() > 0 {
				t.Errorf("groff -ww: %v: %s", err, stderr.String())
			}
			if haveMandoc == nil {
				out, _ := exec.Command("mandoc", "-T", "lint", "-W", "warning", page).CombinedOutput()
				if len(out) > 0 {
					t.Errorf("mandoc -T lint:\n%s", out)
				}
			}
			rendered := renderMan(t, page)
			text := collapse(rendered)
			if !strings.HasPrefix(text, " "+strings.ToUpper(strings.TrimSuffix(manPageName(c), ".8"))+"(8)") {
				t.Errorf("the page does not start with its title: %.80q", text)
			}
			if !strings.Contains(text, " "+c.Short) {
				t.Errorf("the page lacks the command's summary %q", c.Short)
			}
			options := section(rendered, "OPTIONS")
			for _, f := range visibleFlags(c) {
				name := "--" + f.Name
				if f.Shorthand != "" {
					name = "-" + f.Shorthand + ", " + name
				}
				if !regexp.MustCompile(`[ ,]` + regexp.QuoteMeta(name) + `[ =,.]`).MatchString(options) {
					t.Errorf("the OPTIONS section does not document the flag %s", name)
				}
			}
			exit := section(rendered, "EXIT STATUS")
			for _, line := range exitCodeLines(t) {
				if !strings.Contains(exit, " "+line+" ") {
					t.Errorf("the EXIT STATUS section lacks %q; it is %q", line, exit)
				}
			}
			if c.HasParent() {
				return
			}
			opts := section(rendered, "MOUNT OPTIONS")
			for _, s := range mountOptionSpecs {
				entry := s.name
				if s.metavar != "" {
					entry += "=" + s.metavar
				}
				if !strings.Contains(opts, " "+entry+" "+strings.Join(strings.Fields(s.help), " ")) {
					t.Errorf("the MOUNT OPTIONS section does not document %s: %s", entry, s.help)
				}
			}
		})
	}
}

// TestGenManBadArguments checks gen's usage errors.
func TestGenManBadArguments(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	testutil.WriteFile(t, file, nil, 0644)
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"gen", "man"}, exitUsage},
		{[]string{"gen", "man", "a", "b"}, exitUsage},
		{[]string{"gen", "completion"}, exitUsage},
		{[]string{"gen", "completion", "tcsh"}, exitUsage},
		{[]string{"gen", "completion", "bash", "zsh"}, exitUsage},
		{[]string{"gen", "bogus"}, exitUsage},
		{[]string{"gen", "man", filepath.Join(file, "man8")}, exitError},
	} {
		r := runCLI(t, "", c.args...)
		if r.code != c.code || strings.Count(r.stderr, "\n") != 1 {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and one line", c.args, r.code, r.stderr, c.code)
		}
	}
}

// TestGenCompletion checks that each completion script is valid in its shell and that the bash script, sourced
// as bash-completion would, completes every subcommand name and the shells of gen completion.
func TestGenCompletion(t *testing.T) {
	dir := t.TempDir()
	scripts := map[string]string{}
	for _, shell := range completionShells {
		r := runCLI(t, "", "gen", "completion", shell)
		if r.code != 0 || r.stderr != "" || !strings.Contains(r.stdout, "ltsp-unionfs") {
			t.Fatalf("gen completion %s: exit %d, stderr %q", shell, r.code, r.stderr)
		}
		scripts[shell] = filepath.Join(dir, "completion."+shell)
		testutil.WriteFile(t, scripts[shell], []byte(r.stdout), 0644)
	}
	for shell, pkg := range map[string]string{"bash": "bash", "zsh": "zsh", "fish": "fish"} {
		t.Run(shell+" -n", func(t *testing.T) {
			testutil.RequireTool(t, shell, pkg)
			if out, err := exec.Command(shell, "-n", scripts[shell]).CombinedOutput(); err != nil || len(out) > 0 {
				t.Errorf("%s -n: %v: %s", shell, err, out)
			}
		})
	}
	const bashCompletion = "/usr/share/bash-completion/bash_completion"
	if _, err := os.Stat(bashCompletion); err != nil {
		// cobra's bash script needs bash-completion's _get_comp_words_by_ref, as every distribution provides.
		testutil.Unavailable(t, bashCompletion+" is missing (apt-get install bash-completion; .ci/run does)")
	}
	// complete runs the completion function for a command line whose last word is being typed and prints the
	// candidates one per line. compopt works only inside a real completion; outside one it is a no-op.
	complete := func(t *testing.T, words ...string) []string {
		t.Helper()
		script := `source "$1"; source "$2"; shift 2
compopt() { :; }
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); COMP_LINE="$*"; COMP_POINT=${#COMP_LINE}
__start_ltsp-unionfs
printf '%s\n' "${COMPREPLY[@]}"`
		args := append([]string{"-c", script, "bash", bashCompletion, scripts["bash"], binary}, words...)
		out, err := exec.Command("bash", args...).CombinedOutput()
		if err != nil {
			t.Fatalf("completing %q: %v: %s", words, err, out)
		}
		return strings.Fields(string(out))
	}
	root := newRootCommand(nil)
	for _, c := range manCommands(root)[1:] {
		path := strings.Fields(c.CommandPath())[1:]
		prefix := c.Name()[:min(2, len(c.Name()))]
		words := append(path[:len(path)-1:len(path)-1], prefix)
		got := complete(t, words...)
		if !contains(got, c.Name()) {
			t.Errorf("completing %q offers %q, not %s", words, got, c.Name())
		}
		for _, other := range got {
			if !strings.HasPrefix(other, prefix) {
				t.Errorf("completing %q offers %q, which does not begin with %q", words, other, prefix)
			}
		}
	}
	if got := complete(t, "gen", "completion", ""); strings.Join(got, " ") != strings.Join(completionShells, " ") {
		t.Errorf("completing gen completion offers %q, want %q", got, completionShells)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestMakeInstall runs make install into a DESTDIR and checks the exact list of installed files, their modes,
// the helper link, and that the completions installed are the ones gen completion writes.
func TestMakeInstall(t *testing.T) {
	testutil.RequireTool(t, "make", "make")
	dest, build := t.TempDir(), t.TempDir()
	repo, _ := filepath.Abs(filepath.Join("..", ".."))
	cmd := exec.Command("make", "-C", repo, "install", "DESTDIR="+dest, "BUILDDIR="+build)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make install: %v\n%s", err, out)
	}
	want := map[string]os.FileMode{
		"usr/bin/ltsp-unionfs":                                  0755,
		"sbin/mount.fuse.ltsp-unionfs":                          os.ModeSymlink,
		"usr/share/bash-completion/completions/ltsp-unionfs":    0644,
		"usr/share/zsh/vendor-completions/_ltsp-unionfs":        0644,
		"usr/share/fish/vendor_completions.d/ltsp-unionfs.fish": 0644,
		"usr/share/man/man8/mount.fuse.ltsp-unionfs.8":          os.ModeSymlink,
		// initramfs-tools: the hook, the boot script twice, and the root script the hook takes (the dracut
		// module's, installed once more outside dracut's tree).
		"usr/share/initramfs-tools/hooks/ltsp-unionfs":                0755,
		"usr/share/initramfs-tools/scripts/local-bottom/ltsp-unionfs": 0755,
		"usr/share/initramfs-tools/scripts/nfs-bottom/ltsp-unionfs":   0755,
		"usr/lib/ltsp-unionfs/ltsp-unionfs-root":                      0755,
	}
	for _, c := range manCommands(newRootCommand(nil)) {
		want["usr/share/man/man8/"+manPageName(c)] = 0644
	}
	scripts, _ := filepath.Glob(filepath.Join(moduleDir, "*.sh"))
	units, _ := filepath.Glob(filepath.Join(moduleDir, "*.service"))
	if len(scripts) == 0 || len(units) == 0 {
		t.Fatalf("no dracut module in %s", moduleDir)
	}
	for _, f := range append(scripts, units...) {
		mode := os.FileMode(0644)
		if strings.HasSuffix(f, ".sh") {
			mode = 0755
		}
		want["usr/lib/dracut/modules.d/90ltsp-unionfs/"+filepath.Base(f)] = mode
	}
	got := map[string]os.FileMode{}
	filepath.Walk(dest, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(dest, p)
			got[rel] = fi.Mode() & (os.ModeSymlink | os.ModePerm)
			if fi.Mode()&os.ModeSymlink != 0 {
				got[rel] = os.ModeSymlink
			}
		}
		return nil
	})
	for p, mode := range want {
		if g, ok := got[p]; !ok {
			t.Errorf("make install did not install %s", p)
		} else if g != mode {
			t.Errorf("%s installed with mode %v, want %v", p, g, mode)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("make install installed the unexpected %s", p)
		}
	}
	if l, _ := os.Readlink(filepath.Join(dest, "usr/share/man/man8/mount.fuse.ltsp-unionfs.8")); l != "ltsp-unionfs.8" {
		t.Errorf("the helper's man page links to %q", l)
	}
	if l, _ := os.Readlink(filepath.Join(dest, "sbin/mount.fuse.ltsp-unionfs")); l != "/usr/bin/ltsp-unionfs" {
		t.Errorf("the helper link points to %q", l)
	}
	for shell, p := range map[string]string{"bash": "usr/share/bash-completion/completions/ltsp-unionfs",
		"zsh": "usr/share/zsh/vendor-completions/_ltsp-unionfs", "fish": "usr/share/fish/vendor_completions.d/ltsp-unionfs.fish"} {
		installed, _ := os.ReadFile(filepath.Join(dest, p))
		if r := runCLI(t, "", "gen", "completion", shell); string(installed) != r.stdout {
			t.Errorf("the installed %s completion is not what gen completion %s writes", shell, shell)
		}
	}
}
