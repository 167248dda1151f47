package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/ltsp/ltsp-unionfs/internal/inuse"
	"github.com/ltsp/ltsp-unionfs/internal/progress"
	"github.com/ltsp/ltsp-unionfs/stack"
	"github.com/ltsp/ltsp-unionfs/tools/check"
	"github.com/ltsp/ltsp-unionfs/tools/convert"
)

func newCheckCommand() *cobra.Command {
	var asJSON, repair bool
	var lowers []string
	cmd := &cobra.Command{
		Use:   "check UPPER [--lower DIR]... [--repair] [--json]",
		Short: "Check an upper layer's markers for consistency, and repair what is safe",
		Long: `Check the upper layer UPPER (of ltsp-unionfs, kernel overlayfs, aufs or unionfs-fuse) offline and list
its problems, one per line:

  temp-object             a leftover temporary object of an interrupted copy-up (` + "`.wh..wh.ltsp-tmp.*`" + `)
  mixed-formats           markers of more than one whiteout format in one upper (see convert)
  whiteout-hides-nothing  a whiteout of a name no lower layer has there (needs --lower)
  redundant-whiteout      an aufs or unionfs-fuse whiteout beside an upper file of the same name
  metacopy-data-gone      a metadata-only copy whose lower data is gone (needs --lower)
  bad-redirect            a renamed directory's redirect that is malformed or leads nowhere (needs --lower)
  orphan-meta             unionfs-fuse markers below a directory that exists in no layer (needs --lower)
  unknown-meta-entry      an entry of a unionfs-fuse meta tree that is no marker
  opaque-non-directory    an overlay opaque marker on a non-directory

--lower names the lower layers, topmost first (repeat it); without them the checks that depend on what lies
below are skipped. --repair fixes what can be fixed without changing what the union shows: it removes temporary
objects, whiteouts that hide nothing, redundant whiteouts, orphan markers and misplaced opaque markers, and
makes a directory whose redirect leads nowhere opaque; it prints what it did and leaves the rest reported. It
refuses while a mount uses UPPER. Symlinks in the layers are never followed.

` + exitCodesHelp,
		Example: `  ltsp-unionfs check /var/lib/changes
  ltsp-unionfs check --lower /srv/image /var/lib/changes
  ltsp-unionfs check --repair --lower /srv/image /var/lib/changes
  ltsp-unionfs check --json --lower /a --lower /b /tmp/up | jq '.problems[].kind'`,
		Args: exactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ls, err := splitLowers(lowers)
			if err != nil {
				return err
			}
			prog := progress.New(cmd.ErrOrStderr(), "upper objects checked")
			rep, err := check.Check(args[0], check.Options{Lowers: ls, Repair: repair, Progress: prog.Add})
			prog.Done()
			if err != nil {
				return toolError(err)
			}
			if asJSON {
				out, err := json.MarshalIndent(rep, "", "  ")
				if err != nil {
					return err
				}
				fmt.Fprintln(cmd.OutOrStdout(), string(out))
			} else {
				rep.Print(cmd.OutOrStdout())
			}
			if n := rep.Unrepaired(); n > 0 {
				return withCode(exitProblems, fmt.Errorf("%s: %d problems not repaired", args[0], n))
			}
			return nil
		},
	}
	addLowerFlag(cmd, &lowers)
	flags := cmd.Flags()
	flags.BoolVar(&repair, "repair", false, "fix what can be fixed without changing the merged view")
	flags.BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}

// exactArgs is cobra.ExactArgs with the usage exit code.
func exactArgs(n int) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		return withCode(exitUsage, cobra.ExactArgs(n)(cmd, args))
	}
}

// toolError gives the errors of the offline tools (diff, merge, check, convert) their exit codes: a layer that
// cannot be used (or read: EACCES), an upper in use, a conversion that needs the lower layers.
func toolError(err error) error {
	var le *stack.LayerError
	var be *inuse.BusyError
	var ne *convert.NeedLowersError
	switch {
	case errors.As(err, &le), errors.Is(err, syscall.EACCES):
		return withCode(exitLayer, err)
	case errors.As(err, &be):
		return withCode(exitBusy, err)
	case errors.As(err, &ne):
		return withCode(exitUsage, err)
	}
	return err
}

// addLowerFlag gives a tool the --lower flag, the same for every tool: repeated, or DIR:DIR..., topmost first
// (see splitLowers).
func addLowerFlag(cmd *cobra.Command, lowers *[]string) {
	cmd.Flags().StringArrayVar(lowers, "lower", nil, "a lower layer `DIR` (topmost first; repeat, or DIR:DIR...)")
}
