// Package tools holds, in its subpackages, the offline tools for upper layers, which the command runs as its
// diff, merge, check and convert subcommands: changes (diff and merge), check (consistency and repair) and
// convert (rewriting the markers in another format); check and convert walk an upper layer over its lowers with
// package layers. They read layers through package stack, as the daemon does, refuse an upper layer a union uses
// (package internal/inuse) and report unusable layers as *stack.LayerError.
package tools
