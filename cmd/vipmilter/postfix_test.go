package main

import (
	"bytes"
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
		stdout    string
		stderr    string
		unchanged bool
	}{
		{name: "dry run shows the transport", args: []string{"--dry-run"}, stdout: "+ vip_a unix", unchanged: true},
		{name: "local domains refused", main: "virtual_mailbox_domains = example.net\n", code: 1, stderr: "delivers mail locally", unchanged: true},
		{name: "stray argument", args: []string{"extra"}, code: 2, stderr: "unexpected arguments", unchanged: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := postfixDir(t, tt.main)
			file := filepath.Join(t.TempDir(), "vipmilter.conf")
			if err := os.WriteFile(file, []byte(bindings), 0o644); err != nil {
				t.Fatal(err)
			}
			before, _ := os.ReadFile(filepath.Join(dir, "master.cf"))
			var stdout, stderr bytes.Buffer
			c := &cli{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr}
			args := append([]string{"postfix", "-c", file, "--config-dir", dir}, tt.args...)
			code := loadable(t, func() int { return c.main(args) })
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.code, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), tt.stdout) || !strings.Contains(stderr.String(), tt.stderr) {
				t.Fatalf("stdout:\n%s\nstderr:\n%s\nwant %q / %q", stdout.String(), stderr.String(), tt.stdout, tt.stderr)
			}
			after, _ := os.ReadFile(filepath.Join(dir, "master.cf"))
			if tt.unchanged && !bytes.Equal(before, after) {
				t.Fatalf("master.cf changed:\n%s", after)
			}
		})
	}
}
