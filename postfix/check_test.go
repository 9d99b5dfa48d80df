package postfix

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestStageChecksEveryService: past the checkSample services "postfix
// check" sees whole, every vipmilter service is still read whole by
// postconf: a malformed one fails the apply and an override Postfix does
// not know is warned about, wherever it is in the list.
func TestStageChecksEveryService(t *testing.T) {
	needPostfix(t)
	dir := privateDir(t, "")
	line := func(i int) string {
		return fmt.Sprintf("vip_b%d unix - - n - - smtp -o syslog_name=postfix/vip_b%d -o smtp_bind_address=127.0.%d.%d -o smtp_bind_address_enforce=yes", i, i, i/250, i%250+1)
	}
	tests := []struct {
		name string
		bad  map[int]string // index -> replacement line
		err  string
		warn string
	}{
		{name: "all well-formed"},
		{name: "malformed column after the sample", bad: map[int]string{checkSample + 40: "vip_bad unix - - x - - smtp"}, err: `invalid chroot field "x"`},
		// Overrides past the sample were invisible to the check before.
		{name: "unknown override after the sample", bad: map[int]string{checkSample + 1: "vip_u unix - - n - - smtp -o syslog_name=postfix/vip_u -o smtp_no_such_param=1"}, warn: "unused parameter: smtp_no_such_param=1"},
		{name: "malformed override in the last batch", bad: map[int]string{2*checkSample + 9: "vip_m unix - - n - - smtp -o syslog_name=postfix/vip_m -o { smtp_helo_name = x"}, warn: "missing '}'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := &edits{owned: map[string]bool{}}
			for i := range 2*checkSample + 10 {
				l := line(i)
				if b, ok := tt.bad[i]; ok {
					l = b
				}
				e.lines = append(e.lines, l)
			}
			stage, err := os.MkdirTemp(dir, ".vipmilter-stage-")
			if err != nil {
				t.Fatal(err)
			}
			defer os.RemoveAll(stage)
			out, err := e.stage(context.Background(), dir, stage)
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("stage: %v\n%s", err, out)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("stage err = %v, want %q\n%s", err, tt.err, out)
			case tt.warn != "" && !strings.Contains(out, tt.warn):
				t.Fatalf("output lacks %q:\n%s", tt.warn, out)
			case tt.warn == "" && tt.err == "" && strings.Contains(out, "warning"):
				t.Fatalf("warnings for well-formed services:\n%s", out)
			}
		})
	}
}
