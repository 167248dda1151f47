package unionfs

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/sysx"
)

// Clearing setuid and setgid bits when a file is written (FUSE_HANDLE_KILLPRIV_V2).
//
// Without that capability the kernel asks the daemon for security.capability before every write(2) of every file
// (FUSE does not set SB_NOSEC, so the kernel cannot remember that a file has nothing to kill): one round trip per
// write, passthrough or not. With it, the kernel remembers (S_NOSEC) and leaves the clearing of setuid/setgid to
// the daemon:
//
//   - a cached write carries FUSE_WRITE_KILL_SUIDGID, an O_TRUNC open FUSE_OPEN_KILL_SUIDGID: go-fuse's node API
//     drops both flags, so the daemon works out the kernel's decision itself (wouldKill) from the file's mode
//     and the caller's credentials;
//   - a truncate carries FATTR_KILL_SUIDGID;
//   - a passthrough write never reaches the daemon: the kernel sends a SETATTR without attributes instead, which
//     is the kill request. Writers of setuid/setgid files are therefore opened in cached mode (register), and
//     the empty SETATTR covers a file that became setuid while a passthrough writer had it open.
//
// File capabilities (security.capability) are still removed by the kernel itself, with REMOVEXATTR, and chown
// clears both bits on the upper layer as on any filesystem.

// isSxid reports whether mode has a bit a write may have to clear: setuid, or setgid.
func isSxid(mode uint32) bool {
	return mode&(unix.S_ISUID|unix.S_ISGID) != 0
}

// wouldKill returns the mode bits the kernel clears when the caller writes to or truncates a regular file of
// this mode and group (setattr_should_drop_suidgid): setuid; setgid if the file is group-executable, or else if
// the caller is not in the file's group; none if the caller has CAP_FSETID.
func (r *Root) wouldKill(mode, gid uint32, caller *fuse.Caller) uint32 {
	if mode&unix.S_IFMT != unix.S_IFREG || !isSxid(mode) {
		return 0
	}
	creds := r.readCreds(caller)
	if creds.fsetid {
		return 0
	}
	var kill uint32
	if mode&unix.S_ISUID != 0 {
		kill |= unix.S_ISUID
	}
	if mode&unix.S_ISGID != 0 && (mode&unix.S_IXGRP != 0 || !creds.inGroup(gid)) {
		kill |= unix.S_ISGID
	}
	return kill
}

// creds are what wouldKill needs to know of a caller beyond its uid and gid.
type creds struct {
	fsetid bool
	gid    uint32
	groups []uint32
}

func (c creds) inGroup(gid uint32) bool {
	if c.gid == gid {
		return true
	}
	for _, g := range c.groups {
		if g == gid {
			return true
		}
	}
	return false
}

// readCreds reads the caller's effective capabilities and supplementary groups from /proc (through the
// descriptor opened at start, which survives switch_root). It is only called for writes to setuid/setgid files. A
// caller it cannot read (a request without a process, one that exited, no /proc) counts as unprivileged and in no
// group, so that the bits are cleared: the safe side.
func (r *Root) readCreds(caller *fuse.Caller) creds {
	c := creds{gid: caller.Gid}
	if caller.Pid == 0 || r.procfd < 0 {
		return c
	}
	fd, err := unix.Openat(r.procfd, fmt.Sprintf("%d/status", caller.Pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return c
	}
	f := os.NewFile(uintptr(fd), "status")
	defer f.Close()
	var uid = -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(value)
		switch key {
		case "Uid":
			if len(fields) > 1 {
				uid, _ = strconv.Atoi(fields[1]) // effective
			}
		case "CapEff":
			if len(fields) > 0 {
				caps, err := strconv.ParseUint(fields[0], 16, 64)
				c.fsetid = err == nil && caps&(1<<unix.CAP_FSETID) != 0
			}
		case "Groups":
			for _, g := range fields {
				if n, err := strconv.ParseUint(g, 10, 32); err == nil {
					c.groups = append(c.groups, uint32(n))
				}
			}
		}
	}
	if uid != int(caller.Uid) {
		// The process is not (or no longer) the caller: a recycled pid.
		return creds{gid: caller.Gid}
	}
	return c
}

// killPrivsFd clears, on the open file fd of n, the bits the kernel would clear for caller's write or truncate.
// It tells the kernel that n's attributes changed when it changed them.
func (n *Node) killPrivsFd(fd int, caller *fuse.Caller) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	kill := n.root.wouldKill(st.Mode, st.Gid, caller)
	if kill == 0 {
		return nil
	}
	if err := unix.Fchmod(fd, st.Mode&07777&^kill); err != nil {
		return err
	}
	n.attrsChanged()
	return nil
}

// killPrivsAt is killPrivsFd for the object name in dirfd.
func (n *Node) killPrivsAt(dirfd int, name string, caller *fuse.Caller) error {
	var st unix.Stat_t
	if err := sysx.Fstatat(dirfd, name, &st); err != nil {
		return err
	}
	kill := n.root.wouldKill(st.Mode, st.Gid, caller)
	if kill == 0 {
		return nil
	}
	if err := sysx.Chmodat(dirfd, name, st.Mode&07777&^kill); err != nil {
		return err
	}
	n.attrsChanged()
	return nil
}

// requestCaller returns the process a request came from; a request without one gets the zero Caller (pid 0), which
// wouldKill treats as unprivileged.
func requestCaller(ctx context.Context) *fuse.Caller {
	if c, ok := fuse.FromContext(ctx); ok && c != nil {
		return c
	}
	return &fuse.Caller{}
}
