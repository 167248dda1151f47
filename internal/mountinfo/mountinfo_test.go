package mountinfo

import (
	"reflect"
	"strings"
	"testing"
)

func TestUnescape(t *testing.T) {
	for in, want := range map[string]string{
		`plain`: "plain", `a\040b`: "a b", `tab\011`: "tab\t", `nl\012x`: "nl\nx", `back\134slash`: `back\slash`,
		`\040lead`: " lead", `trail\`: `trail\`, `short\04`: `short\04`, `not\999oct`: `not\999oct`,
		`two\040\040`: "two  ",
	} {
		if got := Unescape(in); got != want {
			t.Errorf("Unescape(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParse(t *testing.T) {
	table := strings.Join([]string{
		"36 35 98:0 /mnt1 /mnt\\040two rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
		"malformed line without separator",
		"37 36 0:40 / /u rw - fuse.ltsp-unionfs ro=/l\\054x,rw=/u rw,user_id=0",
		"38 36 0:41 / /short - overlay",
	}, "\n")
	ms, err := Parse(strings.NewReader(table))
	if err != nil {
		t.Fatal(err)
	}
	want := []Mount{
		{MountPoint: "/mnt two", FSType: "ext3", Source: "/dev/root", Options: "rw,noatime", SuperOpts: "rw,errors=continue"},
		{MountPoint: "/u", FSType: "fuse.ltsp-unionfs", Source: "ro=/l,x,rw=/u", Options: "rw", SuperOpts: "rw,user_id=0"},
	}
	if !reflect.DeepEqual(ms, want) {
		t.Errorf("Parse:\n got %+v\nwant %+v", ms, want)
	}
}
