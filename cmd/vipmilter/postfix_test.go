package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func postfixDir(t *testing.T, extraMain string) string {
	t.Helper()
	for _, tool := range []string{"postconf", "postmap", "postfix"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found: Postfix is required under CI", tool)
			}
			t.Skipf("%s not found: install Postfix to run this test", tool)
		}
	}
	dir := t.TempDir()
	main := "compatibility_level = 3.6\nqueue_directory = " + filepath.Join(dir, "queue") +
		"\ndata_directory = " + filepath.Join(dir, "data") + "\nalias_maps =\nalias_database =\nmydestination =\n" + extraMain
	master := "smtp inet n - n - - smtpd\npickup unix n - n 60 1 pickup\ncleanup unix n - n - 0 cleanup\n" +
		"qmgr unix n - n 300 1 qmgr\nsmtp unix - - n - - smtp\n"
	for name, body := range map[string]string{"main.cf": main, "master.cf": master} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
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
