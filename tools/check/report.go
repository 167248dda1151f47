package check

import (
	"fmt"
	"io"
	"sort"
	"strings"
)

// Kinds of problems. They are part of the JSON report and stable.
const (
	KindTempObject        = "temp-object"            // a leftover temporary object of the union (crash during a copy-up)
	KindMixedFormats      = "mixed-formats"          // markers of more than one whiteout format in one upper
	KindUselessWhiteout   = "whiteout-hides-nothing" // a whiteout of a name no lower layer has there (needs lowers)
	KindRedundantWhiteout = "redundant-whiteout"     // an aufs or unionfs-fuse whiteout beside an upper non-directory
	KindMetacopyNoData    = "metacopy-data-gone"     // a metadata-only copy whose lower data is gone (needs lowers)
	KindBadRedirect       = "bad-redirect"           // a redirect that is malformed or leads to nothing below
	KindOrphanMeta        = "orphan-meta"            // unionfs-fuse markers for a directory that exists nowhere
	KindUnknownMeta       = "unknown-meta-entry"     // an entry of a unionfs-fuse meta tree that is no marker
	KindOpaqueNonDir      = "opaque-non-directory"   // an overlay opaque xattr on a non-directory
)

// Problem is one inconsistency found in an upper layer.
type Problem struct {
	Kind     string `json:"kind"`
	Path     string `json:"path"`             // from the upper layer's root, beginning with "/"
	Detail   string `json:"detail"`           // what is wrong, for a person
	Repaired bool   `json:"repaired"`         // --repair fixed it
	Action   string `json:"action,omitempty"` // what the repair did, or why it could not
}

// Report is the result of a check.
type Report struct {
	Upper    string    `json:"upper"`
	Lowers   []string  `json:"lowers"`
	Formats  []string  `json:"formats"` // the whiteout formats whose markers the upper holds
	Objects  int       `json:"objects"` // upper objects examined
	Problems []Problem `json:"problems"`
}

// Unrepaired returns the number of problems left unrepaired.
func (r *Report) Unrepaired() int {
	n := 0
	for _, p := range r.Problems {
		if !p.Repaired {
			n++
		}
	}
	return n
}

// Print writes the report for a person: one line per problem, then a summary.
func (r *Report) Print(w io.Writer) {
	for _, p := range r.Problems {
		line := fmt.Sprintf("%s: %s: %s", p.Path, p.Kind, p.Detail)
		switch {
		case p.Repaired:
			line += " [repaired: " + p.Action + "]"
		case p.Action != "":
			line += " [not repaired: " + p.Action + "]"
		}
		fmt.Fprintln(w, line)
	}
	formats := "none"
	if len(r.Formats) > 0 {
		formats = strings.Join(r.Formats, ", ")
	}
	fmt.Fprintf(w, "%s: %d objects, markers: %s; %d problems, %d repaired\n", r.Upper, r.Objects, formats,
		len(r.Problems), len(r.Problems)-r.Unrepaired())
}

// sortProblems orders problems by path, then kind.
func sortProblems(ps []Problem) {
	sort.SliceStable(ps, func(i, j int) bool {
		if ps[i].Path != ps[j].Path {
			return ps[i].Path < ps[j].Path
		}
		return ps[i].Kind < ps[j].Kind
	})
}
