// Command seconds prints a Go duration ("1h", "90m") as whole seconds, for the Makefile's stress target.
package main

import (
	"fmt"
	"os"
	"time"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: seconds DURATION")
		os.Exit(2)
	}
	d, err := time.ParseDuration(os.Args[1])
	if err != nil || d <= 0 {
		fmt.Fprintf(os.Stderr, "seconds: %q is not a positive duration such as 1h or 90m\n", os.Args[1])
		os.Exit(2)
	}
	fmt.Println(int(d.Seconds()))
}
