package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/ltsp/ltsp-unionfs/internal/progress"
	"github.com/ltsp/ltsp-unionfs/tools/convert"
	"github.com/ltsp/ltsp-unionfs/whiteout"
)

func newConvertCommand() *cobra.Command {
	var to string
	var lowers []string
	cmd := &cobra.Command{
		Use:   "convert UPPER --to FORMAT [--lower DIR]...",
		Short: "Rewrite an upper layer's whiteouts and opaque markers in another format, in place",
		Long: `Rewrite the markers of the upper layer UPPER (whiteouts, opaque directories) in the format FORMAT, in
place, so that another union reads it the same:

  overlay           kernel overlayfs (character device whiteouts, trusted.overlay.* xattrs)
  aufs              aufs (.wh.NAME and .wh..wh..opq files)
  unionfs-fuse      unionfs-fuse 2.0 and later (.unionfs/PATH_HIDDEN~)
  unionfs-fuse-1.0  unionfs-fuse 1.0 as Debian and Ubuntu ship it (.unionfs-fuse/PATH_HIDDEN~)

Markers of every format are read, so an upper of mixed formats is made consistent. Each object is converted on
its own: the new marker is written before the old one is removed, so no name ever shows what it should not.
Directory times are kept.

Renamed directories (overlayfs redirects) and metadata-only copies exist only in the overlay format: for the
other formats the lower content they refer to is copied into the upper layer, which needs the lower layers
(--lower, topmost first, repeated); without them such an upper is refused, unchanged, naming the first object.
The same holds for unionfs-fuse whiteouts below directories the upper does not have, converted to overlay or
aufs. The conversion is refused while a mount uses UPPER.

` + exitCodesHelp,
		Example: `  ltsp-unionfs convert /var/lib/changes --to overlay
  ltsp-unionfs convert /var/lib/changes --to unionfs-fuse-1.0 --lower /srv/image
  ltsp-unionfs convert /tmp/up --to aufs --lower /a --lower /b`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if to == "" {
				return usageErrorf("--to FORMAT is required (overlay, aufs, unionfs-fuse or unionfs-fuse-1.0)")
			}
			if _, err := whiteout.ByName(to); err != nil {
				return withCode(exitUsage, err)
			}
			ls, err := splitLowers(lowers)
			if err != nil {
				return err
			}
			prog := progress.New(cmd.ErrOrStderr(), "upper objects converted")
			res, err := convert.Convert(args[0], convert.Options{To: to, Lowers: ls, Progress: prog.Add})
			prog.Done()
			if err != nil {
				return toolError(err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: converted to %s: %d objects examined, %d markers written, %d removed, "+
				"%d redirected directories materialised (%d objects copied up), %d metadata-only copies completed\n",
				args[0], to, res.Objects, res.Markers, res.Removed, res.Materialised, res.CopiedUp, res.Filled)
			return nil
		},
	}
	flags := cmd.Flags()
	flags.StringVar(&to, "to", "", "the `FORMAT` to write: overlay, aufs, unionfs-fuse or unionfs-fuse-1.0")
	addLowerFlag(cmd, &lowers)
	return cmd
}
