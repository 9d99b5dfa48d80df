package main

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestProvisionCommand runs the real binary inside a namespace the test
// creates: output lines, summary, exit status, --dry-run, --prune, and
// check --routes.
func TestProvisionCommand(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("needs root to create a network namespace; CI must run this test")
		}
		t.Skip("needs root to create a network namespace")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "vipmilter")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	b := make([]byte, 4)
	rand.Read(b)
	ns := "vipc-" + hex.EncodeToString(b)
	sh := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	sh("ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	sh("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	sh("ip", "-n", ns, "link", "set", "eth0", "up")
	sh("ip", "-n", ns, "link", "set", "eth1", "up")
	sh("ip", "-n", ns, "addr", "add", "10.99.0.1/24", "dev", "eth0")
	sh("ip", "-n", ns, "route", "add", "default", "via", "10.99.0.254")

	conf := filepath.Join(dir, "vipmilter.conf")
	write := func(s string) {
		t.Helper()
		if err := os.WriteFile(conf, []byte("Interface = eth0\nState_Dir = "+filepath.Join(dir, "state")+"\n"+s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (int, string) {
		t.Helper()
		cmd := exec.Command("ip", append([]string{"netns", "exec", ns, bin}, args...)...)
		out, err := cmd.CombinedOutput()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, string(out)
	}
	two := `Binding "A" { Bind_Address = 192.0.2.10  Bind_Address = 2001:db8::10 }
Binding "B" { Bind_Address = 192.0.2.20 }
`
	write(two)
	steps := []struct {
		name string
		conf string
		args []string
		code int
		want []string
	}{
		{"dry run", "", []string{"provision", "-c", conf, "--dry-run"}, 0, []string{"would add    192.0.2.10/32", "3 would add, 0 errors"}},
		{"first run", "", []string{"provision", "-c", conf}, 0, []string{"added        192.0.2.10/32", "added        2001:db8::10/128", "3 added, 0 errors"}},
		{"second run changes nothing", "", []string{"provision", "-c", conf}, 0, []string{"3 present, 0 errors"}},
		{"routes", "", []string{"check", "-c", conf, "--routes"}, 1, []string{"ok   A 192.0.2.10 -> 198.51.100.1 via 10.99.0.254 dev eth0", "FAIL A 2001:db8::10 -> 2001:db8:ffff::1"}},
		{"prune after removing B", `Binding "A" { Bind_Address = 192.0.2.10  Bind_Address = 2001:db8::10 }`, []string{"provision", "-c", conf, "--prune"}, 0, []string{"removed      192.0.2.20/32", "2 present, 1 removed, 0 errors"}},
		{"missing interface", `Binding "C" { Bind_Address = 192.0.2.30  Interface = nope0 }`, []string{"provision", "-c", conf}, 1, []string{`interface "nope0" does not exist`, "1 errors"}},
	}
	for _, s := range steps {
		if s.conf != "" {
			write(s.conf)
		}
		code, out := run(s.args...)
		if code != s.code {
			t.Errorf("%s: exit %d, want %d\n%s", s.name, code, s.code, out)
		}
		for _, w := range s.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", s.name, w, out)
			}
		}
	}
	out, _ := exec.Command("ip", "-n", ns, "addr", "show", "dev", "eth0").CombinedOutput()
	if strings.Contains(string(out), "192.0.2.20") || !strings.Contains(string(out), "10.99.0.1/24") {
		t.Errorf("after prune: want 192.0.2.20 gone and the foreign 10.99.0.1 kept:\n%s", out)
	}
}
