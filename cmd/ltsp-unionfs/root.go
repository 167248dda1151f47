package main

import (
	"fmt"

	"github.com/spf13/cobra"
)

const rootLong = `ltsp-unionfs merges read-only directories (the lower layers) with one writable directory (the
upper layer) and mounts the merge, with the semantics of kernel overlayfs: changes to lower files are copied up
into the upper layer, deletions are recorded there as whiteouts, and the lower layers are never written.

It is made to be the root filesystem of diskless LTSP clients (a read-only image below, a tmpfs above), and
replaces unionfs-fuse.

Layers:
  ro=DIR[:DIR...]   read-only layers, topmost first (-o lowerdir=DIR[:DIR...] is the same)
  rw=DIR            the writable layer (-o upperdir=DIR is the same); without it, as root, an
                    anonymous tmpfs (-o size=SIZE) that vanishes with the mount
  A=RW:B=RO         unionfs-fuse's branch list (with -o cow, dirs=, chroot=, ...)

Without --foreground the command returns once the mount is live, and the daemon serves it until it is
unmounted (umount MOUNTPOINT) or gets SIGTERM or SIGINT, which unmount it.

Mount options (-o NAME[=VALUE],... or --NAME[=VALUE]):
  %s
  Unknown options are refused. mount(8)'s x-* and comment= options are accepted and ignored.

%s`

// newRootCommand builds the command line: the root command mounts, subcommands do everything else.
func newRootCommand(notify *notifier) *cobra.Command {
	o := &mountOptions{entryTimeout: -1, attrTimeout: -1, negTimeout: -1, ptMinSize: -1}
	var optionLists []string
	cmd := &cobra.Command{
		Use:   "ltsp-unionfs [flags] ro=DIR[:DIR...] rw=DIR MOUNTPOINT",
		Short: "Mount a union of read-only layers and a writable layer, as overlayfs does",
		Long:  fmt.Sprintf(rootLong, optionNames(), exitCodesHelp),
		Example: `  ltsp-unionfs ro=/srv/image rw=/run/changes /mnt/root
  ltsp-unionfs -o allow_other ro=/a:/b rw=/tmp/up /mnt/union
  mount -t fuse.ltsp-unionfs union /mnt -o lowerdir=/a,upperdir=/b
  ltsp-unionfs -o size=1G ro=/ /mnt/scratch
  ltsp-unionfs -o cow /cow=RW:/rofs=RO /sysroot`,
		Args:          cobra.ArbitraryArgs,
		SilenceErrors: true,
		SilenceUsage:  true,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && len(optionLists) == 0 {
				return cmd.Help()
			}
			for _, l := range optionLists {
				if err := applyOptionList(cmd.Flags(), l, o); err != nil {
					return err
				}
			}
			if err := parseArgs(args, o); err != nil {
				return err
			}
			if o.fake {
				return nil // mount -f: everything but the mount
			}
			return runMount(o, notify)
		},
	}
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return withCode(exitUsage, err)
	})
	flags := cmd.Flags()
	flags.SetNormalizeFunc(normalizeOptionName)
	flags.SortFlags = false
	flags.BoolVarP(&o.foreground, "foreground", "f", false, "stay in the foreground and log to stderr")
	flags.BoolVarP(&o.debug, "debug", "d", false, "log every FUSE request (implies nothing else)")
	flags.StringArrayVarP(&optionLists, "options", "o", nil, "mount options, comma-separated (see above)")
	addMountFlags(flags, o)
	flags.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile to `file` when unmounted (for developers)")
	flags.StringVar(&o.memProfile, "memprofile", "", "write a heap profile to `file` when unmounted (for developers)")
	flags.BoolVar(&o.fake, "fake", false, "check the command line, do not mount (mount(8)'s -f)")
	flags.BoolVar(&o.sloppy, "sloppy", false, "ignore unknown mount options (mount(8)'s -s)")
	flags.MarkHidden("fake")
	flags.MarkHidden("sloppy")
	flags.MarkHidden("cpuprofile")
	flags.MarkHidden("memprofile")
	cmd.AddCommand(newStatsCommand(), newVersionCommand(), newDiffCommand(), newMergeCommand(),
		newCheckCommand(), newConvertCommand())
	// gen completion writes the scripts; cobra's own completion command would be a second way to the same.
	cmd.CompletionOptions.DisableDefaultCmd = true
	cmd.AddCommand(newGenCommand())
	return cmd
}
