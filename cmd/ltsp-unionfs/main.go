// Command ltsp-unionfs mounts a union filesystem with overlayfs semantics over FUSE. See the README and
// `ltsp-unionfs --help`.
package main

import (
	"fmt"
	"os"
)

func main() {
	os.Exit(run())
}

// run executes the command line and returns the exit code. Errors are printed as one line, or sent to the
// waiting command when this process is the background daemon.
func run() int {
	notify := daemonNotifier()
	cmd := newRootCommand(notify)
	if isHelper(os.Args[0]) {
		args, err := helperArgs(os.Args[1:])
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %s\n", helperName, oneLine(err.Error()))
			return exitCode(err)
		}
		cmd.SetArgs(args)
	}
	err := cmd.Execute()
	if err == nil {
		return exitOK
	}
	if notify != nil {
		notify.fail(err)
	} else {
		fmt.Fprintf(os.Stderr, "ltsp-unionfs: %s\n", oneLine(err.Error()))
	}
	return exitCode(err)
}
