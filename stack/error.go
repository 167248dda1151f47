package stack

import "fmt"

// Error is a failure to read a layer: which layer, what was being done, on which name.
type Error struct {
	Layer int    // index in the Reader's layers
	Op    string // what failed, e.g. "lookup"
	Name  string // the name in its directory
	Err   error
}

func (e *Error) Error() string {
	return fmt.Sprintf("layer %d: %s %s: %v", e.Layer, e.Op, e.Name, e.Err)
}
func (e *Error) Unwrap() error { return e.Err }
