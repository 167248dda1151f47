package main

import (
	"path/filepath"
	"strings"
)

// mount(8)'s external helper interface. For an fstab line of type fuse.ltsp-unionfs, mount(8) runs
// /sbin/mount.fuse.ltsp-unionfs (a link to this program) as
//
//	mount.fuse.ltsp-unionfs SOURCE MOUNTPOINT [-s] [-f] [-n] [-v] [-N NAMESPACE] [-o OPTIONS]
//
// and its exit status is mount's. This works without mount.fuse3 and without /bin/sh, which an initramfs may lack.
// Here -f means fake (do everything but mount), -s sloppy (ignore unknown options), -n and -v are ignored.

// helperName is the argv[0] basename under which the program acts as mount(8)'s helper.
const helperName = "mount.fuse.ltsp-unionfs"

// isHelper reports whether the program runs as mount(8)'s helper, by the name it was started under (a leading
// '@' of a root filesystem daemon aside).
func isHelper(argv0 string) bool {
	return strings.TrimPrefix(filepath.Base(argv0), "@") == helperName
}

// helperArgs translates the helper's command line into the program's own.
func helperArgs(args []string) ([]string, error) {
	var out, positional []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-o" || a == "-N" || a == "-t":
			if i+1 >= len(args) {
				return nil, usageErrorf("%s: missing value", a)
			}
			i++
			switch a {
			case "-o":
				out = append(out, "-o", args[i])
			case "-N":
				return nil, usageErrorf("-N %s: mounting in another namespace is not supported; run the helper "+
					"inside it (nsenter)", args[i])
			case "-t":
				if t := args[i]; t != "fuse.ltsp-unionfs" && t != "ltsp-unionfs" {
					return nil, usageErrorf("-t %s: this helper mounts fuse.ltsp-unionfs only", t)
				}
			}
		case strings.HasPrefix(a, "-o") && len(a) > 2:
			out = append(out, "-o", a[2:])
		case len(a) > 1 && a[0] == '-' && strings.Trim(a[1:], "sfnv") == "":
			for _, c := range a[1:] {
				switch c {
				case 'f':
					out = append(out, "--fake")
				case 's':
					out = append(out, "--sloppy")
				}
			}
		case strings.HasPrefix(a, "-"):
			return nil, usageErrorf("unknown mount helper flag %s (mount(8) passes -s, -f, -n, -v, -N and -o)", a)
		default:
			positional = append(positional, a)
		}
	}
	if len(positional) != 2 {
		return nil, usageErrorf("want SOURCE MOUNTPOINT [-o OPTIONS], as mount(8) runs %s; got %d arguments",
			helperName, len(positional))
	}
	return append(append(out, "--"), positional...), nil
}
