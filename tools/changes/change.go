package changes

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"golang.org/x/sys/unix"
)

// Kind classifies a change (see the package documentation).
type Kind int

// The kinds of change. Unchanged marks upper directories that merely hold changes; Diff leaves them out unless
// asked (Merge needs them).
const (
	Unchanged Kind = iota
	Added
	Modified
	Metadata
	Deleted
	Opaque
	Renamed
	Changed
)

var kindNames = [...]string{"unchanged", "added", "modified", "metadata", "deleted", "opaque", "renamed", "changed"}
var kindLetters = [...]string{"=", "A", "M", "m", "D", "O", "R", "C"}

// String returns the kind's name as the JSON output spells it.
func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// Letter returns the one-letter code of the human-readable output.
func (k Kind) Letter() string {
	if int(k) < len(kindLetters) {
		return kindLetters[k]
	}
	return "?"
}

// MarshalJSON encodes the kind by name.
func (k Kind) MarshalJSON() ([]byte, error) { return json.Marshal(k.String()) }

// UnmarshalJSON decodes a kind name.
func (k *Kind) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	for i, n := range kindNames {
		if n == s {
			*k = Kind(i)
			return nil
		}
	}
	return fmt.Errorf("unknown change kind %q", s)
}

// Attributes a Metadata change lists as differing.
const (
	AttrMode   = "mode"
	AttrOwner  = "owner"
	AttrTimes  = "times"
	AttrXattrs = "xattrs"
)

// Change is one change an upper layer makes to the merged view.
type Change struct {
	Path      string   `json:"path"`                 // absolute path in the merged view, "/" for the root
	Kind      Kind     `json:"kind"`                 // what the change is
	Type      string   `json:"type,omitempty"`       // the upper object's type; for deletions the lower one's, if known
	LowerType string   `json:"lower_type,omitempty"` // Modified: the type of the lower object it replaces, if another
	From      string   `json:"from,omitempty"`       // Renamed, and renamed metadata-only copies: the lower path
	Metadata  []string `json:"metadata,omitempty"`   // attributes that differ from the lower object
	Metacopy  bool     `json:"metacopy,omitempty"`   // the upper object is a metadata-only copy (data below)
	Link      string   `json:"link,omitempty"`       // another path of the same upper file (a hard link)

	st unix.Stat_t // the upper object's attributes (not for deletions)
}

// String returns the change as one line of the human-readable output, e.g. "m /etc/shadow (metadata: mode)".
func (c *Change) String() string {
	var b strings.Builder
	b.WriteString(c.Kind.Letter())
	b.WriteByte(' ')
	b.WriteString(c.Path)
	if c.Kind == Renamed {
		b.WriteString(" <- " + c.From)
	}
	var notes []string
	switch {
	case c.Kind == Opaque:
		notes = append(notes, "opaque")
	case c.LowerType != "":
		notes = append(notes, "was a "+c.LowerType)
	}
	if c.Metacopy && c.From != "" {
		notes = append(notes, "data from "+c.From)
	}
	if len(c.Metadata) > 0 {
		notes = append(notes, "metadata: "+strings.Join(c.Metadata, ", "))
	} else if c.Kind == Metadata && c.Metacopy {
		notes = append(notes, "metadata-only copy")
	}
	if c.Link != "" {
		notes = append(notes, "link to "+c.Link)
	}
	if len(notes) > 0 {
		b.WriteString(" (" + strings.Join(notes, "; ") + ")")
	}
	return b.String()
}

// Report is what Diff found, as the JSON output of `ltsp-unionfs diff --json` holds it.
type Report struct {
	Upper   string    `json:"upper"`
	Lowers  []string  `json:"lowers"`
	Format  string    `json:"format"` // the marker format the upper layer is written in, "" if it holds no markers
	Changes []*Change `json:"changes"`
}

// typeName names the file type of mode as the output spells it.
func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "file"
	case unix.S_IFDIR:
		return "dir"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "char"
	case unix.S_IFBLK:
		return "block"
	}
	return "unknown"
}

// sortChanges sorts changes by path; a directory sorts before everything in it.
func sortChanges(cs []*Change) {
	sort.SliceStable(cs, func(i, j int) bool { return pathLess(cs[i].Path, cs[j].Path) })
}

// pathLess orders paths component by component, so that "/a/b" sorts right after "/a" (before "/a-b").
func pathLess(a, b string) bool {
	for {
		ca, ra, _ := strings.Cut(strings.TrimPrefix(a, "/"), "/")
		cb, rb, _ := strings.Cut(strings.TrimPrefix(b, "/"), "/")
		if ca != cb {
			return ca < cb
		}
		if ra == "" || rb == "" {
			return ra == "" && rb != ""
		}
		a, b = ra, rb
	}
}
