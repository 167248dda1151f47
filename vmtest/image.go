package main

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// The guest: a Debian root made with debootstrap (the base, cached between runs because it only depends on the
// recipe below), then per run a copy of it with the project installed (from its Debian package with dpkg, as
// users install it, or by `make install DESTDIR=`), the guest side of the test, and initramfs images built
// inside it by the guest's own dracut and mkinitramfs.

// recipe is everything the base image is made from; another recipe makes another cache entry.
type recipe struct {
	Suite    string
	Mirror   string
	Include  []string // debootstrap --include
	Packages []string // installed afterwards with apt-get (the kernel, dracut and the root clients)
	Dracut   string   // /etc/dracut.conf.d/90-vmtest.conf
	Version  int      // bumped when the steps below change
}

var baseRecipe = recipe{
	Suite:  "bookworm",
	Mirror: "http://deb.debian.org/debian",
	Include: []string{"systemd-sysv", "udev", "kmod", "iproute2", "procps", "util-linux", "passwd", "dbus",
		"ca-certificates"},
	// initramfs-tools-core (mkinitramfs, without the kernel hooks that would conflict with dracut) and busybox:
	// the initramfs-tools image, as Debian and Ubuntu clients boot.
	Packages: []string{"linux-image-amd64", "dracut", "dracut-network", "nbd-client", "nfs-common",
		"isc-dhcp-client", "fuse3", "zstd", "initramfs-tools-core", "busybox"},
	// Generic images (not host-only: a chroot is not the client), with the network root modules and the network
	// handler that works with and without systemd in the initramfs. Fast zstd instead of Debian's gzip -9: the
	// 200 MB image is unpacked at every boot and again by dracut-shutdown at every poweroff, which under TCG
	// took over a minute with gzip.
	Dracut: "hostonly=\"no\"\nadd_dracutmodules+=\" network-legacy nbd nfs \"\n" +
		"compress=\"zstd -q -3 -T0\"\n",
	Version: 3,
}

func (r recipe) key() string {
	b, _ := json.Marshal(r)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

//go:embed guest
var guestFiles embed.FS

// image is one run's guest: the kernel and initramfs images qemu boots, and the root it mounts.
type image struct {
	tree     string            // the root tree (exported over NFS)
	squashfs string            // the same tree as a squashfs image (served over NBD)
	kernel   string            // the guest's kernel
	initrds  map[string]string // by flavour: "systemd", "nosystemd"
	kver     string
}

// logStep runs a command with its output in the file logPath, and on failure returns an error that quotes the
// end of that output.
func logStep(logPath string, env []string, argv ...string) error {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0644)
	if err != nil {
		return err
	}
	defer f.Close()
	fmt.Fprintf(f, "+ %s\n", strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s: %w: %s (whole log: %s)", strings.Join(argv, " "), err,
			lastLines(readFile(logPath), 6), logPath)
	}
	return nil
}

// inChroot runs a command in root with /proc, /sys and /dev mounted, in a private mount namespace so that the
// mounts vanish with it.
func inChroot(root, logPath string, env []string, argv ...string) error {
	script := `set -e; r=$1; shift
mount -t proc proc "$r/proc"; mount -t sysfs sys "$r/sys"; mount --rbind /dev "$r/dev"
exec chroot "$r" "$@"`
	return logStep(logPath, env, append([]string{"unshare", "-m", "--propagation", "private", "sh", "-c", script,
		"sh", root}, argv...)...)
}

// baseImage returns the cached base root for the recipe, building it first if the cache has none.
func baseImage(cacheDir string, r recipe, logf func(string, ...any)) (string, error) {
	dir := filepath.Join(cacheDir, "base-"+r.key())
	if fileExists(filepath.Join(dir, "etc/os-release")) {
		logf("base image: cached in %s", dir)
		return dir, nil
	}
	if err := os.MkdirAll(cacheDir, 0755); err != nil {
		return "", err
	}
	// Earlier recipes' images only take space.
	if old, _ := filepath.Glob(filepath.Join(cacheDir, "base-*")); len(old) > 0 {
		for _, o := range old {
			os.RemoveAll(o)
		}
	}
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	logPath := filepath.Join(cacheDir, "base-"+r.key()+".log")
	os.Remove(logPath)
	start := time.Now()
	logf("base image: debootstrap %s into %s (log: %s)", r.Suite, tmp, logPath)
	// The archive is on the network: one more try after a failure (a fresh tree, debootstrap does not resume).
	debootstrap := []string{"debootstrap", "--variant=minbase", "--include=" + strings.Join(r.Include, ","),
		r.Suite, tmp, r.Mirror}
	err := logStep(logPath, nil, debootstrap...)
	if err != nil {
		logf("base image: debootstrap failed, trying once more: %v", err)
		os.RemoveAll(tmp)
		err = logStep(logPath, nil, debootstrap...)
	}
	if err != nil {
		return "", err
	}
	// No service starts in the chroot; the kernel's own initramfs is not built (each run builds its own).
	policy := filepath.Join(tmp, "usr/sbin/policy-rc.d")
	if err := os.WriteFile(policy, []byte("#!/bin/sh\nexit 101\n"), 0755); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Join(tmp, "etc/dracut.conf.d"), 0755); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, "etc/dracut.conf.d/90-vmtest.conf"), []byte(r.Dracut), 0644); err != nil {
		return "", err
	}
	env := []string{"DEBIAN_FRONTEND=noninteractive", "INITRD=No", "LC_ALL=C"}
	install := append([]string{"apt-get", "install", "-y", "-q", "--no-install-recommends"}, r.Packages...)
	if err := inChroot(tmp, logPath, env, install...); err != nil {
		logf("base image: apt-get failed, trying once more: %v", err)
		if err := inChroot(tmp, logPath, env, install...); err != nil {
			return "", err
		}
	}
	// A user for the login-shell check; the journal kept on disk (so on the union); a machine id made at boot by
	// each client, as an LTSP image has.
	if err := inChroot(tmp, logPath, env, "sh", "-c", `set -e
useradd --create-home --shell /bin/bash vmuser
apt-get clean
rm -rf /var/lib/apt/lists/* /usr/sbin/policy-rc.d
mkdir -p /var/log/journal
: > /etc/machine-id
echo ltsp-client > /etc/hostname
echo '# the root is mounted by the initramfs' > /etc/fstab`); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, dir); err != nil {
		return "", err
	}
	logf("base image: built in %v", time.Since(start).Round(time.Second))
	return dir, nil
}

// initramfsTools names the initramfs-tools image among the initramfs images.
const initramfsTools = "initramfs-tools"

// dracutFlavours are the dracut images a run builds, by name: dracut's arguments beyond the module list.
var dracutFlavours = map[string][]string{
	"systemd": nil,
	// Without systemd: dracut's own init runs the pre-pivot hook and util-linux's switch_root.
	"nosystemd": {"--omit", "systemd systemd-initrd systemd-networkd dracut-systemd"},
}

// buildImage makes this run's guest in work from the base: the project installed from the Debian package deb, or
// with `make install` from repo if deb is "", the guest side of the test, the initramfs images and the squashfs
// image.
func buildImage(base, repo, deb, work string, logf func(string, ...any)) (*image, error) {
	start := time.Now()
	logPath := filepath.Join(work, "image.log")
	img := &image{tree: filepath.Join(work, "rootfs"), squashfs: filepath.Join(work, "root.squashfs"),
		initrds: make(map[string]string)}
	if err := logStep(logPath, nil, "cp", "-a", "--reflink=auto", base, img.tree); err != nil {
		return nil, err
	}
	// The dracut module is asked for in dracut's configuration, the way README's step 1 offers, so that the
	// package's trigger (dpkg -i runs dracut) builds the guest's own image with it.
	if err := os.WriteFile(filepath.Join(img.tree, "etc/dracut.conf.d/91-ltsp-unionfs.conf"),
		[]byte("add_dracutmodules+=\" ltsp-unionfs \"\n"), 0644); err != nil {
		return nil, err
	}
	if err := installProject(img.tree, repo, deb, logPath, logf); err != nil {
		return nil, err
	}
	if err := installGuestFiles(img.tree, work, logPath); err != nil {
		return nil, err
	}
	mods, err := os.ReadDir(filepath.Join(img.tree, "lib/modules"))
	if err != nil || len(mods) != 1 {
		return nil, fmt.Errorf("the image must hold exactly one kernel in /lib/modules (%v)", err)
	}
	img.kver = mods[0].Name()
	img.kernel = filepath.Join(work, "vmlinuz")
	if err := logStep(logPath, nil, "cp", filepath.Join(img.tree, "boot/vmlinuz-"+img.kver), img.kernel); err != nil {
		return nil, err
	}

	// The initramfs images, built by the guest's dracut inside the guest, at the same time. The systemd one is
	// the guest's own /boot/initrd.img-KVER, which dracut-shutdown unpacks to return to at shutdown; installed
	// from the package, the package's trigger has just built it (checked: it must be newer than the image build).
	img.initrds["systemd"] = filepath.Join(img.tree, "/boot/initrd.img-"+img.kver)
	flavours := slices.Sorted(maps.Keys(dracutFlavours))
	if deb != "" {
		if fi, err := os.Stat(img.initrds["systemd"]); err != nil || fi.ModTime().Before(start) {
			return nil, fmt.Errorf("installing the package did not rebuild /boot/initrd.img-%s (%v)", img.kver, err)
		}
		flavours = slices.DeleteFunc(flavours, func(f string) bool { return f == "systemd" })
	}
	logf("image: dracut %s and mkinitramfs in the guest (kernel %s)", strings.Join(flavours, ", "), img.kver)
	var wg sync.WaitGroup
	errs := make([]error, 0, len(flavours)+1)
	var mu sync.Mutex
	for _, flavour := range flavours {
		extra := dracutFlavours[flavour]
		inImage := "/boot/initrd.img-" + img.kver
		if flavour != "systemd" {
			inImage = "/boot/initrd-" + flavour + ".img-" + img.kver
		}
		img.initrds[flavour] = filepath.Join(img.tree, inImage)
		args := append([]string{"dracut", "--force", "--add", "ltsp-unionfs"}, extra...)
		args = append(args, "--kver", img.kver, inImage)
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := inChroot(img.tree, filepath.Join(work, "dracut-"+flavour+".log"), nil, args...)
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		}()
	}
	// The initramfs-tools image, with the package's hook and boot script. The root is a squashfs image, whose
	// module initramfs-tools does not take by itself (MODULES=most covers block, network and disk filesystems).
	if err := appendFile(filepath.Join(img.tree, "etc/initramfs-tools/modules"), "squashfs\n"); err != nil {
		return nil, err
	}
	itools := "/boot/initrd-" + initramfsTools + ".img-" + img.kver
	img.initrds[initramfsTools] = filepath.Join(img.tree, itools)
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := inChroot(img.tree, filepath.Join(work, "mkinitramfs.log"), nil, "mkinitramfs", "-o", itools, img.kver)
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}()
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	logf("image: mksquashfs")
	if err := logStep(logPath, nil, "mksquashfs", img.tree, img.squashfs, "-comp", "lz4", "-noappend",
		"-quiet", "-no-progress"); err != nil {
		return nil, err
	}
	logf("image: built in %v", time.Since(start).Round(time.Second))
	return img, nil
}

// appendFile appends text to the file at p, creating it if needed.
func appendFile(p, text string) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(text); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// installProject installs the project into the guest tree: with dpkg inside the guest from the package deb, or
// with `make install` from repo if deb is "".
func installProject(tree, repo, deb, logPath string, logf func(string, ...any)) error {
	if deb == "" {
		logf("image: make install DESTDIR=%s", tree)
		return logStep(logPath, nil, "make", "-C", repo, "install", "DESTDIR="+tree)
	}
	logf("image: dpkg -i %s", filepath.Base(deb))
	inGuest := "/var/tmp/" + filepath.Base(deb)
	if err := logStep(logPath, nil, "cp", deb, filepath.Join(tree, inGuest)); err != nil {
		return err
	}
	defer os.Remove(filepath.Join(tree, inGuest))
	return inChroot(tree, logPath, nil, "dpkg", "-i", inGuest)
}

// installGuestFiles puts the guest side of the test into the tree: the check script and its unit (enabled), and
// the local package it installs.
func installGuestFiles(tree, work, logPath string) error {
	files := []struct {
		from, to string
		mode     os.FileMode
	}{
		{"guest/ltsp-vmtest", "usr/local/sbin/ltsp-vmtest", 0755},
		{"guest/ltsp-vmtest.service", "etc/systemd/system/ltsp-vmtest.service", 0644},
	}
	for _, f := range files {
		b, err := guestFiles.ReadFile(f.from)
		if err != nil {
			return err
		}
		dst := filepath.Join(tree, f.to)
		if err := os.MkdirAll(filepath.Dir(dst), 0755); err != nil {
			return err
		}
		if err := os.WriteFile(dst, b, f.mode); err != nil {
			return err
		}
	}
	// systemd 252 waits 90 s for a device and knows no default for that on the command line (see
	// boots.go for the services' timeouts). The console's is the one a slow TCG boot can miss: in the boot
	// with an initramfs without systemd, the modules the initramfs of the other flavour loaded are loaded
	// after switch_root, and under TCG the kernel stalled for up to a minute there in every such boot (soft
	// lockups while allocating memory for a module; the same modules load in 1-2 s later in the same boot).
	dropIn := filepath.Join(tree, "etc/systemd/system/dev-ttyS0.device.d")
	if err := os.MkdirAll(dropIn, 0755); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dropIn, "ltsp-vmtest.conf"),
		[]byte("[Unit]\nJobRunningTimeoutSec=300\n"), 0644); err != nil {
		return err
	}
	wants := filepath.Join(tree, "etc/systemd/system/multi-user.target.wants")
	if err := os.MkdirAll(wants, 0755); err != nil {
		return err
	}
	if err := os.Symlink("/etc/systemd/system/ltsp-vmtest.service", filepath.Join(wants, "ltsp-vmtest.service")); err != nil {
		return err
	}
	// A package with one file and no dependencies, for apt-get to install from a local file.
	pkg := filepath.Join(work, "hello")
	for path, content := range map[string]string{
		"DEBIAN/control": "Package: ltsp-vmtest-hello\nVersion: 1.0\nArchitecture: all\n" +
			"Maintainer: ltsp-unionfs <ltsp-unionfs@localhost>\nDescription: a package the VM boot test installs\n",
		"usr/share/ltsp-vmtest-hello/hello": "hello\n",
	} {
		p := filepath.Join(pkg, path)
		if err := os.MkdirAll(filepath.Dir(p), 0755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(content), 0644); err != nil {
			return err
		}
	}
	debDir := filepath.Join(tree, "usr/local/share/ltsp-vmtest")
	if err := os.MkdirAll(debDir, 0755); err != nil {
		return err
	}
	return logStep(logPath, nil, "dpkg-deb", "--root-owner-group", "--build", pkg,
		filepath.Join(debDir, "ltsp-vmtest-hello_1.0_all.deb"))
}
