package main

import (
	"fmt"
	"slices"
	"strings"
)

// A boot is one client booted under qemu: how its root is served, which initramfs it boots, and what the guest
// checks (the mode the guest script reads from the kernel command line).
type boot struct {
	name      string
	about     string
	transport string // "nbd" (squashfs image over NBD) or "nfs" (the image tree over NFSv4)
	initrd    string // "systemd" or "nosystemd" (the flavour of the dracut image), or initramfsTools
	mode      string // the guest script's ltsp.vmtest=: union, control or fallback
	reboot    bool   // the guest ends with a reboot instead of a poweroff (qemu exits either way)
	onDemand  bool   // run only when named or with "all": it proves nothing the default boots do not
	args      []string
}

// Modes of the guest script (vmtest/guest/ltsp-vmtest).
const (
	modeUnion    = "union"
	modeControl  = "control"
	modeFallback = "fallback"
)

// allBoots are the boots a full run makes, in the order they are reported.
var allBoots = []boot{
	{name: "nbd", about: "union over a squashfs image on NBD, systemd initramfs", transport: "nbd", initrd: "systemd",
		mode: modeUnion, args: []string{"rd.ltsp.unionfs=1"}},
	{name: "nfs", about: "union over an NFSv4 root, systemd initramfs; ends with a reboot", transport: "nfs",
		initrd: "systemd", mode: modeUnion, reboot: true, args: []string{"rd.ltsp.unionfs=1"}},
	{name: "nosystemd", about: "union over NBD, initramfs without systemd (pre-pivot hook, util-linux switch_root)",
		transport: "nbd", initrd: "nosystemd", mode: modeUnion, args: []string{"rd.ltsp.unionfs=1"}},
	{name: "itools", about: "union over NBD, initramfs-tools image (Debian's; the package's hook, local-bottom)",
		transport: "nbd", initrd: initramfsTools, mode: modeUnion, args: []string{"rd.ltsp.unionfs=1"}},
	// The times to compare with; that the harness boots a client without the union, fallback shows too.
	{name: "control", about: "the same NBD client without the union", transport: "nbd", initrd: "systemd",
		mode: modeControl, onDemand: true},
	{name: "fallback", about: "the union asked for and made to fail (an unknown option): boots the old way",
		transport: "nbd", initrd: "systemd", mode: modeFallback,
		args: []string{"rd.ltsp.unionfs=1", "rd.ltsp.unionfs.opts=no_such_option"}},
}

// requiredChecks are the checks a boot's results must hold, passed, for the boot to pass: a guest script that
// stops early, or skips a check, must not pass by saying nothing.
func requiredChecks(mode string) []string {
	switch mode {
	case modeUnion:
		return []string{"root-is-union", "layers", "daemon", "write-/etc", "write-/var", "write-/home",
			"apt-get-install", "login-shell", "journal", "stats",
			"alive-after-daemon-reload", "alive-after-daemon-reexec", "alive-after-isolate",
			"alive-after-journald", "alive-after-udevd", "alive-after-wait", "daemon-after-wait",
			"layers-after-wait", "system-running"}
	case modeFallback:
		return []string{"root-is-image", "fallback-warning"}
	default:
		return []string{"root-is-image"}
	}
}

// lowerType is the filesystem type the guest sees for the image: what the union's lower layer must be.
func (b boot) lowerType() string {
	if b.transport == "nfs" {
		return "nfs4"
	}
	return "squashfs"
}

// servers are the host's addresses as the guest reaches them through qemu's user network (10.0.2.2 is the host).
type servers struct {
	nbdPort int
	nfsPort int
	nfsPath string // the NFSv4 pseudo path of the exported image tree
}

// cmdline is the kernel command line of the boot.
func (b boot) cmdline(s servers, waitUptime int) string {
	// Under TCG a guest runs at a tenth of a real machine's speed or less: systemd's 90 s start timeouts (for
	// devices too) fire on things that have nothing to do with the union. Its stop timeouts, which killed the
	// union once, keep their defaults.
	args := []string{"console=ttyS0", "panic=10", "ro", "rd.neednet=1", "ip=dhcp",
		"systemd.default_timeout_start_sec=300"}
	switch b.transport {
	case "nbd":
		if b.initrd == initramfsTools {
			// nbd-client's local-top script: host:port/export name (nbdkit serves any name).
			args = append(args, "root=/dev/nbd0", fmt.Sprintf("nbdroot=10.0.2.2:%d/root", s.nbdPort),
				"rootfstype=squashfs")
		} else {
			args = append(args, fmt.Sprintf("root=nbd:10.0.2.2:%d:squashfs", s.nbdPort))
		}
	case "nfs":
		args = append(args, fmt.Sprintf("root=nfs4:10.0.2.2:%s:port=%d,vers=4.1", s.nfsPath, s.nfsPort))
	}
	args = append(args, b.args...)
	args = append(args, "ltsp.vmtest="+b.mode, "ltsp.vmtest.lower="+b.lowerType(),
		fmt.Sprintf("ltsp.vmtest.wait=%d", waitUptime), "ltsp.vmtest.end="+b.end())
	return strings.Join(args, " ")
}

// end is how the guest ends: "poweroff" or "reboot".
func (b boot) end() string {
	if b.reboot {
		return "reboot"
	}
	return "poweroff"
}

// finalLine is what the kernel prints last when the guest ends as asked.
func (b boot) finalLine() string {
	if b.reboot {
		return "reboot: Restarting system"
	}
	return "reboot: Power down"
}

// selectBoots returns the boots named in the comma-separated list: for "" or "default" those not run on demand
// only, for "all" every one.
func selectBoots(list string) ([]boot, error) {
	switch list {
	case "all":
		return allBoots, nil
	case "", "default":
		return slices.DeleteFunc(slices.Clone(allBoots), func(b boot) bool { return b.onDemand }), nil
	}
	var out []boot
	for _, name := range strings.Split(list, ",") {
		found := false
		for _, b := range allBoots {
			if b.name == name {
				out = append(out, b)
				found = true
			}
		}
		if !found {
			var names []string
			for _, b := range allBoots {
				names = append(names, b.name)
			}
			return nil, fmt.Errorf("no boot named %q (the boots: %s)", name, strings.Join(names, ", "))
		}
	}
	return out, nil
}
