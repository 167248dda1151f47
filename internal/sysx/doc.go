// Package sysx holds the system calls ltsp-unionfs makes on its layers, in forms that cannot be steered outside a
// layer.
//
// Every function takes a directory file descriptor and a single path component. The component is never followed
// if it is a symbolic link, so a name inside a layer can never make the daemon touch a file outside it, whatever a
// user does to the layer while a call runs. Names are checked: "", ".", ".." and anything holding a slash are
// refused with EINVAL, except where a function documents that "" means the directory itself.
//
// Calls that the kernel interrupts with EINTR (NFS lowers do) are retried. Errors are the raw syscall.Errno values,
// so callers can compare them directly; callers that need context wrap them.
package sysx
