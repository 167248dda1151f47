package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/internal/progress"
	"github.com/ltsp/ltsp-unionfs/tools/changes"
)

const diffLong = `Print what the upper layer UPPER changes in the merged view: one line per change, sorted by path.

  A PATH                  added: nothing of that name below
  M PATH                  modified: other data (content, symlink target, device) or another type
  m PATH (metadata: ...)  only mode, owner, times (mtime) or xattrs differ; an overlay metadata-only
                          copy (trusted.overlay.metacopy) is always m
  D PATH                  deleted: a whiteout hides a lower object
  O PATH (opaque)         an opaque directory hides the lower directory; what it holds is listed as A
  R PATH <- OLD           a renamed directory (overlay redirect) that shows the lower directory OLD; the
                          whiteout left at OLD is listed as D
  C PATH                  changed: without --lower, an upper object that is not marked otherwise (added
                          or modified; only the lower layers could tell which)

Without --lower, UPPER is read alone: whiteouts are D, marked opaque directories O, redirects R, metadata-only
copies m, and every other upper object C (directories included). With --lower (the lower layers, topmost first:
repeat the flag or separate with colons, as ro= does) objects are compared with what the lower layers show:
data byte by byte, metadata by mode, owner, mtime and xattrs (the union's private trusted.overlay.* and
user.overlay.* never count); whiteouts and opaque directories that hide nothing are not changes, and a
directory whose only difference is its times is not listed. Access times are never compared.

All three marker formats are read: overlay (character device 0/0, trusted.overlay.* xattrs), aufs (.wh.NAME,
.wh..wh..opq) and unionfs-fuse (.unionfs/ or .unionfs-fuse/ PATH_HIDDEN~), in the upper and the lower layers.
Nothing is written; symlinks are never followed. UPPER may belong to a live mount (e.g. a client's
/run/initramfs/ltsp/rw), but what is changed meanwhile may be missed.

--json prints one object:
  {"upper": "UPPER", "lowers": ["DIR", ...], "format": "overlay|aufs|unionfs-fuse|unionfs-fuse-1.0|",
   "changes": [{"path": "/etc/passwd",     absolute path in the merged view
                "kind": "modified",        added, modified, metadata, deleted, opaque, renamed, changed
                "type": "file",            file, dir, symlink, fifo, socket, char, block
                                           (deletions: the lower object's type, absent without --lower)
                "lower_type": "dir",       modified: the type of the lower object, when another
                "from": "/opt/app",        renamed (and renamed metadata-only copies): the lower path
                "metadata": ["mode"],      mode, owner, times, xattrs: what differs from the lower object
                "metacopy": true,          the upper file is a metadata-only copy
                "link": "/etc/a"}, ...]}   another path of the same upper file (hard link)
  Fields that do not apply are left out.

On a terminal, the number of objects read is shown on stderr while the command runs.

` + exitCodesHelp

func newDiffCommand() *cobra.Command {
	var lowers []string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "diff UPPER [--lower DIR]... [--json]",
		Short: "List what an upper layer changes: added, modified, deleted, opaque and renamed",
		Long:  diffLong,
		Example: `  ltsp-unionfs diff /run/initramfs/ltsp/rw
  ltsp-unionfs diff /var/tmp/changes --lower /srv/image
  ltsp-unionfs diff up --lower top:base --json | jq -r '.changes[] | select(.kind == "deleted") | .path'`,
		Args: oneArg("UPPER"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ls, err := splitLowers(lowers)
			if err != nil {
				return err
			}
			if err := checkLayerDir("upper layer", args[0]); err != nil {
				return err
			}
			for _, l := range ls {
				if err := checkLayerDir("lower layer", l); err != nil {
					return err
				}
			}
			stderr := cmd.ErrOrStderr()
			prog := progress.New(stderr, "objects read")
			rep, err := changes.Diff(changes.Options{Upper: args[0], Lowers: ls, Progress: prog,
				Warn: warner(stderr, prog)})
			prog.Done()
			if err != nil {
				return toolError(err)
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", " ")
				return enc.Encode(rep)
			}
			return printChanges(cmd.OutOrStdout(), rep.Changes)
		},
	}
	addLowerFlag(cmd, &lowers)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the changes as JSON (schema above)")
	return cmd
}

// printChanges prints one line per change.
func printChanges(w io.Writer, cs []*changes.Change) error {
	var b strings.Builder
	for _, c := range cs {
		b.WriteString(c.String())
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// oneArg accepts exactly one argument, named name in the error, which is a usage error.
func oneArg(name string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		switch {
		case len(args) == 0:
			return usageErrorf("%s: missing %s", cmd.Name(), name)
		case len(args) > 1:
			return usageErrorf("%s: unexpected arguments after %s: %s", cmd.Name(), name, strings.Join(args[1:], " "))
		}
		return nil
	}
}

// splitLowers splits the --lower values at colons; an empty path is a usage error.
func splitLowers(vals []string) ([]string, error) {
	var out []string
	for _, v := range vals {
		for _, p := range strings.Split(v, ":") {
			if p == "" {
				return nil, usageErrorf("--lower %q: empty layer path", v)
			}
			out = append(out, p)
		}
	}
	return out, nil
}

// checkLayerDir fails with exit code 3 unless path is a directory that can be listed.
func checkLayerDir(role, path string) error {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return withCode(exitLayer, fmt.Errorf("%s %s does not exist", role, path))
	case err != nil:
		return withCode(exitLayer, fmt.Errorf("%s %s: %w", role, path, err))
	case !st.IsDir():
		return withCode(exitLayer, fmt.Errorf("%s %s is not a directory", role, path))
	}
	// Opening checks the permission to read; reading would change the directory's access time.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return withCode(exitLayer, fmt.Errorf("%s %s cannot be read: %w", role, path, err))
	}
	unix.Close(fd)
	return nil
}

// warner returns a function that prints a warning on w, below the progress line.
func warner(w io.Writer, prog *progress.Reporter) func(error) {
	return func(err error) {
		prog.Done()
		fmt.Fprintf(w, "ltsp-unionfs: warning: %v\n", err)
	}
}
