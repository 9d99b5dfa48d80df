package sieve

import (
	"context"
	"fmt"
	"net/textproto"
	"os"
	"reflect"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

// TestLiteralBindingFastPath: scripts that only assign literals to binding
// run as a flag-based copy, and every decision equals the one the script as
// written gives; any other use of variables keeps the script as written.
func TestLiteralBindingFastPath(t *testing.T) {
	const vars = `require ["envelope", "variables", "reject"];` + "\n"
	tests := []struct {
		name   string
		script string
		fast   bool
	}{
		{"literal sets", vars + `if envelope :domain :is "from" "b.example" { set "binding" "B"; stop; }
if header :contains "Subject" "grp" { set "binding" "G"; } elsif header :contains "Subject" "list" { set "BINDING" "B,C"; } else { set "binding" "C"; }
if header :contains "Subject" "none" { set "binding" ""; }
if header :contains "Subject" "no" { reject "not from here"; }`, true},
		{"nested anyof", vars + `if anyof (header :is "X-A" "1", allof (exists "X-B", not envelope :is "to" "q@dest.example")) { set "binding" "A"; }`, true},
		{"no variables required", `require "envelope"; if envelope :is "from" "x@y" { keep; }`, false},
		{"variable reference", vars + `set "binding" "B"; if header :contains "Subject" "${binding}" { set "binding" "C"; }`, false},
		{"match variable", vars + `if header :matches "Subject" "* grp" { set "binding" "${1}"; }`, false},
		{"modifier", vars + `set :upper "binding" "c";`, false},
		{"other variable", vars + `set "x" "1"; set "binding" "B";`, false},
		{"string test", vars + `set "binding" "B"; if string :is "a" "a" { set "binding" "C"; }`, false},
		{"script uses flags", `require ["variables", "imap4flags"]; setflag "x"; set "binding" "B";`, false},
	}
	subjects := []string{"plain", "grp", "list", "none", "bad", "spaced", "no", "grp none"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, tt.script, true, config.PolicyErrorDefault)
			fast := mustPolicy(t, cfg, Options{})
			if fast.flagBinding != tt.fast {
				t.Fatalf("fast path = %v, want %v", fast.flagBinding, tt.fast)
			}
			// The reference runs the script exactly as written.
			ref := mustPolicy(t, cfg, Options{})
			src, err := os.ReadFile(cfg.SieveScript)
			if err != nil {
				t.Fatal(err)
			}
			if ref.script, _, err = compile(cfg.SieveScript, src, cfg); err != nil {
				t.Fatal(err)
			}
			ref.flagBinding = false
			for i, subj := range subjects {
				for _, from := range []string{"s@b.example", "s@a.example", "s@z.example"} {
					m := &Message{From: from, To: []string{fmt.Sprintf("r@d%d.example", i)},
						Header: textproto.MIMEHeader{"Subject": {subj}, "X-B": {"1"}}}
					got, want := fast.Decide(context.Background(), m), ref.Decide(context.Background(), m)
					got.Elapsed, want.Elapsed = 0, 0
					if (got.Err == nil) != (want.Err == nil) {
						t.Errorf("%s from %s: error %v, script as written %v", subj, from, got.Err, want.Err)
					}
					got.Err, want.Err = nil, nil
					bc := func(d Decision) bool { return d.Binding == "B" || d.Binding == "C" }
					if bc(got) && bc(want) && got.Binding != want.Binding {
						// The comma list "B,C" picks at random: the pick
						// may differ, the way it was reached may not.
						if got.Reason != want.Reason || rules(got) != rules(want) {
							t.Errorf("%s from %s: %s by %s, script as written %s by %s", subj, from, got.Binding, rules(got), want.Binding, rules(want))
						}
						continue
					}
					if !reflect.DeepEqual(got, want) {
						t.Errorf("%s from %s:\n got %+v\nwant %+v", subj, from, got, want)
					}
				}
			}
		})
	}
}
