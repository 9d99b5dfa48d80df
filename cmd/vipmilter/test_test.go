package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/messagetable"
	"github.com/vipmilter/vipmilter/sieve"
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
		{"group", []string{"--all-live", "--from", "a@bulk.example.org", "--to", "r@d.example"}, "", "Pool", "script", "script,group"},
		// The example's addresses are documentation addresses, on no host:
		// like the milter, test passes over members it cannot send from.
		{"group without host addresses", []string{"--from", "a@bulk.example.org", "--to", "r@d.example"}, "default", "", "policy_error", "script,error,fallback"},
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
		{"flags after the file", []string{"-", "--from", "a@x.example", "--to", "r@d.example"}, "List-Id: <l>\n\nhi\n", 0, []string{"binding: Newsletters\n"}},
		{"file after --", []string{"--from", "a@x.example", "--to", "r@d.example", "--", "-"}, "List-Id: <l>\n\nhi\n", 0, []string{"binding: Newsletters\n"}},
		{"two files", []string{"a.eml", "--from", "a@x.example", "--to", "r@d.example", "b.eml"}, "", 2, nil},
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

// TestTestCommandTable runs every row of the shared message table through
// "vipmilter test" (message file, envelope flags) and through the policy
// directly (sieve.Message.Parse), and checks that both give the row's
// binding and split, message by message.
func TestTestCommandTable(t *testing.T) {
	for _, row := range messagetable.Rows {
		t.Run(row.Name, func(t *testing.T) {
			dir := t.TempDir()
			conf, err := row.WriteFiles(dir, "")
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(conf)
			if err != nil {
				t.Fatal(err)
			}
			pol, err := sieve.New(cfg, sieve.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for i, tm := range row.Messages {
				file := filepath.Join(dir, fmt.Sprintf("msg%d.eml", i+1))
				if err := os.WriteFile(file, []byte(tm.Raw), 0o644); err != nil {
					t.Fatal(err)
				}
				e := tm.Envelope
				args := []string{"test", "-c", conf, "--json", "--all-live", "--from", e.From, "--helo", e.Helo,
					"--remote-ip", e.ClientAddr, "--remote-host", e.ClientName, "--auth", e.Auth}
				for _, to := range e.To {
					args = append(args, "--to", to)
				}
				code, out, errOut := run(append(args, file)...)
				if code != 0 {
					t.Fatalf("message %d: exit %d: %s", i+1, code, errOut)
				}
				var got struct {
					Binding string
					Split   bool
				}
				if err := json.Unmarshal([]byte(out), &got); err != nil {
					t.Fatalf("message %d: %v: %q", i+1, err, out)
				}
				m := &sieve.Message{From: e.From, To: e.To, Helo: e.Helo, RemoteIP: e.ClientAddr, RemoteHost: e.ClientName, Auth: e.Auth}
				if err := m.Parse([]byte(tm.Raw), pol.Needs().Body, cfg.MaxBodyBytes); err != nil {
					t.Fatal(err)
				}
				direct := pol.Decide(context.Background(), m)
				if got.Binding != tm.Binding || got.Split != tm.Split {
					t.Errorf("message %d: test says %q split %v, want %q split %v:\n%s", i+1, got.Binding, got.Split, tm.Binding, tm.Split, out)
				}
				if direct.Binding != got.Binding || direct.Split != got.Split {
					t.Errorf("message %d: policy says %q split %v, test %q split %v", i+1, direct.Binding, direct.Split, got.Binding, got.Split)
				}
			}
		})
	}
}

// TestTestCommandScriptErrors: test refuses a script check would refuse,
// with the place and vipmilter's words.
func TestTestCommandScriptErrors(t *testing.T) {
	tests := []struct {
		name, script, want string
	}{
		{"undeclared binding", "require \"variables\";\nset \"binding\" \"Newsletter\";\n", `error: policy.sieve:2:15: binding "Newsletter" is not declared in vipmilter.conf (did you mean "Newsletters"?)`},
		{"list member", "require \"variables\";\nset \"binding\" \"B, Pol\";\n", `error: policy.sieve:2:15: binding "Pol" is not declared in vipmilter.conf (did you mean "Pool"?)`},
		{"unsupported extension", "require [\"variables\", \"vacation\"];\n", `error: policy.sieve:1:9: extension "vacation" is not supported`},
		{"missing require", "set \"binding\" \"B\";\n", `error: policy.sieve:1:1: command "set" needs require "variables"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conf, err := messagetable.Row{Name: tt.name, Script: tt.script}.WriteFiles(t.TempDir(), "")
			if err != nil {
				t.Fatal(err)
			}
			code, _, errOut := run("test", "-c", conf, "--from", "a@x.example", "--to", "r@d.example")
			// Files are named by absolute path, so they open from anywhere.
			errOut = strings.ReplaceAll(errOut, filepath.Dir(conf)+string(filepath.Separator), "")
			if code != 1 || !strings.Contains(errOut, tt.want) || strings.Contains(errOut, "Load") {
				t.Errorf("exit %d, stderr %q; want 1 and %q", code, errOut, tt.want)
			}
		})
	}
}
