// Package mountinfo reads /proc/PID/mountinfo (proc(5)): the one parser of mount tables in the tree, for the
// daemon's tools (is an upper layer in use?) and the tests (what is mounted where?).
package mountinfo

import (
	"bufio"
	"io"
	"os"
	"strconv"
	"strings"
)

// Mount is one line of a mountinfo file, its fields unescaped.
type Mount struct {
	MountPoint string
	FSType     string
	Source     string
	Options    string // per-mount options, e.g. rw,nosuid,nodev,relatime
	SuperOpts  string // per-superblock options, still escaped: a comma inside a value is \054 (see Unescape)
}

// Self is the mount table of the calling process's mount namespace.
const Self = "/proc/self/mountinfo"

// Read returns the mounts the mountinfo file at path lists, in its order (parents before children).
func Read(path string) ([]Mount, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Parse(f)
}

// Parse returns the mounts of a mountinfo table. Malformed lines are skipped.
func Parse(r io.Reader) ([]Mount, error) {
	var ms []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		f1, f2 := strings.Fields(pre), strings.Fields(post)
		if len(f1) < 6 || len(f2) < 3 {
			continue
		}
		ms = append(ms, Mount{MountPoint: Unescape(f1[4]), Options: f1[5], FSType: f2[0], Source: Unescape(f2[1]),
			SuperOpts: f2[2]})
	}
	return ms, sc.Err()
}

// Unescape decodes the octal escapes of mountinfo fields (\040 for a space, \134 for a backslash).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
