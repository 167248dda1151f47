package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/ltsp/ltsp-unionfs/unionfs"
)

func newStatsCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats MOUNTPOINT",
		Short: "Print the counters of the daemon serving a mount",
		Long: `Print the counters of the ltsp-unionfs daemon serving MOUNTPOINT: requests by operation, name lookups
in the upper and lower layers, copy-ups and their bytes, opens by FUSE passthrough and through the page cache,
and layer errors by errno. The counters come from the xattr ` + unionfs.StatsXattr + ` of the mount's root,
which any user who can read the root directory can read.

` + exitCodesHelp,
		Example: `  ltsp-unionfs stats /
  ltsp-unionfs stats --json /mnt/union | jq .lower_lookups`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, raw, err := readStats(args[0])
			if err != nil {
				return err
			}
			if asJSON {
				_, err := fmt.Fprintln(cmd.OutOrStdout(), string(raw))
				return err
			}
			printStats(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the counters as JSON")
	return cmd
}

// readStats reads the counters of the daemon serving mnt.
func readStats(mnt string) (unionfs.Stats, []byte, error) {
	var st unionfs.Stats
	buf := make([]byte, 64<<10)
	n, err := unix.Getxattr(mnt, unionfs.StatsXattr, buf)
	if errors.Is(err, syscall.ENODATA) || errors.Is(err, syscall.ENOTSUP) {
		return st, nil, withCode(exitMountPoint, fmt.Errorf("%s is not the root of an ltsp-unionfs mount", mnt))
	}
	if err != nil {
		return st, nil, withCode(exitMountPoint, fmt.Errorf("reading the counters of %s: %w", mnt, err))
	}
	if err := json.Unmarshal(buf[:n], &st); err != nil {
		return st, nil, fmt.Errorf("the counters of %s are not valid JSON: %w", mnt, err)
	}
	return st, buf[:n], nil
}

// printStats prints the counters for a person.
func printStats(w io.Writer, st unionfs.Stats) {
	mode := "through the page cache (no passthrough)"
	if st.Passthrough {
		mode = "FUSE passthrough where possible"
	}
	fmt.Fprintf(w, "reads and writes:     %s\n", mode)
	fmt.Fprintf(w, "opens:                %d passthrough, %d cached, %d retried after a copy-up\n",
		st.PassthroughOpens, st.CachedOpens, st.StaleRetries)
	fmt.Fprintf(w, "layer lookups:        %d upper, %d lower; %d layer directories read\n",
		st.UpperLookups, st.LowerLookups, st.LayerReaddirs)
	fmt.Fprintf(w, "copy-ups:             %d with data (%d bytes), %d metadata only, %d directories\n",
		st.CopyUps, st.CopyUpBytes, st.MetadataCopyUps, st.DirCopyUps)
	fmt.Fprintf(w, "daemon:               %d goroutines, %d open files, %.1f MiB resident\n",
		st.Goroutines, st.OpenFiles, float64(st.RSSBytes)/(1<<20))
	if st.Panics > 0 {
		fmt.Fprintf(w, "internal errors:      %d requests panicked and were answered EIO (a bug: see the log)\n", st.Panics)
	}
	fmt.Fprintln(w, "requests:")
	printCounts(w, st.Requests)
	if len(st.Replies) > 0 {
		fmt.Fprintln(w, "error replies (what programs were told):")
		printCounts(w, st.Replies)
	}
	if len(st.Errors) > 0 {
		fmt.Fprintln(w, "layer errors:")
		printCounts(w, st.Errors)
	}
}

func printCounts(w io.Writer, m map[string]uint64) {
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool {
		return m[names[i]] > m[names[j]] || m[names[i]] == m[names[j]] && names[i] < names[j]
	})
	for _, k := range names {
		fmt.Fprintf(w, "  %-16s %d\n", k, m[k])
	}
}
