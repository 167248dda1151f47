package main

import (
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ltsp/ltsp-unionfs/internal/progress"
	"github.com/ltsp/ltsp-unionfs/tools/changes"
)

const mergeLong = `Apply the changes of the upper layer UPPER to DIR, a writable copy of the lower layers (an image under
construction, e.g. made with cp -a), so that DIR then holds what the union showed. This is how a change tried
on a client becomes part of the image.

  - whiteouts delete what they hide;
  - an opaque directory removes what DIR's directory holds that the upper directory does not;
  - a renamed directory (overlay redirect) is moved from its old path, and the upper content applied inside;
  - a metadata-only copy (overlay metacopy, or a copy with unchanged data) changes the mode, owner, times and
    xattrs of DIR's object and keeps its data; a file with several hard links in DIR is copied first, so that
    its other names keep their metadata, as in the union;
  - added and modified objects are copied with their data (holes kept), owner, mode (setuid included), times
    and xattrs, but never the union's private xattrs (trusted.overlay.*, user.overlay.*); hard links of the
    upper layer stay hard links;
  - every directory the upper layer has gets its times; other directories keep theirs.

The changes are the ones ` + "`ltsp-unionfs diff UPPER --lower DIR`" + ` lists; all three marker formats are read.
--dry-run prints what would be done (as --verbose does while doing it) and changes nothing. Each object is
replaced at once (by a rename or link), but the merge as a whole is not atomic: merge into a copy. Merging
the same upper layer again changes nothing more, except for renamed directories, whose old path the first merge
moved away.

merge refuses (exit status 8) while UPPER is the upper layer of a live union: an overlayfs mount with
upperdir=UPPER, or a FUSE daemon (ltsp-unionfs, unionfs-fuse) that uses it. Unmount it first.

On a terminal, progress is shown on stderr while the command runs.

` + exitCodesHelp

func newMergeCommand() *cobra.Command {
	var into string
	var dryRun, verbose bool
	cmd := &cobra.Command{
		Use:   "merge UPPER --into DIR [--dry-run]",
		Short: "Apply an upper layer's changes to a copy of the lower layers",
		Long:  mergeLong,
		Example: `  cp -a /srv/image /srv/image.new
  ltsp-unionfs merge /var/tmp/changes --into /srv/image.new --dry-run
  ltsp-unionfs merge /var/tmp/changes --into /srv/image.new`,
		Args: oneArg("UPPER"),
		RunE: func(cmd *cobra.Command, args []string) error {
			upper := args[0]
			if into == "" {
				return usageErrorf("merge: missing --into DIR")
			}
			if err := checkLayerDir("upper layer", upper); err != nil {
				return err
			}
			if err := checkLayerDir("directory", into); err != nil {
				return err
			}
			if err := checkApart(upper, into); err != nil {
				return err
			}
			stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
			prog := progress.New(stderr, "objects read and changes applied")
			opt := changes.MergeOptions{Upper: upper, Into: into, DryRun: dryRun, Progress: prog,
				Warn: warner(stderr, prog)}
			if dryRun || verbose {
				opt.Log = func(line string) {
					prog.Done()
					fmt.Fprintln(stdout, line)
				}
			}
			st, err := changes.Merge(opt)
			prog.Done()
			if err != nil {
				return toolError(fmt.Errorf("merging %s into %s: %w", upper, into, err))
			}
			if dryRun || verbose {
				printMergeStats(stdout, st, dryRun)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&into, "into", "", "the `DIR` to change: a writable copy of the lower layers")
	cmd.Flags().BoolVarP(&dryRun, "dry-run", "n", false, "print what would be done, change nothing")
	cmd.Flags().BoolVarP(&verbose, "verbose", "v", false, "print each action as it is done")
	return cmd
}

// printMergeStats prints the summary line.
func printMergeStats(w io.Writer, st *changes.MergeStats, dryRun bool) {
	verb := "merged"
	if dryRun {
		verb = "would merge"
	}
	fmt.Fprintf(w, "%s: %d copied (%d bytes), %d deleted, %d moved, %d metadata only\n",
		verb, st.Copied, st.Bytes, st.Deleted, st.Moved, st.Metadata)
}

// checkApart fails with exit code 3 if one of the directories lies inside the other, or they are the same.
func checkApart(upper, into string) error {
	a, err1 := filepath.EvalSymlinks(upper)
	b, err2 := filepath.EvalSymlinks(into)
	if err1 != nil || err2 != nil {
		return nil // checkLayerDir has said what is wrong
	}
	a, _ = filepath.Abs(a)
	b, _ = filepath.Abs(b)
	switch {
	case a == b:
		return withCode(exitLayer, fmt.Errorf("directory %s is the upper layer itself", into))
	case strings.HasPrefix(b+"/", a+"/"):
		return withCode(exitLayer, fmt.Errorf("directory %s lies inside the upper layer %s", into, upper))
	case strings.HasPrefix(a+"/", b+"/"):
		return withCode(exitLayer, fmt.Errorf("upper layer %s lies inside the directory %s", upper, into))
	}
	return nil
}
