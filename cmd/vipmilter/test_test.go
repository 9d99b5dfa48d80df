package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

// needLoad makes sure the example the tests rely on still loads.
func needLoad(t *testing.T) {
	t.Helper()
	if _, err := config.Load("../../examples/vipmilter.conf"); err != nil {
		t.Fatalf("examples/vipmilter.conf: %v", err)
	}
}

func run(args ...string) (code int, stdout, stderr string) {
	var o, e bytes.Buffer
	c := &cli{stdin: strings.NewReader(""), stdout: &o, stderr: &e}
	code = c.main(args)
	return code, o.String(), e.String()
}

func TestTestCommandJSON(t *testing.T) {
	needLoad(t)
	dir := t.TempDir()
	listMsg := filepath.Join(dir, "list.eml")
	if err := os.WriteFile(listMsg, []byte("From: a@example.com\r\nList-Id: <news.example.org>\r\nSubject: hi\r\n\r\nbody\r\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := "../../examples/vipmilter.conf"
	tests := []struct {
		name       string
		args       []string
		wantBind   string
		wantGroup  string
		wantReason string
		wantRules  string
	}{
		{"auth", []string{"--from", "a@x.example", "--to", "r@d.example", "--auth", "marketing"}, "Newsletters", "", "script", "script"},
		{"list header from file", []string{"--from", "a@x.example", "--to", "r@d.example", listMsg}, "Newsletters", "", "script", "script"},
		{"group", []string{"--from", "a@bulk.example.org", "--to", "r@d.example"}, "", "Pool", "script", "script,group"},
		{"match_domain", []string{"--from", "a@example.com", "--to", "r@d.example"}, "Example", "", "match_domain", "match_domain"},
		{"fallback", []string{"--from", "a@other.example", "--to", "r@d.example", "--to", "s@e.example"}, "default", "", "fallback", "fallback"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := run(append([]string{"test", "-c", conf, "--json"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			var r struct {
				Binding, Group, Reason, Action string
				Trace                          []struct{ Rule, Detail string }
			}
			if err := json.Unmarshal([]byte(out), &r); err != nil {
				t.Fatalf("%v: %q", err, out)
			}
			var rules []string
			for _, s := range r.Trace {
				rules = append(rules, s.Rule)
			}
			if (tt.wantBind != "" && r.Binding != tt.wantBind) || r.Group != tt.wantGroup || r.Reason != tt.wantReason ||
				r.Action != "accept" || strings.Join(rules, ",") != tt.wantRules {
				t.Errorf("got %+v", r)
			}
		})
	}
}

func TestTestCommandText(t *testing.T) {
	needLoad(t)
	tests := []struct {
		name     string
		args     []string
		stdin    string
		wantCode int
		wantOut  []string
	}{
		{"text output", []string{"--from", "a@example.com", "--to", "r@d.example"}, "", 0, []string{"binding: Example\n", "reason:  match_domain\n", "action:  accept\n", "trace:\n", "  match_domain: example.com -> Example\n"}},
		{"stdin message", []string{"--from", "a@x.example", "--to", "r@d.example", "-"}, "List-Id: <l>\n\nhi\n", 0, []string{"binding: Newsletters\n"}},
		{"no recipient", []string{"--from", "a@x.example"}, "", 2, nil},
		{"bad config", []string{"-c", "/nonexistent/vipmilter.conf", "--from", "a@x.example", "--to", "r@d.example"}, "", 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o, e bytes.Buffer
			c := &cli{stdin: strings.NewReader(tt.stdin), stdout: &o, stderr: &e}
			args := append([]string{"test", "-c", "../../examples/vipmilter.conf"}, tt.args...)
			if code := c.main(args); code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %s", code, tt.wantCode, e.String())
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(o.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, o.String())
				}
			}
		})
	}
}
