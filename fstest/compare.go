package fstest

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// CompareOptions says what CompareTrees ignores.
type CompareOptions struct {
	// IgnoreAtime skips access times (reading the trees to compare them changes them on some filesystems).
	IgnoreAtime bool
	// IgnoreDirNlink skips the link count of directories.
	IgnoreDirNlink bool
	// IgnoreDirSize skips the size of directories, which differs between filesystem types.
	IgnoreDirSize bool
	// IgnoreMtime skips modification times.
	IgnoreMtime bool
	// IgnoreXattrs skips xattrs (for unions built without xattr support, such as Debian's unionfs-fuse).
	IgnoreXattrs bool
}

// Describe returns a one-line description of every object under root, keyed by path relative to root: type,
// mode, owner, size, link count, device number, mtime, symlink target, content hash and xattrs (overlayfs's
// private trusted.overlay.* and user.overlay.* excluded). Files are read with O_NOATIME where allowed.
func Describe(root string, opt CompareOptions) (map[string]string, error) {
	out := make(map[string]string)
	err := describeDir(root, ".", opt, out)
	return out, err
}

func describeDir(root, rel string, opt CompareOptions, out map[string]string) error {
	p := filepath.Join(root, rel)
	d, err := describeOne(p, opt)
	if err != nil {
		return err
	}
	out[rel] = d
	entries, err := os.ReadDir(p)
	if err != nil {
		return err
	}
	for _, e := range entries {
		crel := filepath.Join(rel, e.Name())
		if e.IsDir() {
			if err := describeDir(root, crel, opt, out); err != nil {
				return err
			}
			continue
		}
		d, err := describeOne(filepath.Join(root, crel), opt)
		if err != nil {
			return err
		}
		out[crel] = d
	}
	return nil
}

func describeOne(p string, opt CompareOptions) (string, error) {
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		return "", err
	}
	isDir := st.Mode&unix.S_IFMT == unix.S_IFDIR
	var b strings.Builder
	fmt.Fprintf(&b, "mode=%o uid=%d gid=%d", st.Mode, st.Uid, st.Gid)
	if !isDir || !opt.IgnoreDirSize {
		fmt.Fprintf(&b, " size=%d", st.Size)
	}
	if !isDir || !opt.IgnoreDirNlink {
		fmt.Fprintf(&b, " nlink=%d", st.Nlink)
	}
	fmt.Fprintf(&b, " rdev=%x", st.Rdev)
	if !opt.IgnoreMtime {
		fmt.Fprintf(&b, " mtime=%d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
	}
	if !opt.IgnoreAtime {
		fmt.Fprintf(&b, " atime=%d.%09d", st.Atim.Sec, st.Atim.Nsec)
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFLNK:
		target, err := os.Readlink(p)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, " target=%q", target)
	case unix.S_IFREG:
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOATIME|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err == unix.EPERM {
			fd, err = unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return "", fmt.Errorf("open %s: %w", p, err)
		}
		f := os.NewFile(uintptr(fd), p)
		h := sha256.New()
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("read %s: %w", p, err)
		}
		fmt.Fprintf(&b, " sha256=%s", hex.EncodeToString(h.Sum(nil))[:16])
	}
	if !opt.IgnoreXattrs {
		xattrs, err := describeXattrs(p)
		if err != nil {
			return "", err
		}
		b.WriteString(xattrs)
	}
	return b.String(), nil
}

func describeXattrs(p string) (string, error) {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err == unix.ENOTSUP {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("listxattr %s: %w", p, err)
	}
	var names []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name != "" && !strings.HasPrefix(name, "trusted.overlay.") && !strings.HasPrefix(name, "user.overlay.") {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var b strings.Builder
	for _, name := range names {
		m, err := unix.Lgetxattr(p, name, buf)
		if err != nil {
			return "", fmt.Errorf("getxattr %s %s: %w", p, name, err)
		}
		fmt.Fprintf(&b, " %s=%x", name, buf[:m])
	}
	return b.String(), nil
}

// CompareTrees checks that the trees under want and got hold the same names with the same descriptions (see
// Describe) and reports every difference. It returns the number of objects compared.
func CompareTrees(t *testing.T, want, got string, opt CompareOptions) int {
	t.Helper()
	dw, err := Describe(want, opt)
	if err != nil {
		t.Fatalf("describing %s: %v", want, err)
	}
	dg, err := Describe(got, opt)
	if err != nil {
		t.Fatalf("describing %s: %v", got, err)
	}
	var diffs []string
	for name, w := range dw {
		g, ok := dg[name]
		switch {
		case !ok:
			diffs = append(diffs, fmt.Sprintf("missing from %s: %s", got, name))
		case g != w:
			diffs = append(diffs, fmt.Sprintf("%s differs:\n  %s: %s\n  %s: %s", name, want, w, got, g))
		}
	}
	for name := range dg {
		if _, ok := dw[name]; !ok {
			diffs = append(diffs, fmt.Sprintf("extra in %s: %s", got, name))
		}
	}
	sort.Strings(diffs)
	for i, d := range diffs {
		if i == 30 {
			t.Errorf("... and %d more differences", len(diffs)-30)
			break
		}
		t.Error(d)
	}
	return len(dw)
}
