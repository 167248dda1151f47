package main

import (
	"io"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// Fuzz targets for every parser of user input in the command: -o option lists, the escaped lists inside them,
// layer arguments, unionfs-fuse branch lists, mount(8)'s helper argv and sizes. Each checks properties that hold
// for any input: no panic, the same result twice, errors that are usage errors and print as one line, only known
// options accepted, and round trips where the parser has an inverse. The seed corpus runs with every go test;
// make fuzz runs each target for FUZZTIME.

// newParseState returns empty mount options and a flag set bound to them, as newRootCommand makes them.
func newParseState() (*pflag.FlagSet, *mountOptions) {
	o := &mountOptions{entryTimeout: -1, attrTimeout: -1, negTimeout: -1, ptMinSize: -1}
	fs := pflag.NewFlagSet("ltsp-unionfs", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.SetNormalizeFunc(normalizeOptionName)
	fs.BoolVarP(&o.foreground, "foreground", "f", false, "")
	fs.BoolVarP(&o.debug, "debug", "d", false, "")
	fs.BoolVar(&o.sloppy, "sloppy", false, "")
	addMountFlags(fs, o)
	return fs, o
}

// checkParseError fails unless err is a usage error whose printed form (see oneLine) is one line without control
// characters, and whose raw message has none either unless the input had some.
func checkParseError(t *testing.T, err error, input string) {
	t.Helper()
	if err == nil {
		return
	}
	if code := exitCode(err); code != exitUsage {
		t.Errorf("error %q has exit code %d, want %d (usage)", err, code, exitUsage)
	}
	msg := err.Error()
	if msg == "" {
		t.Errorf("empty error message")
	}
	if printed := oneLine(msg); strings.ContainsAny(printed, "\n\r\x1b") || !needsEscape(input) && printed != msg {
		t.Errorf("error %q prints as %q", msg, printed)
	}
}

// escapeList joins parts with sep, escaping sep and backslashes in them: the inverse of splitEscaped.
func escapeList(parts []string, sep byte) string {
	s := string([]byte{sep}) // not string(sep): a byte above 0x7f would become a two-byte rune
	esc := make([]string, len(parts))
	for i, p := range parts {
		p = strings.ReplaceAll(p, `\`, `\\`)
		esc[i] = strings.ReplaceAll(p, s, `\`+s)
	}
	return strings.Join(esc, s)
}

// optionListSeeds are the interesting -o lists: every kind of option, escapes, repeats, contradictions, values
// that are nearly valid, and hostile bytes.
var optionListSeeds = []string{
	"", ",,,", "=", "=x", "allow_other,bogus", "lowerdir=/a:/b,upperdir=/c", "lowerdir=/a\\:b\\,c", "fsname=a\\,b",
	"size=1G", "size=25%", "size=", "size=1 G", "size=abc", "size=-1", "size=0x10k", "size=1x", "size=1G,size=2M", "entry_timeout=NaN", "attr_timeout=Inf", "negative_timeout=1e9",
	"entry_timeout=1e10", "entry_timeout=-0", "entry_timeout=0x1p4", "x-systemd.device-timeout=0,comment=foo",
	"ro=/x", "rw=/y", "suid=yes", "suid=false", "ro,rw", "passthrough,nopassthrough", "whiteout=aufs",
	"whiteout=overlay", "whiteout=bogus", "passthrough_min_size=1M", "passthrough_min_size=-1",
	"passthrough_min_size=9223372036854775807G", "foreground", "debug", "sloppy", "\\", "upperdir=",
	"upperdir=/a,upperdir=/b", "upperdir=/a,upperdir=/a", "debug_file=x", "direct_io", "sub-type=x", "allow-other",
	"dirs=/a=RW:/b=RO", "chroot=/r,dirs=/a=RW:/b", "dirs=/a=RW,chroot=/r", "cow,dirs=:", "cow=1",
	"lowerdir=" + strings.Repeat("a/", 3000), "fsname=a\nb", "fsname=\xff\xfe", "lowerdir=\x1b[31m",
	"workdir=/w,index=off,metacopy=on,redirect_dir=follow,xino=auto,uuid=null,nfs_export=off",
	"nofail,_netdev,defaults,auto,noauto,user,users,nouser,owner,group,async,nonempty",
	"max_files=32767,hide_meta_files,statfs_omit_ro,use_ino,noinitgroups", "relaxed_permissions",
}

// applyFresh applies an option list to fresh state.
func applyFresh(list string) (*mountOptions, error) {
	fs, o := newParseState()
	return o, applyOptionList(fs, list, o)
}

func FuzzOptionList(f *testing.F) {
	for _, s := range optionListSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		o, err := applyFresh(list)
		o2, err2 := applyFresh(list)
		if (err == nil) != (err2 == nil) || err != nil && err.Error() != err2.Error() || !reflect.DeepEqual(o, o2) {
			t.Fatalf("%q parses differently twice: %v / %v", list, err, err2)
		}
		if err != nil {
			checkParseError(t, err, list)
			return
		}
		for _, item := range splitOptions(list) {
			name, _, _ := strings.Cut(item, "=")
			if item == "" || isIgnoredOptionName(name) {
				continue
			}
			if name = strings.ReplaceAll(name, "-", "_"); !isMountOption(name) {
				t.Errorf("%q was accepted with the unknown option %q", list, name)
			}
		}
		for _, l := range o.lowers {
			if l == "" {
				t.Errorf("%q gave an empty lower layer", list)
			}
		}
		for _, d := range []time.Duration{o.entryTimeout, o.attrTimeout, o.negTimeout} {
			if d != -1 && (d < 0 || d > 1e9*time.Second) {
				t.Errorf("%q gave the timeout %v", list, d)
			}
		}
		if o.ptMinSize < -1 {
			t.Errorf("%q gave passthrough_min_size %d", list, o.ptMinSize)
		}
		if o.anonSize != "" && !tmpfsSize.MatchString(o.anonSize) {
			t.Errorf("%q gave size %q", list, o.anonSize)
		}
		// Round trip: the layers, written back as an option list, read back the same.
		if len(o.lowers) > 0 && !o.unionfsFuse {
			again := "lowerdir=" + strings.ReplaceAll(escapeList(o.lowers, ':'), ",", `\,`)
			if o.upper != "" {
				again += ",upperdir=" + escapeList([]string{o.upper}, ',')
			}
			o3, err := applyFresh(again)
			if err != nil || !reflect.DeepEqual(o3.lowers, o.lowers) || o3.upper != o.upper {
				t.Errorf("%q: layers %q %q written back as %q read as %q %q (%v)", list, o.lowers, o.upper, again,
					o3.lowers, o3.upper, err)
			}
		}
	})
}

func FuzzSplitEscaped(f *testing.F) {
	for _, s := range []string{"", ":", "a:b", `a\:b`, `\`, `a\`, `\\:`, "::", `a\\\:b:c`} {
		f.Add(s, byte(':'))
		f.Add(s, byte(','))
	}
	f.Fuzz(func(t *testing.T, s string, sep byte) {
		if sep == '\\' {
			t.Skip("a backslash escapes; it is never the separator")
		}
		parts := splitEscaped(s, sep)
		if len(parts) == 0 {
			t.Fatalf("splitEscaped(%q) returned nothing", s)
		}
		joined := escapeList(parts, sep)
		if again := splitEscaped(joined, sep); !reflect.DeepEqual(again, parts) {
			t.Errorf("splitEscaped(%q) = %q; joined back %q splits as %q", s, parts, joined, again)
		}
		if !strings.Contains(s, `\`) && strings.Join(parts, string([]byte{sep})) != s {
			t.Errorf("splitEscaped(%q) = %q lost text", s, parts)
		}
		// splitOptions keeps the escapes: it loses nothing, and splitting its parts again gives splitEscaped's.
		opts := splitOptions(s)
		if strings.Join(opts, ",") != s {
			t.Errorf("splitOptions(%q) = %q lost text", s, opts)
		}
		if sep == ',' {
			for i, p := range opts {
				if i >= len(parts) || unescape(p) != parts[i] {
					t.Errorf("splitOptions(%q) = %q, splitEscaped gives %q", s, opts, parts)
					break
				}
			}
		}
	})
}

func FuzzBranchList(f *testing.F) {
	for _, s := range []string{"/cow=RW:/rofs=RO", "/cow=rw:/rofs", "/a", "=RW:/b", "/a=RW", "/a=RW:/b=RW:/c",
		"/a=RO:/b=RW", "/a\\:b=RW:/c=RO", "x=y=RW:z=ro", "::", ":", "", "/a=RW=RO:/b", "/a=Rw:/b=rO",
		strings.Repeat("/x", 3000) + "=RW:/y", "/a\nb=RW:/c", "\xff=RW:\xfe=RO"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		o, o2 := &mountOptions{}, &mountOptions{}
		err, err2 := o.addBranches(list, "branch list"), o2.addBranches(list, "branch list")
		if (err == nil) != (err2 == nil) || err != nil && err.Error() != err2.Error() || !reflect.DeepEqual(o, o2) {
			t.Fatalf("%q parses differently twice", list)
		}
		if err != nil {
			checkParseError(t, err, list)
			return
		}
		if len(o.lowers) == 0 || !o.unionfsFuse || o.upper == "" && !o.readOnly {
			t.Fatalf("%q accepted as %+v", list, o)
		}
		var items []string
		if o.upper != "" {
			items = append(items, o.upper+"=RW")
		}
		for _, l := range o.lowers {
			if l == "" {
				t.Fatalf("%q gave an empty lower", list)
			}
			items = append(items, l+"=RO")
		}
		again := escapeList(items, ':')
		// A list beginning with a branch called ro or rw reads as ro=/rw= on the command line (not in dirs=);
		// the command refuses it rather than mounting something else (TestHostileInput).
		if !isBranchList(again) && !isLayerSpec(again) {
			t.Errorf("%q written back as %q is not recognised as a branch list", list, again)
		}
		o3 := &mountOptions{}
		if err := o3.addBranches(again, "branch list"); err != nil || !reflect.DeepEqual(o3.lowers, o.lowers) ||
			o3.upper != o.upper {
			t.Errorf("%q (%q %q) written back as %q reads as %q %q (%v)", list, o.upper, o.lowers, again, o3.upper,
				o3.lowers, err)
		}
	})
}

// splitArgs turns fuzz input into an argument vector: arguments are NUL-separated, as in /proc/PID/cmdline (an
// argument cannot contain NUL).
func splitArgs(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, "\x00")
}

func FuzzArgs(f *testing.F) {
	for _, s := range []string{"", "/mnt", "ro=/a\x00rw=/b\x00/mnt", "ro=/a:/b,rw=/c\x00/mnt", "ro=/a\x00rw=/b",
		"ro=/a\x00", "\x00", "ro=/a\x00rw=/b\x00rw=/c\x00/m", "ro=\x00/m", "rw=\x00/m", "ro=/a,bogus\x00/m",
		"/cow=RW:/rofs=RO\x00/m", "src\x00ro=/a\x00/m", "a\x00b\x00ro=/a\x00/m", "ro=/a\x00ro=/b\x00/m",
		"ro=/a\\:b\x00rw=/c\\,d\x00/m", "ro=/a\x00\x00/m", "ro=/a\nb\x00/m"} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, s string, unionfsFuse bool) {
		args := splitArgs(s)
		parse := func() (*mountOptions, error) {
			o := &mountOptions{unionfsFuse: unionfsFuse}
			return o, parseArgs(args, o)
		}
		o, err := parse()
		o2, err2 := parse()
		if (err == nil) != (err2 == nil) || err != nil && err.Error() != err2.Error() || !reflect.DeepEqual(o, o2) {
			t.Fatalf("%q parses differently twice", args)
		}
		if err != nil {
			checkParseError(t, err, s)
			return
		}
		if o.mountpoint != args[len(args)-1] || o.mountpoint == "" || isLayerSpec(o.mountpoint) {
			t.Errorf("%q: mount point %q", args, o.mountpoint)
		}
		if len(o.lowers) == 0 {
			t.Errorf("%q accepted without a lower layer", args)
		}
		for _, l := range o.lowers {
			if l == "" {
				t.Errorf("%q gave an empty lower layer", args)
			}
		}
		for _, a := range args[:len(args)-1] {
			if a == "" {
				t.Errorf("%q accepted with an empty argument", args)
			}
		}
	})
}

// FuzzCommandLine parses whole command lines as the root command does (cobra, pflag, option lists, positional
// arguments), with --fake so that nothing is ever mounted, and without the subcommands, which write files.
func FuzzCommandLine(f *testing.F) {
	for _, s := range []string{"", "--help", "-o\x00allow_other\x00ro=/a\x00rw=/b\x00/m", "--bogus", "---",
		"-", "--", "--\x00-o", "-o", "-oallow_other,size=1G\x00ro=/\x00/m", "--suid=yes\nno\x00ro=/a\x00/m",
		"--allow-other\x00--entry-timeout=5\x00ro=/a\x00/m", "-fd\x00ro=/a\x00/m", "-xyz", "--lowerdir",
		"--lowerdir=\x00/m", "--ro=false\x00ro=/a\x00/m", "--cpuprofile\x00/x\x00ro=/a\x00/m", "__complete\x00",
		"-o\x00cow\x00/a=RW:/b=RO\x00/m", "--sloppy\x00-o\x00bogus\x00ro=/a\x00/m", "ro=/a\x00rw=/b\x00\x00/m"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		run := func() error {
			cmd := newRootCommand(nil)
			for _, c := range cmd.Commands() {
				cmd.RemoveCommand(c)
			}
			cmd.CompletionOptions.DisableDefaultCmd = true
			cmd.SetOut(io.Discard)
			cmd.SetErr(io.Discard)
			cmd.SetArgs(append([]string{"--fake"}, splitArgs(s)...))
			return cmd.Execute()
		}
		err, err2 := run(), run()
		if (err == nil) != (err2 == nil) || err != nil && err.Error() != err2.Error() {
			t.Fatalf("%q: %v, then %v", s, err, err2)
		}
		if err != nil && !strings.Contains(err.Error(), "__complete") {
			checkParseError(t, err, s)
		}
	})
}

func FuzzHelperArgs(f *testing.F) {
	for _, s := range []string{"", "src\x00/m", "src\x00/m\x00-o\x00allow_other", "src\x00/m\x00-oallow_other",
		"src\x00/m\x00-o", "src\x00/m\x00-N\x00/proc/1/ns/mnt", "src\x00/m\x00-t\x00ext4", "src\x00/m\x00-t\x00fuse.ltsp-unionfs",
		"src\x00/m\x00-sfnv", "src\x00/m\x00-x", "src\x00/m\x00extra", "-\x00/m", "src\x00--\x00/m", "src\x00/m\x00-",
		"src\x00/m\x00-o\x00a\x00-o\x00b", "src\x00/m\x00-fs\x00-vn", "src\x00/m\x00-o\x00a\nb"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		args := splitArgs(s)
		out, err := helperArgs(args)
		out2, err2 := helperArgs(args)
		if (err == nil) != (err2 == nil) || err != nil && err.Error() != err2.Error() || !reflect.DeepEqual(out, out2) {
			t.Fatalf("%q parses differently twice", args)
		}
		if err != nil {
			checkParseError(t, err, s)
			return
		}
		var positional, options []string
		for i := 0; i < len(args); i++ {
			switch a := args[i]; {
			case a == "-o":
				i++
				options = append(options, args[i])
			case strings.HasPrefix(a, "-o"):
				options = append(options, a[2:])
			case a == "-t":
				i++
			case len(a) > 1 && a[0] == '-':
			default:
				positional = append(positional, a)
			}
		}
		sep := len(out) - 3
		if sep < 0 || out[sep] != "--" || !reflect.DeepEqual(out[sep+1:], positional) {
			t.Fatalf("%q translated to %q: the positional arguments are not %q after --", args, out, positional)
		}
		var gotOptions []string
		for i := 0; i < sep; i++ {
			switch out[i] {
			case "--fake", "--sloppy":
			case "-o":
				i++
				gotOptions = append(gotOptions, out[i])
			default:
				t.Fatalf("%q translated to %q, which has %q", args, out, out[i])
			}
		}
		if !reflect.DeepEqual(gotOptions, options) {
			t.Errorf("%q translated to %q: options %q, want %q", args, out, gotOptions, options)
		}
	})
}

// sizeSyntax is what parseSize accepts: a decimal count (strconv.ParseInt's sign included) and a binary suffix.
var sizeSyntax = regexp.MustCompile(`^[+-]?[0-9]+[KMG]?$`)

func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"", "0", "1", "1K", "1M", "1G", "1T", "512M", "-1", "+1", "-0", "1k", "K", "0x10",
		"1_000", "4294967296G", "4294967295G", "9223372036854775807", "9223372036854775808", " 1", "1.5M", "1e3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseSize(s)
		if n2, err2 := parseSize(s); n2 != n || (err == nil) != (err2 == nil) {
			t.Fatalf("parseSize(%q) differs twice", s)
		}
		if err != nil {
			if strings.ContainsAny(oneLine(err.Error()), "\n\r") {
				t.Errorf("parseSize(%q): error %q", s, err)
			}
			return
		}
		if n < 0 || n > 1<<62 {
			t.Errorf("parseSize(%q) = %d", s, n)
		}
		if !sizeSyntax.MatchString(s) {
			t.Errorf("parseSize accepted %q", s)
		}
		for _, unit := range []struct {
			suffix string
			shift  uint
		}{{"", 0}, {"K", 10}, {"M", 20}, {"G", 30}} {
			if n%(1<<unit.shift) != 0 {
				continue
			}
			text := strconv.FormatInt(n>>unit.shift, 10) + unit.suffix
			if back, err := parseSize(text); err != nil || back != n {
				t.Errorf("parseSize(%q) = %d, but parseSize(%q) = %d, %v", s, n, text, back, err)
			}
		}
	})
}
