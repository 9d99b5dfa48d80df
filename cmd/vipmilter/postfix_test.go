package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// postfixDir is a private Postfix configuration directory (testenv.Postfix,
// not started) that sends only; extraMain holds more main.cf lines.
func postfixDir(t *testing.T, extraMain string) string {
	t.Helper()
	return testenv.NewTestPostfix(t, nil, "mydestination =", extraMain).Dir
}

func loadable(t *testing.T, run func() int) (code int) {
	t.Helper()
	return run()
}

func TestCmdPostfix(t *testing.T) {
	bindings := `Milter_Listen = "inet:127.0.0.1:8894"
Binding_Header_Key = "KEYFILE"
Binding "a" {
  Bind_Address  = 127.0.0.2
  EHLO_Hostname = a.test
}
`
	tests := []struct {
		name      string
		main      string
		args      []string
		code      int
		conf      string // more binding-file lines
		script    string // Sieve script (Sieve_Script set when not "")
		stdout    string
		notStdout string
		stderr    string
		unchanged bool
		noMain    bool
		relative  bool
	}{
		{name: "dry run shows the transport", args: []string{"--dry-run"}, stdout: "+ vip_a unix", unchanged: true},
		{name: "local domains refused", main: "virtual_mailbox_domains = example.net\n", code: 1, stderr: "delivers mail locally", unchanged: true},
		{name: "local mydestination refused", main: "mydestination = example.net, localhost\n", code: 1, stderr: "delivers mail locally", unchanged: true},
		// Debian's "Internet Site" writes the stock text out; with its own
		// myhostname it is still the default, not a local domain.
		{name: "stock mydestination written out", main: "myhostname = mta.example.net\nmydestination = $myhostname, localhost.$mydomain, localhost\n", args: []string{"--dry-run"}, stdout: "+ vip_a unix", unchanged: true},
		{name: "stray argument", args: []string{"extra"}, code: 2, stderr: "unexpected arguments", unchanged: true},
		{name: "no main.cf: say what to do", noMain: true, code: 1, stderr: "has no main.cf: this Postfix is not configured yet", unchanged: true},
		{name: "relative config dir renders absolute paths", conf: "Hook = milter\n", relative: true, args: []string{"--dry-run"}, stdout: "milter_header_checks = regexp:/", unchanged: true},
		{name: "Match_Domain only: no milter, no policy service", args: []string{"--dry-run"}, stdout: "hook: none (no Sieve script",
			notStdout: "milters =", unchanged: true},
		{name: "envelope-only script: the policy service, the milter for sendmail only", args: []string{"--dry-run"},
			script: "require \"envelope\";\nif envelope :domain :is \"from\" \"a.test\" { keep; }\n",
			stdout: "+ smtpd_data_restrictions = check_policy_service { inet:127.0.0.1:8896, default_action=DUNNO }\n", notStdout: "+ smtpd_milters", unchanged: true},
		{name: "envelope-only script: non_smtpd_milters", args: []string{"--dry-run"},
			script: "require \"envelope\";\nif envelope :domain :is \"from\" \"a.test\" { keep; }\n",
			stdout: "+ non_smtpd_milters = { inet:127.0.0.1:8894, default_action=accept }\n", unchanged: true},
		{name: "header test: the milter", args: []string{"--dry-run"}, script: "if exists \"List-Id\" { keep; }\n",
			stdout: "+ smtpd_milters = { inet:127.0.0.1:8894, default_action=accept }\n", notStdout: "check_policy_service", unchanged: true},
		// main.cf.dist leaves setgid_group empty: postmap and postfix fail.
		{name: "broken host: nothing changes, Postfix's reason shown", main: "setgid_group =\n", code: 1, stderr: "setgid_group", unchanged: true},
		{name: "broken host: dry run fails too", main: "setgid_group =\n", args: []string{"--dry-run"}, code: 1, stderr: "setgid_group", unchanged: true},
		{name: "daemon name per service", args: []string{"--dry-run", "--daemon-name", "smtp/inet=smtpd"}, stdout: "+ smtp/inet -o milter_macro_daemon_name=smtpd", unchanged: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := postfixDir(t, tt.main)
			if tt.noMain {
				os.Remove(filepath.Join(dir, "main.cf"))
			}
			conf := t.TempDir()
			file := filepath.Join(conf, "vipmilter.conf")
			body := strings.Replace(bindings, "KEYFILE", filepath.Join(conf, "key"), 1) + tt.conf
			if tt.script != "" {
				script := filepath.Join(conf, "policy.sieve")
				if err := os.WriteFile(script, []byte(tt.script), 0o644); err != nil {
					t.Fatal(err)
				}
				body = fmt.Sprintf("Sieve_Script = %q\n", script) + body
			}
			if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
			before := snapshotDir(t, dir)
			var stdout, stderr bytes.Buffer
			c := &cli{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr}
			cdir := dir
			if tt.relative {
				wd, _ := os.Getwd()
				t.Cleanup(func() { os.Chdir(wd) })
				os.Chdir(filepath.Dir(dir))
				cdir = filepath.Base(dir)
			}
			args := append([]string{"postfix", "-c", file, "--config-dir", cdir}, tt.args...)
			code := loadable(t, func() int { return c.main(args) })
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) {
				t.Fatalf("stdout:\n%s\nstderr:\n%s\nwant %q / %q", stdout.String(), stderr.String(), tt.stdout, tt.stderr)
			}
			if tt.notStdout != "" && strings.Contains(stdout.String(), tt.notStdout) {
				t.Fatalf("stdout has %q:\n%s", tt.notStdout, stdout.String())
			}
			if after := snapshotDir(t, dir); tt.unchanged && after != before {
				t.Fatalf("config directory changed:\nbefore:\n%s\nafter:\n%s", before, after)
			}
		})
	}
}

// snapshotDir is every file name and content under dir, queue and data
// directories aside.
func snapshotDir(t *testing.T, dir string) string {
	t.Helper()
	var b strings.Builder
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() && (d.Name() == "queue" || d.Name() == "data") {
			return filepath.SkipDir
		}
		if !d.IsDir() {
			c, _ := os.ReadFile(p)
			fmt.Fprintf(&b, "== %s\n%s", p, c)
		}
		return nil
	})
	return b.String()
}

// TestCheckPostfixSide: check says when the Postfix side lags behind the
// binding file (never rendered, or rendered from an older file) and is
// silent once "vipmilter postfix" has run on the current one.
func TestCheckPostfixSide(t *testing.T) {
	dir := postfixDir(t, "")
	conf := t.TempDir()
	file := filepath.Join(conf, "vipmilter.conf")
	write := func(extra string) {
		t.Helper()
		body := fmt.Sprintf("Binding_Header_Key = %q\nBinding \"a\" {\n  Bind_Address = 127.0.0.2\n}\n%s", filepath.Join(conf, "key"), extra)
		if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	check := func() string {
		t.Helper()
		code, out, errOut := run("check", "-c", file, "--postfix-dir", dir)
		if code != 0 {
			t.Fatalf("check: exit %d\n%s%s", code, out, errOut)
		}
		return out
	}
	write("")
	steps := []struct {
		name  string
		do    func()
		stale string // "" = must say nothing about Postfix
	}{
		{"never rendered", func() {}, "has not been run on it"},
		{"rendered", func() {
			if code, out, errOut := run("postfix", "-c", file, "--config-dir", dir, "--no-reload"); code != 0 {
				t.Fatalf("postfix: exit %d\n%s%s", code, out, errOut)
			}
		}, ""},
		{"binding added since", func() { write("Binding \"b\" {\n  Bind_Address = 127.0.0.3\n}\n") }, "rendered from another version"},
	}
	for _, s := range steps {
		s.do()
		out := check()
		switch {
		case s.stale == "" && strings.Contains(out, "postfix:"):
			t.Errorf("%s: check says the Postfix side is stale:\n%s", s.name, out)
		case s.stale != "" && !strings.Contains(out, "warning: postfix: ") || !strings.Contains(out, s.stale):
			t.Errorf("%s: check output lacks %q:\n%s", s.name, s.stale, out)
		}
	}
}
