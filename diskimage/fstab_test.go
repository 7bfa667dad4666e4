package diskimage

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestParseFstab(t *testing.T) {
	text := `# /etc/fstab
UUID=1111-aaaa / ext4 errors=remount-ro 0 1

  LABEL=my\040boot	/boot	ext4	defaults	0	2
/dev/vda4 /var\040data xfs defaults,nofail 0 2
/swapfile none swap sw 0 0
odd\\ /x
tmpfs /tmp
\777 /y\1 auto noauto\054ro
`
	es, err := ParseFstab(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := []FstabEntry{
		{Spec: "UUID=1111-aaaa", File: "/", Type: "ext4", Options: []string{"errors=remount-ro"}, Line: 2},
		{Spec: "LABEL=my boot", File: "/boot", Type: "ext4", Options: []string{"defaults"}, Line: 4},
		{Spec: "/dev/vda4", File: "/var data", Type: "xfs", Options: []string{"defaults", "nofail"}, Line: 5},
		{Spec: "/swapfile", File: "none", Type: "swap", Options: []string{"sw"}, Line: 6},
		{Spec: `odd\\`, File: "/x", Type: "auto", Line: 7},
		{Spec: "tmpfs", File: "/tmp", Type: "auto", Line: 8},
		{Spec: `\777`, File: `/y\1`, Type: "auto", Options: []string{"noauto", "ro"}, Line: 9},
	}
	if !reflect.DeepEqual(es, want) {
		t.Errorf("ParseFstab:\n got %+v\nwant %+v", es, want)
	}
	if !es[2].HasOption("nofail") || es[2].HasOption("noauto") || es[5].HasOption("") {
		t.Errorf("HasOption on %+v / %+v", es[2], es[5])
	}

	// A line that is not an entry is skipped and named; the rest is read.
	es, err = ParseFstab(strings.NewReader("UUID=a / ext4\nlonely\nbroken\nUUID=b /home ext4\n"))
	if !errors.Is(err, ErrBadFstabLine) || !strings.Contains(err.Error(), "line 2") || !strings.Contains(err.Error(), `"lonely"`) {
		t.Errorf("bad line: %v", err)
	}
	if len(es) != 2 || es[1].File != "/home" || es[1].Line != 4 {
		t.Errorf("entries around a bad line: %+v", es)
	}

	// A line too long for the scanner is an error, without entries.
	es, err = ParseFstab(strings.NewReader("UUID=a / ext4\n" + strings.Repeat("x", 2<<20) + " /\n"))
	if err == nil || errors.Is(err, ErrBadFstabLine) || es != nil {
		t.Errorf("long line: %v, %v", es, err)
	}
}
