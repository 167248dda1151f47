package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
	"github.com/spf13/pflag"
)

// manSection is the manual section of every page: ltsp-unionfs is a system administration command.
const manSection = "8"

// completionShells are the shells `gen completion` writes scripts for.
var completionShells = []string{"bash", "zsh", "fish"}

// newGenCommand builds `gen`, which writes the documentation that `make install` installs: man pages and shell
// completion scripts, both derived from the command tree so that they cannot drift from it.
func newGenCommand() *cobra.Command {
	gen := &cobra.Command{
		Use:   "gen",
		Short: "Generate the man pages and the shell completion scripts",
		Long: `Generate the documentation that make install installs: a man page for ltsp-unionfs and for each of its
subcommands (gen man), and completion scripts for bash, zsh and fish (gen completion).

` + exitCodesHelp,
		Args: usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, args []string) error { return cmd.Help() },
	}
	man := &cobra.Command{
		Use:   "man DIR",
		Short: "Write the man pages (section 8) into DIR",
		Long: `Write a man page for ltsp-unionfs and for each of its subcommands into DIR (created if missing), named
ltsp-unionfs.8, ltsp-unionfs-stats.8 and so on. Every page lists the command's flags and the exit status; the
main page lists the mount options. SOURCE_DATE_EPOCH, if set, fixes the date the pages show.

` + exitCodesHelp,
		Example: `  ltsp-unionfs gen man /usr/share/man/man8`,
		Args:    usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return writeManPages(cmd.Root(), args[0])
		},
	}
	completion := &cobra.Command{
		Use:   "completion bash|zsh|fish",
		Short: "Write the completion script for a shell to standard output",
		Long: `Write the completion script for bash, zsh or fish to standard output. make install installs them where
the shells find them: bash-completion's completions directory, zsh's vendor-completions and fish's
vendor_completions.d.

` + exitCodesHelp,
		Example: `  source <(ltsp-unionfs gen completion bash)
  ltsp-unionfs gen completion fish > ~/.config/fish/completions/ltsp-unionfs.fish`,
		ValidArgs: completionShells,
		Args:      usageArgs(cobra.MatchAll(cobra.ExactArgs(1), cobra.OnlyValidArgs)),
		RunE: func(cmd *cobra.Command, args []string) error {
			return writeCompletion(cmd.Root(), args[0], cmd.OutOrStdout())
		},
	}
	gen.AddCommand(man, completion)
	return gen
}

// usageArgs makes an argument check's failure a usage error (exit code 2), as a bad flag is.
func usageArgs(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		return withCode(exitUsage, check(cmd, args))
	}
}

// writeCompletion writes shell's completion script for root to w.
func writeCompletion(root *cobra.Command, shell string, w io.Writer) error {
	switch shell {
	case "bash":
		return root.GenBashCompletionV2(w, true)
	case "zsh":
		return root.GenZshCompletion(w)
	case "fish":
		return root.GenFishCompletion(w, true)
	}
	return usageErrorf("no completion for shell %q: want bash, zsh or fish", shell)
}

// manCommands returns root and every command below it that has a man page: all but hidden ones, help topics and
// cobra's own help and completion commands.
func manCommands(root *cobra.Command) []*cobra.Command {
	cmds := []*cobra.Command{root}
	for _, c := range root.Commands() {
		if !c.IsAvailableCommand() || c.IsAdditionalHelpTopicCommand() {
			continue
		}
		cmds = append(cmds, manCommands(c)...)
	}
	return cmds
}

// manPageName is the file name of c's man page.
func manPageName(c *cobra.Command) string {
	return strings.ReplaceAll(c.CommandPath(), " ", "-") + "." + manSection
}

// writeManPages writes the man page of every command in root's tree into dir.
func writeManPages(root *cobra.Command, dir string) error {
	if err := os.MkdirAll(dir, 0755); err != nil {
		return fmt.Errorf("creating %s: %w", dir, err)
	}
	own, _ := buildVersions()
	date := time.Now()
	if epoch := os.Getenv("SOURCE_DATE_EPOCH"); epoch != "" {
		secs, err := strconv.ParseInt(epoch, 10, 64)
		if err != nil {
			return usageErrorf("SOURCE_DATE_EPOCH=%s: want seconds since 1970", epoch)
		}
		date = time.Unix(secs, 0)
	}
	date = date.UTC()
	for _, c := range manCommands(root) {
		header := &doc.GenManHeader{Section: manSection, Date: &date, Source: "ltsp-unionfs " + own,
			Manual: "System Administration"}
		page, err := manPage(c, header)
		if err != nil {
			return fmt.Errorf("man page of %s: %w", c.CommandPath(), err)
		}
		if err := os.WriteFile(filepath.Join(dir, manPageName(c)), page, 0644); err != nil {
			return err
		}
	}
	return nil
}

// manPage renders c's man page: cobra's page (name, synopsis, description, examples, see also) from a description
// rewritten for markdown, with its OPTIONS section replaced by one that gives each flag its value's name and lists
// the mount option flags compactly, plus the sections cobra has no place for: MOUNT OPTIONS on the main page and
// EXIT STATUS on every page.
func manPage(c *cobra.Command, header *doc.GenManHeader) ([]byte, error) {
	long, autoGen := c.Long, c.DisableAutoGenTag
	c.Long, c.DisableAutoGenTag = manDescription(c.Long), true
	defer func() { c.Long, c.DisableAutoGenTag = long, autoGen }()
	var buf bytes.Buffer
	if err := doc.GenMan(c, header, &buf); err != nil {
		return nil, err
	}
	page := buf.String()
	// mandoc and man-db read ISO dates; cobra writes "Jan 2006".
	page = strings.Replace(page, `"`+header.Date.Format("Jan 2006")+`"`, `"`+header.Date.Format("2006-01-02")+`"`, 1)
	for cobraOptions.MatchString(page) { // one match per pass: each ends on the next section's .SH
		page = cobraOptions.ReplaceAllString(page, "$1")
	}
	sections := manOptions(c)
	if !c.HasParent() {
		sections += manMountOptions() + manHelper
	}
	tail := manExitStatus()
	for _, next := range []string{"\n.SH EXAMPLE", "\n.SH SEE ALSO"} {
		if i := strings.Index(page, next); i >= 0 {
			page = page[:i+1] + sections + page[i+1:]
			sections = ""
			break
		}
	}
	page += sections
	if i := strings.Index(page, "\n.SH SEE ALSO"); i >= 0 {
		page = page[:i+1] + tail + page[i+1:]
	} else {
		page += tail
	}
	return []byte(page), nil
}

// cobraOptions matches the OPTIONS sections of cobra's man pages, which manOptions replaces.
var cobraOptions = regexp.MustCompile(`(?s)\.SH OPTIONS.*?\n(\.SH |$)`)

// manOptions renders the OPTIONS section of c: every visible flag, its own and inherited, with the name of its
// value; the mount options, which are long flags too, are listed by name (MOUNT OPTIONS describes them).
func manOptions(c *cobra.Command) string {
	c.InitDefaultHelpFlag()
	var b, mountFlags strings.Builder
	visit := func(f *pflag.Flag) {
		if f.Hidden || f.Deprecated != "" {
			return
		}
		varname, usage := pflag.UnquoteUsage(f)
		if isMountOption(f.Name) && !c.HasParent() {
			if mountFlags.Len() > 0 {
				mountFlags.WriteString(",\n")
			}
			mountFlags.WriteString(`\%\fB\-\-` + roffEscape(f.Name) + `\fP`) // \% : never hyphenated
			return
		}
		b.WriteString(".TP\n")
		if f.Shorthand != "" && f.ShorthandDeprecated == "" {
			fmt.Fprintf(&b, "\\fB\\-%s\\fP, ", roffEscape(f.Shorthand))
		}
		fmt.Fprintf(&b, "\\fB\\-\\-%s\\fP", roffEscape(f.Name))
		if varname != "" {
			switch varname {
			case "string", "stringArray", "strings", "int", "int64", "uint", "duration", "float64":
				varname = f.Name
			}
			fmt.Fprintf(&b, "=\\fI%s\\fP", roffEscape(strings.ToUpper(varname)))
		}
		b.WriteString("\n" + roffEscape(usage) + "\n")
	}
	c.NonInheritedFlags().VisitAll(visit)
	c.InheritedFlags().VisitAll(visit)
	if b.Len() == 0 && mountFlags.Len() == 0 {
		return ""
	}
	out := ".SH OPTIONS\n" + b.String()
	if mountFlags.Len() > 0 {
		out += ".PP\nEvery mount option is a long flag too, \\fB\\-\\-\\fP\\fINAME\\fP[=\\fIVALUE\\fP] being the same as " +
			"\\fB\\-o\\fP \\fINAME\\fP[=\\fIVALUE\\fP] (dashes and underscores are alike): \n" + mountFlags.String() +
			".\nMOUNT OPTIONS below describes them.\n"
	}
	return out
}

// manDescription turns a help text into the markdown cobra's man pages are made from: the exit status list and
// the one-line option list move to their own sections, indented blocks (tables in the help text) stay verbatim,
// and prose is escaped so that names such as allow_other are not read as emphasis.
func manDescription(long string) string {
	long = strings.ReplaceAll(long, exitCodesHelp, "")
	long = strings.ReplaceAll(long, optionNames(), "listed under MOUNT OPTIONS below.")
	var out []string
	inBlock := false
	for _, line := range strings.Split(strings.TrimRight(long, "\n "), "\n") {
		indented := strings.HasPrefix(line, " ")
		switch {
		case indented && !inBlock:
			if len(out) > 0 && out[len(out)-1] != "" {
				out = append(out, "")
			}
			out = append(out, "    "+line)
		case indented:
			out = append(out, "    "+line)
		case inBlock && line != "":
			out = append(out, "", markdownEscape(line))
		default:
			out = append(out, markdownEscape(line))
		}
		inBlock = indented
	}
	return strings.Join(out, "\n")
}

var markdownSpecial = regexp.MustCompile("[\\\\`*_{}\\[\\]<>#|~]")

// markdownEscape escapes the characters markdown would read as markup.
func markdownEscape(s string) string {
	return markdownSpecial.ReplaceAllString(s, `\$0`)
}

// roffEscape escapes text for a roff text line.
func roffEscape(s string) string {
	s = strings.ReplaceAll(s, `\`, `\e`)
	s = strings.ReplaceAll(s, "-", `\-`)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// manExitStatus renders exitCodesHelp as the EXIT STATUS section, so that the codes have one source.
func manExitStatus() string {
	var b strings.Builder
	b.WriteString(".SH EXIT STATUS\n")
	for _, line := range strings.Split(exitCodesHelp, "\n")[1:] {
		code, text, _ := strings.Cut(strings.TrimSpace(line), " ")
		fmt.Fprintf(&b, ".TP\n.B %s\n%s\n", code, roffEscape(strings.TrimSpace(text)))
	}
	return b.String()
}

// manHelper documents the program as mount(8)'s helper (helper.go), whose -f and -s become hidden flags.
const manHelper = `.SH MOUNT HELPER
Installed as \fB/sbin/mount.fuse.ltsp\-unionfs\fP (a link to the program), it is mount(8)'s helper for the type
\fBfuse.ltsp\-unionfs\fP, run as
.PP
.RS
\fBmount.fuse.ltsp\-unionfs\fP \fISOURCE\fP \fIMOUNTPOINT\fP [\fB\-s\fP] [\fB\-f\fP] [\fB\-n\fP] [\fB\-v\fP] [\fB\-o\fP \fIOPTIONS\fP]
.RE
.PP
\fB\-f\fP checks everything but does not mount, \fB\-s\fP ignores unknown mount options, \fB\-n\fP and \fB\-v\fP
are ignored; \fB\-N\fP (another mount namespace) is refused. SOURCE is ro=DIR[:DIR...],rw=DIR or a name, with the
layers in \fB\-o lowerdir=\fP...\fB,upperdir=\fP.... An fstab line:
.PP
.RS
.nf
ltsp /mnt/root fuse.ltsp\-unionfs lowerdir=/srv/image,upperdir=/run/changes 0 0
.fi
.RE
`

// manMountOptions renders mountOptionSpecs as the MOUNT OPTIONS section of the main page.
func manMountOptions() string {
	var b strings.Builder
	b.WriteString(".SH MOUNT OPTIONS\n")
	b.WriteString("Mount options are given as \\fB\\-o\\fP \\fINAME\\fP[=\\fIVALUE\\fP],... (several \\fB\\-o\\fP " +
		"add up; a comma or backslash inside a value is escaped with a backslash), in the options field of an fstab " +
		"line, or as long flags \\fB\\-\\-\\fP\\fINAME\\fP[=\\fIVALUE\\fP]. Unknown options are refused. mount(8)'s " +
		"x\\-* and comment= options are accepted and ignored.\n")
	for _, s := range mountOptionSpecs {
		b.WriteString(".TP\n")
		if s.metavar != "" {
			fmt.Fprintf(&b, "\\fB%s\\fP=\\fI%s\\fP\n", roffEscape(s.name), roffEscape(s.metavar))
		} else {
			fmt.Fprintf(&b, "\\fB%s\\fP\n", roffEscape(s.name))
		}
		b.WriteString(roffEscape(s.help) + "\n")
	}
	return b.String()
}
