package main

import (
	"strings"
)

// parseArgs reads the positional arguments of a mount: layer specifications and, last, the mount point.
//
//	ro=DIR[:DIR...]     read-only layers, topmost first (several ro= arguments append)
//	rw=DIR              the writable layer
//	ro=A:B,rw=C         both in one argument, as an fstab source field holds them
//	A=RW:B=RO           a unionfs-fuse branch list (see unionfsfuse.go)
//	SOURCE              any other argument before the mount point names the mount (fsname) when the layers are
//	                    given with -o lowerdir=,upperdir= (mount(8) passes the fstab source field this way)
//
// Without a writable layer the upper layer is an anonymous tmpfs (see anonymousUpper).
func parseArgs(args []string, o *mountOptions) error {
	if len(args) == 0 {
		return usageErrorf("missing mount point: ltsp-unionfs ro=DIR[:DIR...] rw=DIR MOUNTPOINT")
	}
	o.mountpoint = args[len(args)-1]
	if o.mountpoint == "" {
		return usageErrorf("the mount point is an empty string")
	}
	if isLayerSpec(o.mountpoint) {
		return usageErrorf("missing mount point: the last argument %q is a layer, not a mount point", o.mountpoint)
	}
	var sources []string
	for _, a := range args[:len(args)-1] {
		if a == "" { // an unset shell variable, most likely: it must not silently name the mount
			return usageErrorf("an argument before the mount point is an empty string")
		}
		if isBranchList(a) || o.unionfsFuse && len(o.lowers) == 0 && !isLayerSpec(a) {
			if err := o.addBranches(a, "branch list"); err != nil {
				return err
			}
			continue
		}
		if !isLayerSpec(a) {
			sources = append(sources, a)
			continue
		}
		for _, item := range splitOptions(a) {
			key, value, _ := strings.Cut(item, "=")
			var err error
			switch key {
			case "ro":
				err = o.addLowers(value, "ro")
			case "rw":
				err = o.setUpper(unescape(value), "rw")
			default:
				err = usageErrorf("%q in layer argument %q: want ro=DIR[:DIR...] or rw=DIR", item, a)
			}
			if err != nil {
				return err
			}
		}
		if o.fsname == "" {
			o.fsname = a
		}
	}
	switch len(sources) {
	case 0:
	case 1:
		o.fsname = sources[0]
	default:
		return usageErrorf("unexpected arguments %q: want ro=DIR[:DIR...] rw=DIR MOUNTPOINT", sources)
	}
	if len(o.lowers) == 0 {
		return usageErrorf("no read-only layer: give ro=DIR[:DIR...] (or -o lowerdir=DIR)")
	}
	if o.upper != "" && o.anonSize != "" {
		return usageErrorf("size=%s sets the size of the anonymous upper layer, which rw=%s replaces", o.anonSize, o.upper)
	}
	return nil
}

// isLayerSpec reports whether a positional argument specifies layers (begins with ro= or rw=).
func isLayerSpec(a string) bool {
	return strings.HasPrefix(a, "ro=") || strings.HasPrefix(a, "rw=")
}
