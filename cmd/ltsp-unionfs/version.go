package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at build time: go build -ldflags "-X main.version=1.2.3". Without it the module version or VCS
// revision recorded by the Go toolchain is shown.
var version = ""

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the versions of ltsp-unionfs, go-fuse and Go",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			own, fuse := buildVersions()
			fmt.Fprintf(cmd.OutOrStdout(), "ltsp-unionfs %s\ngo-fuse %s\n%s %s/%s\n", own, fuse, runtime.Version(),
				runtime.GOOS, runtime.GOARCH)
			return nil
		},
	}
}

// buildVersions returns the version of this program and of the go-fuse it was built with.
func buildVersions() (own, fuse string) {
	own, fuse = version, "unknown"
	info, ok := debug.ReadBuildInfo()
	if !ok {
		if own == "" {
			own = "unknown"
		}
		return own, fuse
	}
	if own == "" {
		own = info.Main.Version
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" && (own == "" || own == "(devel)") {
				own = "(devel) " + s.Value
			}
		}
	}
	if own == "" {
		own = "(devel)"
	}
	for _, d := range info.Deps {
		if d.Path == "github.com/hanwen/go-fuse/v2" {
			fuse = d.Version
			if d.Replace != nil {
				fuse = d.Replace.Version + " (replaced)"
			}
		}
	}
	return own, fuse
}
