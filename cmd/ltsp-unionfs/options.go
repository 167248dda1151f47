package main

import (
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// mountOptions is everything the command line says about one mount.
type mountOptions struct {
	foreground bool
	debug      bool

	lowers     []string // lower layer paths, topmost first
	upper      string   // upper layer path
	workdir    string   // overlayfs's workdir= (accepted; not needed)
	mountpoint string
	fsname     string // the mount's source as df(1) and /proc/mounts show it
	whiteout   string // the marker format to write, "" for the default
	anonSize   string // size= of the anonymous tmpfs upper layer (no rw=)

	unionfsFuse bool   // the unionfs-fuse command line is in use (branch lists, -o cow, ...)
	branchList  bool   // the layers come from a branch list, which ro=, rw=, lowerdir= and upperdir= must not extend
	chroot      string // unionfs-fuse's chroot=: prefix of its branch paths

	allowOther   bool
	suid, dev    optBool // unset: the default for the daemon's privileges
	exec         optBool
	readOnly     bool
	noatime      bool
	passthrough  optBool
	ptMinSize    int64 // -1: the default
	entryTimeout time.Duration
	attrTimeout  time.Duration
	negTimeout   time.Duration

	notes []string // one log line per option accepted without effect

	fake, sloppy bool // mount(8) helper flags -f and -s

	cpuProfile, memProfile string // developer flags: profiles written at unmount
}

// optBool is an on/off mount option pair (suid/nosuid) whose unset state means "the default".
type optBool int8

const (
	optUnset optBool = iota
	optOn
	optOff
)

// or returns the option's value, or def if it is unset.
func (b optBool) or(def bool) bool {
	switch b {
	case optOn:
		return true
	case optOff:
		return false
	}
	return def
}

// optSpec describes one mount option. Every option is accepted in -o lists and as a long flag of the same name.
type optSpec struct {
	name    string
	metavar string // for options that take a value; "" for flags
	help    string
	apply   func(o *mountOptions, value string) error
}

// noValue is what the flag of a valueless option receives when given without "=value".
const noValue = "\x00"

func flagOpt(name, help string, apply func(o *mountOptions, on bool)) optSpec {
	return optSpec{name: name, help: help, apply: func(o *mountOptions, v string) error {
		switch v {
		case noValue, "true":
			apply(o, true)
		case "false":
			apply(o, false)
		default:
			if name == "ro" || name == "rw" {
				return usageErrorf("mount option %s=%s: in -o lists layers are lowerdir=DIR and upperdir=DIR "+
					"(ro and rw are the read-only and read-write flags)", name, v)
			}
			return usageErrorf("mount option %s takes no value (got %s=%s)", name, name, v)
		}
		return nil
	}}
}

// onOff sets an option pair: on for the positive name, off for the negative one.
func onOff(b *optBool, on bool) {
	if on {
		*b = optOn
	} else {
		*b = optOff
	}
}

func valueOpt(name, metavar, help string, apply func(o *mountOptions, v string) error) optSpec {
	return optSpec{name: name, metavar: metavar, help: help, apply: func(o *mountOptions, v string) error {
		if v == noValue {
			return usageErrorf("mount option %s needs a value: %s=%s", name, name, metavar)
		}
		return apply(o, v)
	}}
}

// ignoredOpt is an option mount(8), mount.fuse3, systemd or libfuse pass that means nothing to this daemon.
func ignoredOpt(name string) optSpec {
	return optSpec{name: name, help: "accepted and ignored (a mount(8) or systemd option)", apply: func(*mountOptions, string) error {
		return nil
	}}
}

// overlayOpt is an overlayfs option accepted so that an overlayfs fstab line works by changing only the type.
func overlayOpt(name, note string) optSpec {
	return optSpec{name: name, metavar: "VALUE", help: "overlayfs option: " + note, apply: func(o *mountOptions, v string) error {
		o.notes = append(o.notes, fmt.Sprintf("mount option %s: %s", name, note))
		return nil
	}}
}

func timeoutOpt(name, what string, dst func(o *mountOptions) *time.Duration) optSpec {
	return valueOpt(name, "SECONDS", "how long the kernel may cache "+what+" (default 3600)", func(o *mountOptions, v string) error {
		secs, err := strconv.ParseFloat(v, 64)
		if err != nil || !(secs >= 0 && secs <= 1e9) { // not secs < 0 || secs > 1e9: NaN passes that
			return usageErrorf("mount option %s=%s: want a number of seconds", name, v)
		}
		*dst(o) = time.Duration(secs * float64(time.Second))
		return nil
	})
}

// mountOptionSpecs lists every mount option.
var mountOptionSpecs = []optSpec{
	valueOpt("lowerdir", "DIR[:DIR...]", "read-only layers, topmost first (as ro=)", func(o *mountOptions, v string) error {
		return o.addLowers(v, "lowerdir")
	}),
	valueOpt("upperdir", "DIR", "the writable layer (as rw=)", func(o *mountOptions, v string) error {
		return o.setUpper(v, "upperdir")
	}),
	valueOpt("workdir", "DIR", "overlayfs's work directory: accepted, not needed", func(o *mountOptions, v string) error {
		o.workdir = v
		return nil
	}),
	flagOpt("allow_other", "let every user use the mount (default as root)", func(o *mountOptions, on bool) { o.allowOther = on }),
	flagOpt("default_permissions", "let the kernel check permissions (always on)", func(*mountOptions, bool) {}),
	flagOpt("suid", "honour setuid bits (default as root)", func(o *mountOptions, on bool) { onOff(&o.suid, on) }),
	flagOpt("nosuid", "ignore setuid bits", func(o *mountOptions, on bool) { onOff(&o.suid, !on) }),
	flagOpt("dev", "allow device files (default as root)", func(o *mountOptions, on bool) { onOff(&o.dev, on) }),
	flagOpt("nodev", "refuse access to device files", func(o *mountOptions, on bool) { onOff(&o.dev, !on) }),
	flagOpt("exec", "allow executing files (default)", func(o *mountOptions, on bool) { onOff(&o.exec, on) }),
	flagOpt("noexec", "refuse executing files", func(o *mountOptions, on bool) { onOff(&o.exec, !on) }),
	flagOpt("ro", "mount read-only", func(o *mountOptions, on bool) { o.readOnly = on }),
	flagOpt("rw", "mount read-write (default)", func(o *mountOptions, on bool) { o.readOnly = !on }),
	flagOpt("noatime", "do not update access times", func(o *mountOptions, on bool) { o.noatime = on }),
	flagOpt("atime", "update access times (default, relatime)", func(o *mountOptions, on bool) { o.noatime = !on }),
	flagOpt("relatime", "update access times relative to mtime (default)", func(o *mountOptions, on bool) { o.noatime = !on }),
	valueOpt("whiteout", "FORMAT", "the marker format written into the upper layer: overlay, aufs, unionfs-fuse (2.0 and later) or "+
		"unionfs-fuse-1.0 "+
		"(default: the one the upper layer holds, else overlay as root and aufs otherwise)", func(o *mountOptions, v string) error {
		switch v {
		case "overlay":
			if os.Geteuid() != 0 {
				return usageErrorf("whiteout=overlay needs root: its whiteouts are device nodes and its " +
					"markers trusted xattrs; use whiteout=aufs")
			}
			fallthrough
		case "aufs", "unionfs-fuse", "unionfs-fuse-1.0":
			o.whiteout = v
			return nil
		}
		return usageErrorf("whiteout=%s: want overlay, aufs, unionfs-fuse or unionfs-fuse-1.0", v)
	}),
	valueOpt("size", "SIZE", "without rw=: the size of the anonymous tmpfs upper layer, as tmpfs's size= "+
		"(bytes with K, M, G suffixes, or a percentage of RAM; default half of RAM)", func(o *mountOptions, v string) error {
		if !tmpfsSize.MatchString(v) {
			return usageErrorf("mount option size=%s: want a size such as 512M or 25%%", v)
		}
		o.anonSize = v
		return nil
	}),
	valueOpt("fsname", "NAME", "the source name df(1) and /proc/mounts show", func(o *mountOptions, v string) error {
		o.fsname = v
		return nil
	}),
	valueOpt("subtype", "NAME", "accepted; the type is always fuse.ltsp-unionfs", func(o *mountOptions, v string) error {
		if v != "ltsp-unionfs" {
			o.notes = append(o.notes, "mount option subtype="+v+": ignored, the type is fuse.ltsp-unionfs")
		}
		return nil
	}),
	flagOpt("passthrough", "let the kernel read and write layer files directly (FUSE passthrough) where the kernel "+
		"and the daemon's privileges allow (default)", func(o *mountOptions, on bool) { onOff(&o.passthrough, on) }),
	flagOpt("nopassthrough", "serve every read and write through the daemon and the page cache",
		func(o *mountOptions, on bool) { onOff(&o.passthrough, !on) }),
	valueOpt("passthrough_min_size", "BYTES", "files smaller than this (suffixes K, M, G) opened only for reading "+
		"go through the page cache instead of passthrough (default 1M)", func(o *mountOptions, v string) error {
		n, err := parseSize(v)
		if err != nil {
			return usageErrorf("mount option passthrough_min_size=%s: want a size in bytes, such as 65536 or 1M", v)
		}
		o.ptMinSize = n
		return nil
	}),
	timeoutOpt("entry_timeout", "names", func(o *mountOptions) *time.Duration { return &o.entryTimeout }),
	timeoutOpt("attr_timeout", "attributes", func(o *mountOptions) *time.Duration { return &o.attrTimeout }),
	timeoutOpt("negative_timeout", "absent names", func(o *mountOptions) *time.Duration { return &o.negTimeout }),
	overlayOpt("redirect_dir", "directory renames are always possible; the value is ignored"),
	overlayOpt("index", "ignored: hard links split by copy-up are a documented limit"),
	overlayOpt("metacopy", "ignored: metadata-only copy-up is always used"),
	overlayOpt("xino", "ignored: inode numbers are always unique across layers"),
	overlayOpt("uuid", "ignored"),
	overlayOpt("nfs_export", "ignored: NFS export of the union is not supported"),
	ignoredOpt("nofail"),
	ignoredOpt("_netdev"),
	ignoredOpt("defaults"),
	ignoredOpt("auto"),
	ignoredOpt("noauto"),
	ignoredOpt("user"),
	ignoredOpt("users"),
	ignoredOpt("nouser"),
	ignoredOpt("owner"),
	ignoredOpt("group"),
	ignoredOpt("async"),
	ignoredOpt("nonempty"),
}

// tmpfsSize is the syntax of tmpfs's size= (the kernel's memparse, or a percentage of RAM): checked here so that a
// malformed size is a usage error, not a failure to make the upper layer.
var tmpfsSize = regexp.MustCompile(`^([0-9]+|0[xX][0-9a-fA-F]+)[kKmMgGtTpPeE]?$|^[0-9]+%$`)

// parseSize parses a byte count with an optional binary suffix K, M or G.
func parseSize(v string) (int64, error) {
	mult := int64(1)
	switch {
	case strings.HasSuffix(v, "K"):
		mult, v = 1<<10, strings.TrimSuffix(v, "K")
	case strings.HasSuffix(v, "M"):
		mult, v = 1<<20, strings.TrimSuffix(v, "M")
	case strings.HasSuffix(v, "G"):
		mult, v = 1<<30, strings.TrimSuffix(v, "G")
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("bad size %q", v)
	}
	return n * mult, nil
}

func init() {
	mountOptionSpecs = append(mountOptionSpecs, unionfsFuseOptionSpecs...)
}

// isIgnoredOptionName reports whether an option that has no flag of its own is still accepted: mount(8)'s
// comment= and the x-* options it normally withholds from helpers.
func isIgnoredOptionName(name string) bool {
	return strings.HasPrefix(name, "x-") || name == "comment"
}

// optValue adapts an optSpec to pflag, so that each option is a long flag too.
type optValue struct {
	spec *optSpec
	o    *mountOptions
}

func (v *optValue) String() string { return "" }
func (v *optValue) Type() string {
	if v.spec.metavar == "" {
		return "bool"
	}
	return v.spec.metavar
}
func (v *optValue) Set(s string) error {
	return v.spec.apply(v.o, s)
}

// addMountFlags registers every mount option as a long flag of fs, writing into o.
func addMountFlags(fs *pflag.FlagSet, o *mountOptions) {
	for i := range mountOptionSpecs {
		spec := &mountOptionSpecs[i]
		f := fs.VarPF(&optValue{spec: spec, o: o}, spec.name, "", spec.help)
		if spec.metavar == "" {
			f.NoOptDefVal = "true"
		}
	}
}

// normalizeOptionName lets long flags be written with dashes or underscores: --allow-other is --allow_other.
func normalizeOptionName(f *pflag.FlagSet, name string) pflag.NormalizedName {
	return pflag.NormalizedName(strings.ReplaceAll(name, "-", "_"))
}

// applyOptionList applies one -o argument: comma-separated options, each NAME or NAME=VALUE. A comma or
// backslash inside a value is written with a backslash before it; so is a colon inside a path of lowerdir= and
// dirs=, as overlayfs reads them (lowerdir=/a\:b:/c).
func applyOptionList(fs *pflag.FlagSet, list string, o *mountOptions) error {
	for _, item := range splitOptions(list) {
		if item == "" {
			continue
		}
		name, value, hasValue := strings.Cut(item, "=")
		if isIgnoredOptionName(name) {
			continue
		}
		name = strings.ReplaceAll(name, "-", "_")
		f := fs.Lookup(name)
		if f == nil || !isMountOption(name) {
			if o.sloppy {
				o.notes = append(o.notes, "unknown mount option "+name+" ignored (sloppy mount)")
				continue
			}
			return usageErrorf("unknown mount option %q (see --help for the list)", name)
		}
		if !hasValue {
			value = noValue
		} else if !listOptions[name] {
			value = unescape(value)
		}
		if err := f.Value.Set(value); err != nil {
			return err
		}
		f.Changed = true
	}
	return nil
}

// isMountOption reports whether name is a mount option rather than a command flag such as --foreground.
func isMountOption(name string) bool {
	for _, s := range mountOptionSpecs {
		if s.name == name {
			return true
		}
	}
	return false
}

// listOptions are the options whose values are colon-separated lists: they split their value with splitEscaped,
// which removes the escapes, so they receive it with its escapes.
var listOptions = map[string]bool{"lowerdir": true, "dirs": true}

// splitOptions splits an option list at the commas no backslash escapes, keeping every escape, as overlayfs does:
// a value loses its escapes when it is split further (lowerdir=) or used (unescape), so that "\:" still escapes the
// colon of a lowerdir= path after the list is split.
func splitOptions(s string) []string {
	var parts []string
	start := 0
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case ',':
			parts = append(parts, s[start:i])
			start = i + 1
		}
	}
	return append(parts, s[start:])
}

// unescape removes the backslash escapes from s, as splitEscaped does from each part.
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+1 < len(s) {
			i++
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// splitEscaped splits s at sep, treating a backslash as escaping the next character.
func splitEscaped(s string, sep byte) []string {
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case c == sep:
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(c)
		}
	}
	return append(parts, cur.String())
}

// addLowers appends the colon-separated lower layer list v, given by what (ro= or lowerdir=).
func (o *mountOptions) addLowers(v, what string) error {
	if o.branchList {
		return usageErrorf("%s=%s: the layers are already given as a branch list; give them once", what, v)
	}
	for _, p := range splitEscaped(v, ':') {
		if p == "" {
			return usageErrorf("%s=%s: empty layer path", what, v)
		}
		o.lowers = append(o.lowers, p)
	}
	return nil
}

// setUpper sets the upper layer, given by what (rw= or upperdir=); it may be given once.
func (o *mountOptions) setUpper(v, what string) error {
	if v == "" {
		return usageErrorf("%s=: empty layer path", what)
	}
	if o.branchList {
		return usageErrorf("%s=%s: the layers are already given as a branch list; give them once", what, v)
	}
	if o.upper != "" && o.upper != v {
		return usageErrorf("the upper layer is given twice (%s and %s): there is one writable layer", o.upper, v)
	}
	o.upper = v
	return nil
}

// optionNames returns the names of all mount options, sorted, for the help text.
func optionNames() string {
	var names []string
	for _, s := range mountOptionSpecs {
		if s.metavar != "" {
			names = append(names, s.name+"="+s.metavar)
		} else {
			names = append(names, s.name)
		}
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}
