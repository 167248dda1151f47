package main

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// oneLine makes an error message safe to print as one line of a terminal or a log: control characters (a newline
// in a path, an escape sequence) and bytes that are not UTF-8 are written as Go escapes (\n, \x1b, \xff), the
// rest is kept. Messages quote user input (paths, option values), which may hold anything but NUL.
func oneLine(msg string) string {
	if !needsEscape(msg) {
		return msg
	}
	var b strings.Builder
	for i := 0; i < len(msg); {
		r, size := utf8.DecodeRuneInString(msg[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, msg[i])
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\t':
			b.WriteString(`\t`)
		case r == '\r':
			b.WriteString(`\r`)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, r)
		case r >= 0x80 && r < 0xa0: // C1 controls: U+009B is a terminal's CSI
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(msg[i : i+size])
		}
		i += size
	}
	return b.String()
}

// needsEscape reports whether oneLine would change msg.
func needsEscape(msg string) bool {
	if !utf8.ValidString(msg) {
		return true
	}
	for _, r := range msg {
		if r < 0x20 || r == 0x7f || r >= 0x80 && r < 0xa0 {
			return true
		}
	}
	return false
}
