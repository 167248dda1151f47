package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/ltsp/ltsp-unionfs/internal/testutil"
)

// TestHostileInput runs the real binary through its three entry points (its own command line, unionfs-fuse's
// command line, and mount(8)'s helper argv) with hostile values: paths and options longer than PATH_MAX, bytes
// that are not UTF-8, control characters, commas, '=', ':' and '..' in paths, empty strings, a mount point inside
// or equal to a layer, layers inside each other, a lower that is a file or a symlink, repeated and contradictory
// options, unknown options. A refusal must be exactly one printable line on stderr with the documented exit code
// (exitcodes.go), and leave no mount and no process behind; an input that is valid however odd must mount what
// it says, and unmount cleanly.

// hostile is the directory tree one case runs in.
type hostile struct {
	dir, lower, lower2, upper, mnt, file string
}

func (h hostile) p(name string) string { return filepath.Join(h.dir, name) }

// newHostile makes the layers, a mount point and the oddly named directories the cases use.
func newHostile(t *testing.T) hostile {
	t.Helper()
	// Not t.TempDir: its name comes from the case's, whose commas and '=' would change what the paths parse as.
	d, err := os.MkdirTemp(packageTmp, "hostile-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	h := hostile{dir: d, lower: filepath.Join(d, "lower"), lower2: filepath.Join(d, "lower2"),
		upper: filepath.Join(d, "upper"), mnt: filepath.Join(d, "mnt"), file: filepath.Join(d, "file")}
	for _, p := range []string{h.lower, h.lower2, h.upper, h.mnt, h.lower + "/sub/deeper", h.upper + "/m",
		h.p("a:b"), h.p("c,d"), h.p("x=y"), h.p("e=RW"), h.p("\xff\xfe"), h.p("nl\nctl\x1b[31m")} {
		if err := os.MkdirAll(p, 0755); err != nil {
			t.Fatal(err)
		}
	}
	testutil.WriteFile(t, h.file, nil, 0644)
	testutil.WriteFile(t, h.lower+"/hello", []byte("hello\n"), 0644)
	testutil.Symlink(t, h.lower, h.p("lowerlink"))
	testutil.Symlink(t, h.mnt, h.p("mntlink"))
	testutil.Symlink(t, h.p("nowhere"), h.p("dangling"))
	return h
}

// longName is a path component repeated past PATH_MAX.
var longName = strings.Repeat("a", 5000)

// hostileCase is one command line. mounted is where a successful mount appears (h.mnt if empty), and check, if
// set, examines the live mount.
type hostileCase struct {
	name    string
	args    func(h hostile) []string
	code    int
	mounted func(h hostile) string
	check   func(t *testing.T, h hostile, mnt string)
}

// mountedRO checks that the union refuses writes with EROFS, or takes them.
func mountedRO(ro bool) func(t *testing.T, h hostile, mnt string) {
	return func(t *testing.T, h hostile, mnt string) {
		err := os.WriteFile(filepath.Join(mnt, "new"), nil, 0644)
		if ro && !errors.Is(err, syscall.EROFS) || !ro && err != nil {
			t.Errorf("creating a file: %v; want read-only %v", err, ro)
		}
	}
}

// sourceFits checks that the mount's source was cut to what the kernel takes rather than refused.
func sourceFits(t *testing.T, h hostile, mnt string) {
	m, _ := testutil.MountAt(mnt)
	if len(m.Source) < 1000 || len(m.Source) >= 4096 {
		t.Errorf("the mount's source has %d bytes, want it cut below PATH_MAX", len(m.Source))
	}
}

// shows checks that a file of the lower layer is visible in the union.
func shows(rel string) func(t *testing.T, h hostile, mnt string) {
	return func(t *testing.T, h hostile, mnt string) {
		if _, err := os.Lstat(filepath.Join(mnt, rel)); err != nil {
			t.Errorf("the union does not show %s: %v", rel, err)
		}
	}
}

var nativeCases = []hostileCase{
	{name: "lower longer than PATH_MAX", code: exitLayer,
		args: func(h hostile) []string { return []string{"ro=" + h.p(longName), "rw=" + h.upper, h.mnt} }},
	{name: "lower of many components longer than PATH_MAX", code: exitOK, args: func(h hostile) []string {
		return []string{"ro=" + h.lower + strings.Repeat("/sub/..", 700), "rw=" + h.upper, h.mnt}
	}, check: shows("hello")},
	{name: "upper longer than PATH_MAX", code: exitLayer,
		args: func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.p(longName), h.mnt} }},
	{name: "mount point longer than PATH_MAX", code: exitMountPoint,
		args: func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.upper, h.p(longName)} }},
	{name: "fsname longer than the kernel takes", code: exitOK, check: sourceFits,
		args: func(h hostile) []string {
			return []string{"-o", "fsname=" + longName, "ro=" + h.lower, "rw=" + h.upper, h.mnt}
		}},
	{name: "unknown option longer than PATH_MAX", code: exitUsage,
		args: func(h hostile) []string { return []string{"-o", longName, "ro=" + h.lower, "rw=" + h.upper, h.mnt} }},
	{name: "long flag longer than PATH_MAX", code: exitUsage,
		args: func(h hostile) []string { return []string{"--" + longName, "ro=" + h.lower, "rw=" + h.upper, h.mnt} }},
	{name: "non-UTF-8 lower that is missing", code: exitLayer,
		args: func(h hostile) []string { return []string{"ro=" + h.p("\xff\xfd"), "rw=" + h.upper, h.mnt} }},
	{name: "non-UTF-8 lower", code: exitOK,
		args: func(h hostile) []string { return []string{"ro=" + h.p("\xff\xfe"), "rw=" + h.upper, h.mnt} }},
	{name: "non-UTF-8 option name", code: exitUsage,
		args: func(h hostile) []string { return []string{"-o", "\xff\xfe", "ro=" + h.lower, "rw=" + h.upper, h.mnt} }},
	{name: "non-UTF-8 mount point", code: exitMountPoint,
		args: func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.upper, h.p("\xfe\xff")} }},
	{name: "control characters in a missing lower", code: exitLayer,
		args: func(h hostile) []string { return []string{"ro=" + h.p("x\ny\r\x1b[2J\x07"), "rw=" + h.upper, h.mnt} }},
	{name: "control characters in a lower", code: exitOK,
		args: func(h hostile) []string { return []string{"ro=" + h.p("nl\nctl\x1b[31m"), "rw=" + h.upper, h.mnt} }},
	{name: "control characters in an option value", code: exitUsage,
		args: func(h hostile) []string { return []string{"--suid=x\ny", "ro=" + h.lower, "rw=" + h.upper, h.mnt} }},
	{name: "control characters in an unknown option", code: exitUsage,
		args: func(h hostile) []string { return []string{"-o", "a\nb\x1b", "ro=" + h.lower, "rw=" + h.upper, h.mnt} }},
	{name: "control characters in fsname", code: exitOK,
		args: func(h hostile) []string {
			return []string{"-o", "fsname=a\x1b]0;title\x07b", "ro=" + h.lower, "rw=" + h.upper, h.mnt}
		},
		check: func(t *testing.T, h hostile, mnt string) {
			m, _ := testutil.MountAt(mnt)
			if strings.ContainsFunc(m.Source, unicode.IsControl) {
				t.Errorf("the mount's source %q carries control characters into /proc/mounts", m.Source)
			}
		}},
	{name: "comma in a lower", code: exitUsage,
		args: func(h hostile) []string { return []string{"ro=" + h.p("c,d"), "rw=" + h.upper, h.mnt} }},
	{name: "escaped comma in a lower", code: exitOK,
		args: func(h hostile) []string { return []string{"ro=" + h.p(`c\,d`), "rw=" + h.upper, h.mnt} }},
	{name: "colon in a lower", code: exitLayer,
		args: func(h hostile) []string { return []string{"ro=" + h.p("a:b"), "rw=" + h.upper, h.mnt} }},
	{name: "escaped colon in a lower", code: exitOK,
		args: func(h hostile) []string { return []string{"ro=" + h.p(`a\:b`), "rw=" + h.upper, h.mnt} }},
	{name: "escaped colon in lowerdir=", code: exitOK, args: func(h hostile) []string {
		return []string{"-o", "lowerdir=" + h.p(`a\:b`) + ":" + h.lower + ",upperdir=" + h.upper, h.mnt}
	}, check: shows("hello")},
	{name: "escaped comma in lowerdir=", code: exitOK, args: func(h hostile) []string {
		return []string{"-o", "lowerdir=" + h.p(`c\,d`) + ":" + h.lower + ",upperdir=" + h.upper, h.mnt}
	}, check: shows("hello")},
	{name: "equals sign in a lower", code: exitOK,
		args: func(h hostile) []string { return []string{"ro=" + h.p("x=y"), "rw=" + h.upper, h.mnt} }},
	{name: "dot-dot to another lower", code: exitOK,
		args: func(h hostile) []string {
			return []string{"ro=" + h.lower + "/../lower2/../lower", "rw=" + h.upper, h.mnt}
		},
		check: shows("hello")},
	{name: "dot-dot makes the upper contain the lower", code: exitLayer,
		args: func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.upper + "/..", h.mnt} }},
	{name: "dot-dot puts the mount point in the upper", code: exitMountPoint,
		args: func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.upper, h.lower + "/../upper/m"} }},
	{name: "empty mount point", code: exitUsage, args: func(h hostile) []string { return []string{"ro=" + h.lower, ""} }},
	{name: "empty argument", code: exitUsage, args: func(h hostile) []string { return []string{"ro=" + h.lower, "", h.mnt} }},
	{name: "empty ro=", code: exitUsage, args: func(h hostile) []string { return []string{"ro=", h.mnt} }},
	{name: "empty rw=", code: exitUsage, args: func(h hostile) []string { return []string{"ro=" + h.lower, "rw=", h.mnt} }},
	{name: "empty lower in a list", code: exitUsage,
		args: func(h hostile) []string { return []string{"ro=" + h.lower + ":", h.mnt} }},
	{name: "empty option list", code: exitOK,
		args: func(h hostile) []string { return []string{"-o", "", "ro=" + h.lower, "rw=" + h.upper, h.mnt} }},
	{name: "empty option name", code: exitUsage,
		args: func(h hostile) []string { return []string{"-o", "=x", "ro=" + h.lower, "rw=" + h.upper, h.mnt} }},
	{name: "mount point is the lower", code: exitOK,
		args:    func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.upper, h.lower} },
		mounted: func(h hostile) string { return h.lower }, check: shows("sub/deeper")},
	{name: "mount point inside the lower", code: exitOK,
		args:    func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.upper, h.lower + "/sub"} },
		mounted: func(h hostile) string { return h.lower + "/sub" },
		check: func(t *testing.T, h hostile, mnt string) {
			// The union's sub is the lower's own sub, not the union again.
			shows("sub/deeper")(t, h, mnt)
			if _, err := os.Lstat(mnt + "/sub/sub"); err == nil {
				t.Errorf("the union shows itself inside itself")
			}
		}},
	{name: "mount point is the upper", code: exitMountPoint,
		args: func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.upper, h.upper} }},
	{name: "mount point inside the upper", code: exitMountPoint,
		args: func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.upper, h.upper + "/m"} }},
	{name: "upper inside the lower", code: exitLayer,
		args: func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.lower + "/sub", h.mnt} }},
	{name: "lower inside the upper", code: exitLayer,
		args: func(h hostile) []string { return []string{"ro=" + h.upper + "/m", "rw=" + h.upper, h.mnt} }},
	{name: "lower is the upper", code: exitLayer,
		args: func(h hostile) []string { return []string{"ro=" + h.upper, "rw=" + h.upper, h.mnt} }},
	{name: "lower is a file", code: exitLayer,
		args: func(h hostile) []string { return []string{"ro=" + h.file, "rw=" + h.upper, h.mnt} }},
	{name: "upper is a file", code: exitLayer,
		args: func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.file, h.mnt} }},
	{name: "mount point is a file", code: exitMountPoint,
		args: func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.upper, h.file} }},
	{name: "lower is a symlink to a directory", code: exitOK,
		args: func(h hostile) []string { return []string{"ro=" + h.p("lowerlink"), "rw=" + h.upper, h.mnt} }, check: shows("hello")},
	{name: "lower is a dangling symlink", code: exitLayer,
		args: func(h hostile) []string { return []string{"ro=" + h.p("dangling"), "rw=" + h.upper, h.mnt} }},
	{name: "mount point is a symlink to a directory", code: exitOK,
		args: func(h hostile) []string { return []string{"ro=" + h.lower, "rw=" + h.upper, h.p("mntlink")} }, check: shows("hello")},
	{name: "ro with an upper", code: exitOK,
		args:  func(h hostile) []string { return []string{"-o", "ro", "ro=" + h.lower, "rw=" + h.upper, h.mnt} },
		check: mountedRO(true)},
	{name: "ro then rw: the last wins", code: exitOK,
		args:  func(h hostile) []string { return []string{"-o", "ro,rw", "ro=" + h.lower, "rw=" + h.upper, h.mnt} },
		check: mountedRO(false)},
	{name: "rw then ro: the last wins", code: exitOK,
		args: func(h hostile) []string {
			return []string{"-o", "rw", "-o", "ro", "ro=" + h.lower, "rw=" + h.upper, h.mnt}
		},
		check: mountedRO(true)},
	{name: "passthrough and nopassthrough", code: exitOK, args: func(h hostile) []string {
		return []string{"-o", "passthrough,nopassthrough", "--passthrough", "ro=" + h.lower, "rw=" + h.upper, h.mnt}
	}},
	{name: "two upperdir=", code: exitUsage, args: func(h hostile) []string {
		return []string{"-o", "upperdir=" + h.upper + ",upperdir=" + h.lower2, "ro=" + h.lower, h.mnt}
	}},
	{name: "lowerdir= and ro= add up", code: exitOK, args: func(h hostile) []string {
		return []string{"-o", "lowerdir=" + h.lower2, "ro=" + h.lower, "rw=" + h.upper, h.mnt}
	}, check: shows("hello")},
	{name: "size= with an upper", code: exitUsage,
		args: func(h hostile) []string { return []string{"-o", "size=1G", "ro=" + h.lower, "rw=" + h.upper, h.mnt} }},
	{name: "malformed size", code: exitUsage,
		args: func(h hostile) []string { return []string{"-o", "size=1x", "ro=" + h.lower, h.mnt} }},
	{name: "negative size", code: exitUsage,
		args: func(h hostile) []string { return []string{"-o", "size=-1", "ro=" + h.lower, h.mnt} }},
	{name: "size given twice: the last wins", code: exitOK, check: shows("hello"),
		args: func(h hostile) []string { return []string{"-o", "size=1G,size=50%", "ro=" + h.lower, h.mnt} }},
	{name: "timeout NaN", code: exitUsage,
		args: func(h hostile) []string {
			return []string{"-o", "entry_timeout=NaN", "ro=" + h.lower, "rw=" + h.upper, h.mnt}
		}},
	{name: "unknown option", code: exitUsage,
		args: func(h hostile) []string {
			return []string{"-o", "allow_other,bogus", "ro=" + h.lower, "rw=" + h.upper, h.mnt}
		}},
	{name: "unknown flag", code: exitUsage,
		args: func(h hostile) []string { return []string{"--bogus", "ro=" + h.lower, "rw=" + h.upper, h.mnt} }},
	{name: "three dashes", code: exitUsage,
		args: func(h hostile) []string { return []string{"---", "ro=" + h.lower, "rw=" + h.upper, h.mnt} }},
	{name: "mount(8)'s ignored options", code: exitOK, args: func(h hostile) []string {
		return []string{"-o", "x-systemd.requires=a\\,b,comment=x,nofail,_netdev", "ro=" + h.lower, "rw=" + h.upper, h.mnt}
	}},
}

var unionfsFuseCases = []hostileCase{
	{name: "escaped colon in a branch", code: exitOK,
		args: func(h hostile) []string { return []string{"-o", "cow", h.upper + "=RW:" + h.p(`a\:b`) + "=RO", h.mnt} }},
	{name: "colon in a branch", code: exitLayer,
		args: func(h hostile) []string { return []string{"-o", "cow", h.upper + "=RW:" + h.p("a:b") + "=RO", h.mnt} }},
	{name: "=RW in a branch's name", code: exitOK,
		args: func(h hostile) []string { return []string{"-o", "cow", h.upper + "=RW:" + h.p("e=RW") + "=RO", h.mnt} }},
	{name: "equals sign in a branch without a mode", code: exitOK,
		args: func(h hostile) []string { return []string{"-o", "cow", h.upper + "=RW:" + h.p("x=y"), h.mnt} }},
	{name: "empty branch", code: exitUsage,
		args: func(h hostile) []string { return []string{"-o", "cow", "=RW:" + h.lower, h.mnt} }},
	{name: "two writable branches", code: exitUsage,
		args: func(h hostile) []string {
			return []string{"-o", "cow", h.upper + "=RW:" + h.lower2 + "=RW:" + h.lower, h.mnt}
		}},
	{name: "upper branch inside the lower", code: exitLayer,
		args: func(h hostile) []string { return []string{"-o", "cow", h.lower + "/sub=RW:" + h.lower + "=RO", h.mnt} }},
	{name: "lower branch is a file", code: exitLayer,
		args: func(h hostile) []string { return []string{"-o", "cow", h.upper + "=RW:" + h.file + "=RO", h.mnt} }},
	{name: "lower branch is a symlink", code: exitOK,
		args: func(h hostile) []string {
			return []string{"-o", "cow", h.upper + "=RW:" + h.p("lowerlink") + "=RO", h.mnt}
		},
		check: shows("hello")},
	{name: "comma in dirs=", code: exitUsage,
		args: func(h hostile) []string {
			return []string{"-o", "cow,dirs=" + h.upper + "=RW:" + h.p("c,d") + "=RO", h.mnt}
		}},
	{name: "escaped comma in dirs=", code: exitOK,
		args: func(h hostile) []string {
			return []string{"-o", "cow,dirs=" + h.upper + "=RW:" + h.p(`c\,d`) + "=RO", h.mnt}
		}},
	{name: "chroot longer than PATH_MAX", code: exitLayer,
		args: func(h hostile) []string {
			return []string{"-o", "cow,chroot=" + h.p(longName), "/upper=RW:/lower=RO", h.mnt}
		}},
	{name: "chroot with dot-dot", code: exitOK,
		args: func(h hostile) []string {
			return []string{"-o", "cow,chroot=" + h.lower + "/..", "/upper=RW:/lower=RO", h.mnt}
		},
		check: shows("hello")},
	{name: "branch list, then ro=", code: exitUsage, args: func(h hostile) []string {
		return []string{"-o", "cow", h.upper + "=RW:" + h.lower + "=RO", "ro=" + h.lower2, h.mnt}
	}},
	{name: "dirs=, then lowerdir=", code: exitUsage, args: func(h hostile) []string {
		return []string{"-o", "cow,dirs=" + h.upper + "=RW:" + h.lower + "=RO,lowerdir=" + h.lower2, h.mnt}
	}},
	{name: "mount point in the upper branch", code: exitMountPoint,
		args: func(h hostile) []string {
			return []string{"-o", "cow", h.upper + "=RW:" + h.lower + "=RO", h.upper + "/m"}
		}},
	{name: "refused unionfs-fuse option", code: exitUsage, args: func(h hostile) []string {
		return []string{"-o", "cow,relaxed_permissions", h.upper + "=RW:" + h.lower + "=RO", h.mnt}
	}},
	{name: "non-UTF-8 branch", code: exitLayer,
		args: func(h hostile) []string { return []string{"-o", "cow", h.upper + "=RW:" + h.p("\xfa") + "=RO", h.mnt} }},
	{name: "control characters in a branch", code: exitLayer,
		args: func(h hostile) []string {
			return []string{"-o", "cow", h.upper + "=RW:" + h.p("\n\x1b[H") + "=RO", h.mnt}
		}},
	{name: "first branch called rw", code: exitUsage, // reads as rw=: refused, never another mount
		args: func(h hostile) []string { return []string{"-o", "cow", "rw=RW:" + h.lower + "=RO", h.mnt} }},
	{name: "no writable branch", code: exitOK,
		args: func(h hostile) []string { return []string{"-o", "cow", h.lower + "=RO", h.mnt} }, check: mountedRO(true)},
}

var helperCases = []hostileCase{
	{name: "-o without a value", code: exitUsage, args: func(h hostile) []string { return []string{"src", h.mnt, "-o"} }},
	{name: "unknown helper flag", code: exitUsage, args: func(h hostile) []string { return []string{"src", h.mnt, "-x"} }},
	{name: "another namespace", code: exitUsage,
		args: func(h hostile) []string { return []string{"src", h.mnt, "-N", "/proc/1/ns/mnt"} }},
	{name: "another type", code: exitUsage, args: func(h hostile) []string { return []string{"src", h.mnt, "-t", "ext4"} }},
	{name: "three arguments", code: exitUsage, args: func(h hostile) []string { return []string{"src", h.mnt, "more"} }},
	{name: "one argument", code: exitUsage, args: func(h hostile) []string { return []string{h.mnt} }},
	{name: "empty source", code: exitUsage,
		args: func(h hostile) []string { return []string{"", h.mnt, "-o", "lowerdir=" + h.lower} }},
	{name: "empty mount point", code: exitUsage,
		args: func(h hostile) []string { return []string{"src", "", "-o", "lowerdir=" + h.lower} }},
	{name: "fake mount of a missing layer", code: exitOK, mounted: func(hostile) string { return "" },
		args: func(h hostile) []string { return []string{"ro=" + h.p("nope") + ",rw=" + h.upper, h.mnt, "-f"} }},
	{name: "sloppy with an unknown option", code: exitOK,
		args: func(h hostile) []string {
			return []string{"ro=" + h.lower + ",rw=" + h.upper, h.mnt, "-sv", "-o", "bogus"}
		}},
	{name: "unknown option", code: exitUsage,
		args: func(h hostile) []string { return []string{"ro=" + h.lower + ",rw=" + h.upper, h.mnt, "-o", "bogus"} }},
	{name: "unknown option longer than PATH_MAX", code: exitUsage,
		args: func(h hostile) []string { return []string{"ro=" + h.lower + ",rw=" + h.upper, h.mnt, "-o" + longName} }},
	{name: "control characters in an unknown option", code: exitUsage, args: func(h hostile) []string {
		return []string{"ro=" + h.lower + ",rw=" + h.upper, h.mnt, "-o", "fsname=x,\x1b]0;title\x07\n"}
	}},
	{name: "source longer than the kernel takes", code: exitOK, check: sourceFits, args: func(h hostile) []string {
		return []string{longName, h.mnt, "-o", "lowerdir=" + h.lower + ",upperdir=" + h.upper}
	}},
	{name: "lowerdir longer than PATH_MAX", code: exitLayer, args: func(h hostile) []string {
		return []string{"union", h.mnt, "-o", "lowerdir=" + h.p(longName) + ",upperdir=" + h.upper}
	}},
	{name: "escaped colon in lowerdir=", code: exitOK, check: shows("hello"), args: func(h hostile) []string {
		return []string{"union", h.mnt, "-o", "lowerdir=" + h.lower + ":" + h.p(`a\:b`) + ",upperdir=" + h.upper}
	}},
	{name: "upperdir inside lowerdir", code: exitLayer, args: func(h hostile) []string {
		return []string{"union", h.mnt, "-o", "lowerdir=" + h.lower + ",upperdir=" + h.lower + "/sub"}
	}},
	{name: "two upperdir=", code: exitUsage, args: func(h hostile) []string {
		return []string{"union", h.mnt, "-o", "lowerdir=" + h.lower + ",upperdir=" + h.upper, "-o", "upperdir=" + h.lower2}
	}},
	{name: "contradictory options: the last wins", code: exitOK, check: mountedRO(false), args: func(h hostile) []string {
		return []string{"union", h.mnt, "-o", "lowerdir=" + h.lower + ",upperdir=" + h.upper + ",passthrough,nopassthrough,ro,rw"}
	}},
	{name: "dot-dot in layers", code: exitOK, check: shows("hello"), args: func(h hostile) []string {
		return []string{"union", h.mnt, "-o", "lowerdir=" + h.lower2 + "/../lower,upperdir=" + h.upper + "/../upper"}
	}},
	{name: "dot-dot makes the upper contain the lower", code: exitLayer, args: func(h hostile) []string {
		return []string{"union", h.mnt, "-o", "lowerdir=" + h.lower + ",upperdir=" + h.upper + "/.."}
	}},
	{name: "mount point is a file", code: exitMountPoint,
		args: func(h hostile) []string { return []string{"ro=" + h.lower + ",rw=" + h.upper, h.file} }},
	{name: "non-UTF-8 source and mount point", code: exitMountPoint,
		args: func(h hostile) []string { return []string{"ro=" + h.lower + ",rw=" + h.upper, h.p("\xfe")} }},
}

func TestHostileInput(t *testing.T) {
	testutil.RequireRoot(t) // the cases mount as root: an anonymous upper, mounts on a lower
	testutil.RequireFUSE(t)
	helperDir, err := os.MkdirTemp(packageTmp, "helper-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(helperDir) })
	helper := filepath.Join(helperDir, helperName)
	if err := os.Symlink(binary, helper); err != nil {
		t.Fatal(err)
	}
	entries := []struct {
		name  string
		exe   string
		flags []string
		cases []hostileCase
	}{
		{"native", binary, nil, nativeCases},
		{"unionfs-fuse", binary, nil, unionfsFuseCases},
		{"helper", helper, nil, helperCases},
		// A refusal of the layers or the mount point in the foreground is printed by the command itself, not
		// relayed from the daemon. (Usage errors are printed by the command in both modes.)
		{"native -f", binary, []string{"-f"}, nativeCases},
		{"unionfs-fuse -f", binary, []string{"-f"}, unionfsFuseCases},
	}
	n := 0
	for _, e := range entries {
		for _, c := range e.cases {
			if e.flags != nil && (c.code == exitOK || c.code == exitUsage) {
				continue // a foreground mount would not return
			}
			n++
			t.Run(e.name+"/"+c.name, func(t *testing.T) {
				t.Parallel() // each case has its own directories; most of the time is spent starting processes
				h := newHostile(t)
				args := c.args
				c.args = func(h hostile) []string { return append(append([]string{}, e.flags...), args(h)...) }
				runHostile(t, h, e.exe, c)
			})
		}
	}
	t.Logf("%d hostile command lines", n)
}

// runHostile runs one case and checks its outcome.
func runHostile(t *testing.T, h hostile, exe string, c hostileCase) {
	argv := c.args(h)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, argv...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil { // a foreground mount that should have been refused, or a hang
		for _, m := range testutil.UnionMounts(h.dir) {
			exec.Command("umount", "-l", m).Run()
		}
		t.Fatalf("did not finish within 15s; stderr %q", stderr.String())
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	mnt := h.mnt
	if c.mounted != nil {
		mnt = c.mounted(h)
	}
	if code == exitOK && mnt != "" {
		if m, ok := testutil.MountAt(mnt); !ok || m.FSType != "fuse.ltsp-unionfs" {
			t.Errorf("exit 0 but nothing is mounted on %q", mnt)
		} else {
			t.Cleanup(func() { unmountAndWait(t, mnt) })
			if c.check != nil {
				c.check(t, h, mnt)
			}
			unmountAndWait(t, mnt)
		}
	}
	if code != c.code {
		t.Errorf("exit %d, want %d; stderr %q", code, c.code, stderr.String())
	}
	if c.code != exitOK {
		line, rest, _ := strings.Cut(stderr.String(), "\n")
		prefix := "ltsp-unionfs: "
		if filepath.Base(exe) == helperName && !strings.HasPrefix(line, prefix) {
			prefix = helperName + ": "
		}
		if rest != "" || !strings.HasPrefix(line, prefix) || len(line) <= len(prefix) {
			t.Errorf("stderr is not one line %q...: %q", prefix, stderr.String())
		}
		if !utf8.ValidString(line) || strings.ContainsFunc(line, unicode.IsControl) {
			t.Errorf("the error line carries raw control characters or invalid UTF-8: %q", line)
		}
	}
	if left := testutil.UnionMounts(h.dir); len(left) > 0 {
		for _, m := range left {
			exec.Command("umount", "-l", m).Run()
		}
		t.Errorf("mounts left behind: %q", left)
	}
	if procs := processesMentioning(h.dir); len(procs) > 0 {
		t.Errorf("processes left running: %v", procs)
	}
}

// processesMentioning returns the processes of the binary whose command line mentions dir, waiting up to five
// seconds for daemons that are exiting.
func processesMentioning(dir string) []string {
	deadline := time.Now().Add(5 * time.Second)
	for {
		var found []string
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
			if err != nil || exe != binary || e.Name() == fmt.Sprint(os.Getpid()) {
				continue
			}
			cmdline, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
			stat, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
			if f := strings.Fields(string(stat)); len(f) > 2 && f[2] == "Z" {
				continue
			}
			if bytes.Contains(cmdline, []byte(dir)) {
				found = append(found, e.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
			}
		}
		if len(found) == 0 || time.Now().After(deadline) {
			return found
		}
		time.Sleep(20 * time.Millisecond)
	}
}
