package testenv

import (
	"fmt"
	"strings"
	"testing"
)

// recorder is a testing.TB that records Fatal and Skip instead of ending
// the test.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper()              {}
func (r *recorder) Fatal(args ...any)    { r.fatal = fmt.Sprint(args...) }
func (r *recorder) Skip(args ...any)     { r.skip = fmt.Sprint(args...) }
func (r *recorder) Skipf(string, ...any) { panic("unused") }

func TestRequire(t *testing.T) {
	there := Prereq{what: "there", ok: func() bool { return true }}
	gone := Prereq{what: "gone", hint: "install gone", ok: func() bool { return false }}
	for _, tc := range []struct {
		name, ci    string
		needs       []Prereq
		fatal, skip bool
	}{
		{"all there, CI", "true", []Prereq{there, All(there)}, false, false},
		{"missing, CI=true fails", "true", []Prereq{there, gone}, true, false},
		{"missing, CI=1 fails", "1", []Prereq{All(there, gone)}, true, false},
		{"missing, no CI skips", "", []Prereq{gone}, false, true},
		{"missing, CI=false skips", "false", []Prereq{gone}, false, true},
		{"missing command", "true", []Prereq{Command("vipmilter-no-such-command", "nothing")}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("CI", tc.ci)
			r := &recorder{TB: t}
			Require(r, tc.needs...)
			if (r.fatal != "") != tc.fatal || (r.skip != "") != tc.skip {
				t.Fatalf("fatal %q, skip %q; want fatal %v, skip %v", r.fatal, r.skip, tc.fatal, tc.skip)
			}
			if msg := r.fatal + r.skip; msg != "" && !strings.Contains(msg, "missing prerequisite:") {
				t.Errorf("message %q does not say what is missing", msg)
			}
			if strings.Contains(r.fatal+r.skip, "there") {
				t.Errorf("message names a present prerequisite: %q", r.fatal+r.skip)
			}
		})
	}
}
