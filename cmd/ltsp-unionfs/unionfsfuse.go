package main

import (
	"path/filepath"
	"strings"
)

// The unionfs-fuse command line, so that an existing setup switches by changing only the program name:
//
//	unionfs [-o cow,...] /cow=RW:/rofs=RO MOUNTPOINT
//	unionfs -o cow,dirs=/cow=RW:/rofs=RO MOUNTPOINT
//
// A branch list names the branches in priority order, each PATH, PATH=RW or PATH=RO (read-only unless =RW). The one
// writable branch is the upper layer and must come first, as the branch copies go to; the rest are the lowers.
// Without a writable branch the union is mounted read-only over an empty anonymous upper. unionfs-fuse's options
// are honoured where they mean something here and refused with the reason where they would silently change
// behaviour (mountOptionSpecs); its upper layer format is the default for a fresh upper.

// isBranchList reports whether a positional argument is a unionfs-fuse branch list rather than a mount source
// name: one of its colon-separated items ends in =RW or =RO (in any case).
func isBranchList(a string) bool {
	if isLayerSpec(a) {
		return false
	}
	for _, item := range splitEscaped(a, ':') {
		if _, mode, ok := cutBranchMode(item); ok && mode != "" {
			return true
		}
	}
	return false
}

// cutBranchMode splits a branch item into its path and its mode (RW, RO, or "" when the item has none).
func cutBranchMode(item string) (path, mode string, ok bool) {
	i := strings.LastIndexByte(item, '=')
	if i < 0 {
		return item, "", true
	}
	switch m := strings.ToUpper(item[i+1:]); m {
	case "RW", "RO":
		return item[:i], m, true
	}
	return item, "", true
}

// addBranches reads a unionfs-fuse branch list (from a positional argument or dirs=) into o's layers.
func (o *mountOptions) addBranches(list, what string) error {
	if o.upper != "" || len(o.lowers) > 0 {
		return usageErrorf("%s %q: the layers are already given; give them once, as a branch list or as ro=/rw=", what, list)
	}
	var rw, ro []string
	for i, item := range splitEscaped(list, ':') {
		path, mode, _ := cutBranchMode(item)
		if path == "" {
			return usageErrorf("%s %q: empty branch path", what, list)
		}
		if o.chroot != "" {
			path = filepath.Join(o.chroot, path)
		}
		if mode == "RW" {
			if len(rw) > 0 {
				return usageErrorf("%s %q: more than one writable branch; ltsp-unionfs has one writable layer", what, list)
			}
			if i > 0 {
				return usageErrorf("%s %q: the writable branch %s must come first, above every read-only branch "+
					"(ltsp-unionfs copies up into the topmost layer)", what, list, path)
			}
			rw = append(rw, path)
			continue
		}
		ro = append(ro, path)
	}
	if len(ro) == 0 {
		return usageErrorf("%s %q: no read-only branch", what, list)
	}
	o.lowers = ro
	if len(rw) == 1 {
		o.upper = rw[0]
	} else {
		o.readOnly = true
		o.notes = append(o.notes, "no writable branch: mounting read-only")
	}
	o.unionfsFuse, o.branchList = true, true
	return nil
}

// unionfsFuseOpt is a unionfs-fuse option accepted with the behaviour described by note, logged once when used.
func unionfsFuseOpt(name, note string) optSpec {
	return optSpec{name: name, help: "unionfs-fuse option: " + note, apply: func(o *mountOptions, v string) error {
		switch v {
		case noValue, "true":
		default:
			return usageErrorf("mount option %s takes no value (got %s=%s)", name, name, v)
		}
		o.unionfsFuse = true
		if note != "" && name != "cow" {
			o.notes = append(o.notes, "mount option "+name+": "+note)
		}
		return nil
	}}
}

// refusedOpt is an option of another union filesystem whose behaviour ltsp-unionfs does not have; it is refused
// with the reason rather than ignored.
func refusedOpt(name, metavar, reason string) optSpec {
	return optSpec{name: name, metavar: metavar, help: "refused: " + reason, apply: func(o *mountOptions, v string) error {
		return usageErrorf("mount option %s is not supported: %s", name, reason)
	}}
}

// unionfsFuseOptionSpecs are the options of unionfs-fuse 2.x and 3.x.
var unionfsFuseOptionSpecs = []optSpec{
	unionfsFuseOpt("cow", "copy-on-write is always on"),
	valueOpt("dirs", "BRANCHES", "unionfs-fuse branch list, as the positional BRANCH=RW:BRANCH=RO argument",
		func(o *mountOptions, v string) error { return o.addBranches(v, "dirs=") }),
	unionfsFuseOpt("hide_meta_files", "markers are always hidden"),
	unionfsFuseOpt("statfs_omit_ro", "statfs always reports the writable layer only"),
	unionfsFuseOpt("use_ino", "inode numbers are always unique and stable"),
	unionfsFuseOpt("noinitgroups", "ignored: the kernel checks permissions with the caller's groups"),
	valueOpt("max_files", "N", "unionfs-fuse option: ignored, the daemon keeps few descriptors open",
		func(o *mountOptions, v string) error {
			o.notes = append(o.notes, "mount option max_files="+v+": ignored, the daemon keeps few descriptors open")
			return nil
		}),
	valueOpt("chroot", "DIR", "unionfs-fuse option: branch paths are relative to DIR (give it before the branches)",
		func(o *mountOptions, v string) error {
			if o.upper != "" || len(o.lowers) > 0 {
				return usageErrorf("mount option chroot=%s must come before the branches it applies to", v)
			}
			o.chroot = v
			return nil
		}),
	refusedOpt("relaxed_permissions", "", "the kernel always checks permissions (default_permissions), "+
		"which a root filesystem shared by all users needs"),
	refusedOpt("direct_io", "", "the page cache and passthrough are what make the union fast"),
	refusedOpt("debug_file", "FILE", "use -d: debug output goes to the log"),
}
