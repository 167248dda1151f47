package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/rootdaemon"
	"github.com/ltsp/ltsp-unionfs/internal/sysx"
	"github.com/ltsp/ltsp-unionfs/unionfs"
)

// maxWrite is the largest FUSE request: 1016 KiB, not 1 MiB, because a 1 MiB read plus the reply header does not
// fit the default 1 MiB pipe and go-fuse would fall back from splice on every full-size read.
const maxWrite = 1016 << 10

// runMount mounts the union o describes: through the background daemon, or in this process with --foreground
// or when this process is that daemon (notify is then its readiness pipe). A foreground process started with the
// readiness pipe reports on it too but keeps logging to stderr: that is how tests and service managers can wait
// for the mount.
func runMount(o *mountOptions, notify *notifier) error {
	if !o.foreground && notify == nil {
		return runBackground()
	}
	// In an initramfs the daemon serves the future root filesystem: systemd must spare it when it kills
	// everything at switch_root and shutdown (argv[0] starting with '@'), and SIGTERM must not unmount it.
	initrd := rootdaemon.InInitramfs()
	if initrd {
		rootdaemon.MarkSelf()
	}
	logw := &logWriter{w: os.Stderr}
	logger := newLogger(logw)
	for _, n := range o.notes {
		logger.Print(n)
	}

	upper, anonymous := o.upper, o.upper == ""
	if anonymous {
		fd, err := sysx.NewTmpfs(o.anonSize)
		if err != nil {
			if os.Geteuid() != 0 {
				return withCode(exitLayer, errors.New("no rw= layer: the anonymous tmpfs upper layer needs root; give rw=DIR"))
			}
			return withCode(exitLayer, fmt.Errorf("no rw= layer: cannot make the anonymous tmpfs upper layer: %w", err))
		}
		defer unix.Close(fd) // the layer holds its own descriptor of the tmpfs
		upper = fmt.Sprintf("/proc/self/fd/%d", fd)
	}
	layers, err := unionfs.OpenLayers(upper, o.lowers)
	if err != nil {
		return withCode(exitLayer, err)
	}
	if anonymous {
		layers.Upper().Path = "(anonymous tmpfs)"
	}
	mnt, err := checkMountPoint(o.mountpoint, layers)
	if err != nil {
		layers.Close()
		return withCode(exitMountPoint, err)
	}
	cfg := unionfs.DefaultConfig()
	cfg.Logger = logger
	cfg.Debug = o.debug
	cfg.ReadOnly = o.readOnly
	cfg.Whiteout = o.whiteout
	if o.unionfsFuse {
		// A fresh upper layer is written as the unionfs-fuse that LTSP's distributions ship (Debian's and
		// Ubuntu's 1.0) reads it, so that going back to unionfs-fuse is changing the program name again.
		cfg.DefaultWhiteout = "unionfs-fuse-1.0"
	}
	cfg.Passthrough = o.passthrough.or(cfg.Passthrough)
	if o.ptMinSize >= 0 {
		cfg.PassthroughMinSize = o.ptMinSize
	}
	if o.entryTimeout >= 0 {
		cfg.EntryTimeout = o.entryTimeout
	}
	if o.attrTimeout >= 0 {
		cfg.AttrTimeout = o.attrTimeout
	}
	if o.negTimeout >= 0 {
		cfg.NegativeTimeout = o.negTimeout
	}
	cfg.MountOptions = fuseMountOptions(o, logger)
	root, err := unionfs.New(layers, cfg)
	if err != nil {
		layers.Close()
		return err
	}
	unionfs.RaiseFileLimit()
	server, err := unionfs.Mount(mnt, root)
	if err != nil {
		layers.Close()
		return withCode(exitMount, fmt.Errorf("cannot mount on %s: %w", mnt, mountErrorHint(err)))
	}
	unionfs.SpareProcs()
	if initrd {
		becomeRootDaemon(logger)
	}
	sigs := make(chan os.Signal, 1)
	if initrd {
		signal.Notify(sigs, syscall.SIGINT)
		signal.Ignore(syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	} else {
		signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
		signal.Ignore(syscall.SIGHUP, syscall.SIGPIPE)
	}
	go func() {
		for s := range sigs {
			logger.Printf("%v: unmounting %s", s, mnt)
			unmount(server, mnt, logger)
		}
	}()

	// From now on no path the daemon started with may be needed: in an initramfs, switch_root is about to delete
	// or move all of them. Paths to descriptors are taken relative to /proc, the working directory from now on.
	if err := sysx.AnchorProc(); err != nil {
		logger.Printf("cannot make /proc the working directory (%v): the union needs /proc mounted at /proc", err)
	}
	if notify != nil {
		notify.ready()
		if !o.foreground {
			detach(logw)
		}
	}
	logger.Printf("mounted %s", describeUnion(mnt, layers))
	stopProfiles := startProfiles(o, logger)
	server.Wait()
	stopProfiles()
	logger.Printf("unmounted %s", mnt)
	return nil
}

// becomeRootDaemon takes the daemon of the root filesystem out of the reach of whatever stops services and kills
// processes, before it reports ready: the unit that started it is stopped after switch_root, and a stop kills
// the unit's cgroup. Neither step is fatal: the union works without them, until the machine does what they
// guard against, so each failure is logged.
func becomeRootDaemon(logger interface{ Printf(string, ...any) }) {
	if moved, err := rootdaemon.LeaveServiceCgroup(); err != nil {
		logger.Printf("warning: %v: stopping the service that started me will kill the root filesystem", err)
	} else if len(moved) > 0 {
		logger.Printf("left the cgroup of the service that started me for %s", strings.Join(moved, ", "))
	}
	if err := rootdaemon.ProtectFromOOM(); err != nil {
		logger.Printf("warning: the OOM killer may pick me when memory runs out: %v", err)
	}
}

// fuseMountOptions turns the command's options into go-fuse's. As root the daemon mounts with mount(2) itself
// (fusermount3 is gone after switch_root) with the defaults a root filesystem needs; as another user it uses
// fusermount3, which refuses suid and dev.
func fuseMountOptions(o *mountOptions, logger interface{ Printf(string, ...any) }) fuse.MountOptions {
	root := os.Geteuid() == 0
	mo := fuse.MountOptions{
		Name:              "ltsp-unionfs",
		FsName:            oneLine(o.fsname), // /proc/mounts and df(1) must not carry terminal controls
		AllowOther:        o.allowOther || root,
		MaxWrite:          maxWrite,
		DirectMountStrict: root,
		// Kernel-local locks: the union serves one machine, and NFS lowers are mounted nolock anyway.
		EnableLocks: false,
	}
	if mo.FsName == "" {
		mo.FsName = "ltsp-unionfs"
	}
	if len(mo.FsName) >= unix.PathMax {
		// The kernel refuses a mount source of PATH_MAX bytes or more (EINVAL), and the name is only shown: a
		// long layer argument, which names the mount by default, must not make the mount fail.
		mo.FsName = strings.ToValidUTF8(mo.FsName[:unix.PathMax-1], "")
	}
	mo.Options = append(mo.Options, "default_permissions")
	if o.suid.or(root) {
		mo.Options = append(mo.Options, "suid")
	} else {
		mo.Options = append(mo.Options, "nosuid")
	}
	if o.dev.or(root) {
		mo.Options = append(mo.Options, "dev")
	} else {
		mo.Options = append(mo.Options, "nodev")
	}
	if !o.exec.or(true) {
		mo.Options = append(mo.Options, "noexec")
	}
	if o.readOnly {
		mo.Options = append(mo.Options, "ro")
	}
	if root {
		// With DirectMountFlags set, go-fuse starts from these flags instead of MS_NOSUID|MS_NODEV; MS_MGC_VAL
		// is the kernel's "no flags" marker and makes the value non-zero.
		mo.DirectMountFlags = unix.MS_MGC_VAL
		if o.noatime {
			mo.DirectMountFlags |= unix.MS_NOATIME
		}
	} else if o.noatime {
		mo.Options = append(mo.Options, "noatime")
	}
	return mo
}

// mountErrorHint adds what to do to the common mount failures.
func mountErrorHint(err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT) && !fileExists("/dev/fuse"):
		return fmt.Errorf("%w (no /dev/fuse: load the fuse module with modprobe fuse)", err)
	case errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES):
		return fmt.Errorf("%w (mounting needs root, or fusermount3 for other users)", err)
	}
	return err
}

// startProfiles starts the developer profiles asked for and returns the function that writes them.
func startProfiles(o *mountOptions, logger interface{ Printf(string, ...any) }) func() {
	var cpu *os.File
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err == nil {
			err = pprof.StartCPUProfile(f)
		}
		if err != nil {
			logger.Printf("cpuprofile: %v", err)
		} else {
			cpu = f
		}
	}
	return func() {
		if cpu != nil {
			pprof.StopCPUProfile()
			cpu.Close()
		}
		if o.memProfile != "" {
			f, err := os.Create(o.memProfile)
			if err == nil {
				err = pprof.WriteHeapProfile(f)
				f.Close()
			}
			if err != nil {
				logger.Printf("memprofile: %v", err)
			}
		}
	}
}

// describeUnion names a mounted union's layers for the log.
func describeUnion(mnt string, layers *unionfs.Layers) string {
	s := mnt + ": upper " + layers.Upper().Path + ", lower"
	for _, l := range layers.Lowers() {
		s += " " + l.Path
	}
	return s
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// checkMountPoint resolves the mount point and checks that it is a directory outside the upper layer. Mounting on
// a lower layer (ro=/sysroot ... /sysroot) is allowed: the daemon holds the lower open from before the mount.
func checkMountPoint(p string, layers *unionfs.Layers) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", fmt.Errorf("mount point %s cannot be resolved: %w", p, err)
	}
	if resolved, err := filepath.EvalSymlinks(abs); err == nil {
		abs = resolved
	}
	fd, err := unix.Open(abs, unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, syscall.ENOENT) {
			return "", fmt.Errorf("mount point %s does not exist", abs)
		}
		return "", fmt.Errorf("mount point %s cannot be opened: %w", abs, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := sysx.Fstat(fd, &st); err != nil {
		return "", fmt.Errorf("mount point %s cannot be examined: %w", abs, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return "", fmt.Errorf("mount point %s is not a directory", abs)
	}
	if layers.Upper().Contains(fd) {
		return "", fmt.Errorf("mount point %s lies inside the upper layer %s: the union would hide its own upper layer",
			abs, layers.Upper().Path)
	}
	return abs, nil
}

// unmount unmounts the union after a signal. A mount still in use is detached lazily: it disappears from the
// namespace at once and the daemon serves the remaining users until they are gone.
func unmount(server *fuse.Server, mnt string, logger interface{ Printf(string, ...any) }) {
	err := server.Unmount()
	if err == nil {
		return
	}
	logger.Printf("unmounting %s: %v; detaching it lazily", mnt, err)
	if os.Geteuid() == 0 {
		err = unix.Unmount(mnt, unix.MNT_DETACH)
	} else {
		err = exec.Command("fusermount3", "-u", "-z", mnt).Run()
	}
	if err != nil {
		logger.Printf("detaching %s: %v", mnt, err)
	}
}
