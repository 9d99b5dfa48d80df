package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

// exampleConf copies examples/ into a temporary directory with
// Milter_Listen on a unix socket there (Binding_Header_Key too, so nothing
// outside the directory is needed), and returns the file and the socket.
func exampleConf(t *testing.T, sockDir string) (conf, sock string) {
	t.Helper()
	dir := t.TempDir()
	if sockDir == "" {
		sockDir = dir
	}
	sock = filepath.Join(sockDir, "milter.sock")
	src, err := os.ReadFile("../../examples/vipmilter.conf")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	replaced := false
	for _, line := range strings.Split(string(src), "\n") {
		if strings.HasPrefix(line, "Milter_Listen") {
			line = `Milter_Listen = "unix:` + sock + `"`
			replaced = true
		}
		out = append(out, line)
	}
	if !replaced {
		t.Fatal("examples/vipmilter.conf has no Milter_Listen line")
	}
	key := filepath.Join(dir, "binding-header.key")
	if _, err := config.EnsureHeaderKey(key, -1); err != nil {
		t.Fatal(err)
	}
	out = append(out, `Binding_Header_Key = "`+key+`"`)
	conf = filepath.Join(dir, "vipmilter.conf")
	writeFile(t, conf, strings.Join(out, "\n"))
	script, err := os.ReadFile("../../examples/policy.sieve")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "policy.sieve"), string(script))
	return conf, sock
}

// TestServeJSONLogs: with --log-format json every line serve writes, from
// start to stop, reload and a message included, is one JSON object.
func TestServeJSONLogs(t *testing.T) {
	needLoad(t)
	conf, sock := exampleConf(t, "")
	p := startServe(t, conf, "--log-format", "json", "--log-level", "debug")
	p.waitLog(`"msg":"milter listening"`, 1)
	if got := decided(t, serveClient(sock), "a@example.com"); got != "Example" {
		t.Errorf("from example.com: binding %q, want Example", got)
	}
	p.signal(syscall.SIGHUP)
	p.waitLog(`"msg":"policy reloaded"`, 1)
	p.signal(syscall.SIGTERM)
	if code := p.exitCode(); code != 0 {
		t.Fatalf("exit status %d:\n%s", code, p.stderr.String())
	}
	out := strings.TrimSuffix(p.stderr.String(), "\n")
	msgs := map[string]bool{}
	for i, line := range strings.Split(out, "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Errorf("line %d is not JSON (%v): %s", i+1, err, line)
			continue
		}
		for _, k := range []string{"time", "level", "msg"} {
			if _, ok := rec[k]; !ok {
				t.Errorf("line %d lacks %q: %s", i+1, k, line)
			}
		}
		msg, _ := rec["msg"].(string)
		msgs[msg] = true
	}
	for _, want := range []string{"milter listening", "milter decision", "policy reloaded", "milter stopping"} {
		if !msgs[want] {
			t.Errorf("no %q line in:\n%s", want, out)
		}
	}
}

// TestServeUsageErrors: serve's usage errors exit 2 and say what to do; in
// JSON mode they are JSON lines too.
func TestServeUsageErrors(t *testing.T) {
	needLoad(t)
	missing := filepath.Join(t.TempDir(), "no", "such", "dir")
	conf, _ := exampleConf(t, missing)
	for _, tc := range []struct {
		name string
		args []string
		want []string
		json bool
	}{
		{"socket directory", nil, []string{"directory " + missing + " does not exist; create it"}, false},
		{"socket directory, json", []string{"--log-format", "json"}, []string{"directory " + missing + " does not exist"}, true},
		{"log format", []string{"--log-format", "yaml"}, []string{`--log-format "yaml": want text or json`}, false},
		{"log level", []string{"--log-level", "loud"}, []string{"--log-level"}, false},
		{"argument", []string{"extra"}, []string{`unexpected arguments ["extra"]`}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startServe(t, conf, tc.args...)
			if code := p.exitCode(); code != 2 {
				t.Fatalf("exit status %d, want 2:\n%s", code, p.stderr.String())
			}
			out := p.stderr.String()
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if tc.json {
				for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
					if !json.Valid([]byte(line)) {
						t.Errorf("not a JSON line: %s", line)
					}
				}
			}
		})
	}
}
