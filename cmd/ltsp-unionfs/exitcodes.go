package main

import (
	"errors"
	"fmt"
)

// Exit codes. They are part of the command's interface (scripts, systemd units and mount(8) read them) and are
// listed in the help text and README; never renumber one.
const (
	exitOK         = 0 // success
	exitError      = 1 // an unexpected error
	exitUsage      = 2 // bad command line: unknown flag or option, missing or malformed argument
	exitLayer      = 3 // a layer directory is missing, not a directory, unreadable, unwritable or overlapping
	exitMountPoint = 4 // the mount point is missing, not a directory or inside the upper layer
	exitMount      = 5 // the kernel (or fusermount3) refused the mount
	exitDaemon     = 6 // the background daemon died before the mount was live
	exitProblems   = 7 // check: the upper layer has problems that were not repaired
	exitBusy       = 8 // the upper layer is in use by a mount and the command would change or misread it
)

// exitCodesHelp documents the exit codes in the command's help text.
const exitCodesHelp = `Exit status:
  0  success (for a mount: the mount is live and answering)
  1  unexpected error
  2  usage error: unknown flag or mount option, missing or malformed argument
  3  a layer directory is missing, not a directory, unreadable, unwritable or overlaps another
  4  the mount point is missing, not a directory or inside the upper layer
  5  the kernel (or fusermount3 for a non-root user) refused the mount
  6  the background daemon died before the mount was live
  7  check: the upper layer has problems that were not repaired
  8  the upper layer is in use by a mount (convert, merge and check --repair refuse)`

// codedError is an error that says which exit code it warrants.
type codedError struct {
	code int
	err  error
}

func (e *codedError) Error() string { return e.err.Error() }
func (e *codedError) Unwrap() error { return e.err }

// withCode marks err with an exit code; a nil err stays nil.
func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &codedError{code: code, err: err}
}

// usageErrorf returns a usage error (exit code 2) with a formatted message.
func usageErrorf(format string, args ...any) error {
	return withCode(exitUsage, fmt.Errorf(format, args...))
}

// exitCode returns the exit code err warrants: its own if it has one, else exitError.
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var ce *codedError
	if errors.As(err, &ce) {
		return ce.code
	}
	return exitError
}
