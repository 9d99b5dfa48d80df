package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// realHostStep is one line of README's "On a real host" steps and how the
// test runs it against a scratch root instead of the host: args with ROOT
// replaced (nil: not run here, skip says why and where it is tested).
type realHostStep struct {
	readme string
	args   []string
	skip   string
}

var realHostSteps = []realHostStep{
	{readme: "make && make install", args: []string{"make", "install", "DESTDIR=ROOT"}},
	{readme: "systemd-sysusers", args: []string{"systemd-sysusers", "--root=ROOT"}},
	{readme: "systemd-tmpfiles --create vipmilter.conf", args: []string{"systemd-tmpfiles", "--root=ROOT", "--create", "vipmilter.conf"}},
	{readme: "$EDITOR /etc/vipmilter/vipmilter.conf", skip: "interactive; the example file is checked as installed"},
	{readme: "vipmilter check", args: []string{"ROOT/usr/bin/vipmilter", "check"}},
	{readme: "vipmilter test --all-live --from a@example.com --to b@example.org", args: []string{"ROOT/usr/bin/vipmilter", "test", "--all-live", "--from", "a@example.com", "--to", "b@example.org"}},
	{readme: "vipmilter postfix --config-dir /etc/postfix", skip: "changes a Postfix; TestCmdPostfix runs it on a private one"},
	{readme: "systemctl daemon-reload", skip: "needs a running systemd; make systemd-check verifies the units"},
	{readme: "systemctl enable --now vipmilter-provision vipmilter", skip: "needs a running systemd; make systemd-check verifies the units"},
}

// readmeRealHost returns the commands of README's "On a real host" block,
// comments stripped.
func readmeRealHost(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	i := strings.Index(s, "## On a real host\n")
	if i < 0 {
		t.Fatal(`README.md has no "## On a real host" section`)
	}
	s = s[i:]
	start := strings.Index(s, "```sh\n")
	if start < 0 {
		t.Fatal(`README.md "On a real host" has no sh block`)
	}
	s = s[start+len("```sh\n"):]
	s = s[:strings.Index(s, "```")]
	var cmds []string
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		if line = strings.Join(strings.Fields(line), " "); line != "" {
			cmds = append(cmds, line)
		}
	}
	return cmds
}

// TestRealHostSteps runs README's real-host steps, as written there,
// against a scratch root (make install DESTDIR, systemd-sysusers --root,
// systemd-tmpfiles --root) without systemd running, and checks that the
// binary, the units, the users, the directories and a loadable binding
// file are there. The README block and the table above must list the same
// commands, so the steps cannot drift from what is tested.
func TestRealHostSteps(t *testing.T) {
	var want []string
	for _, s := range realHostSteps {
		want = append(want, s.readme)
	}
	if got := readmeRealHost(t); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("README's real-host steps changed; update realHostSteps.\nREADME:\n  %s\ntested:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	// Root: systemd-sysusers/-tmpfiles --root set owners.
	testenv.Require(t, testenv.Root, testenv.Command("make", "make"), testenv.Command("git", "git"),
		testenv.Command("systemd-sysusers", "systemd"), testenv.Command("systemd-tmpfiles", "systemd"))
	repo, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	// The host before the steps: base accounts, and Postfix installed (its
	// user and group, which the spool directory's tmpfiles line needs).
	for name, body := range map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/bash\npostfix:x:104:105::/var/spool/postfix:/usr/sbin/nologin\n",
		"etc/group":  "root:x:0:\npostfix:x:105:\n",
	} {
		if err := os.MkdirAll(filepath.Join(root, filepath.Dir(name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	conf := filepath.Join(root, "etc/vipmilter/vipmilter.conf")
	gobin := filepath.Join(runtime.GOROOT(), "bin")
	for _, s := range realHostSteps {
		if s.args == nil {
			t.Logf("not run: %s (%s)", s.readme, s.skip)
			continue
		}
		args := make([]string, len(s.args))
		for i, a := range s.args {
			args[i] = strings.ReplaceAll(a, "ROOT", root)
		}
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = repo
		// vipmilter's default file is /etc/vipmilter/vipmilter.conf: here
		// the root's, through the documented variable.
		cmd.Env = append(os.Environ(), "VIPMILTER_CONFIG="+conf, "PATH="+gobin+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s (as %q): %v\n%s", s.readme, args, err, out)
		}
		t.Logf("%s: ok", s.readme)
		if s.readme == "vipmilter check" && !strings.Contains(string(out), conf+": OK") {
			t.Errorf("vipmilter check did not pass the installed file:\n%s", out)
		}
		if strings.HasPrefix(s.readme, "vipmilter test") && !strings.Contains(string(out), "binding: ") {
			t.Errorf("vipmilter test printed no binding:\n%s", out)
		}
	}

	// What the steps leave behind.
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{
		{"usr/bin/vipmilter", 0o755},
		{"lib/systemd/system/vipmilter.service", 0o644},
		{"lib/systemd/system/vipmilter-provision.service", 0o644},
		{"lib/systemd/system/vipmilter.socket", 0o644},
		{"lib/systemd/system/postfix@.service.d/vipmilter.conf", 0o644},
		{"usr/lib/sysusers.d/vipmilter.conf", 0o644},
		{"usr/lib/tmpfiles.d/vipmilter.conf", 0o644},
		{"etc/vipmilter/vipmilter.conf", 0o644},
		{"etc/vipmilter/policy.sieve", 0o644},
	} {
		fi, err := os.Stat(filepath.Join(root, f.path))
		if err != nil {
			t.Errorf("/%s not installed: %v", f.path, err)
		} else if fi.Mode().Perm() != f.mode {
			t.Errorf("/%s: mode %v, want %v", f.path, fi.Mode().Perm(), f.mode)
		}
	}
	users := readIDs(t, filepath.Join(root, "etc/passwd"))
	groups := readIDs(t, filepath.Join(root, "etc/group"))
	for _, u := range []string{"vipmilter", "vipmilter-provision"} {
		if _, ok := users[u]; !ok {
			t.Errorf("user %s not created", u)
		}
	}
	for _, d := range []struct {
		path, user, group string
		mode              os.FileMode
	}{
		{"etc/vipmilter", "root", "root", 0o755},
		{"var/lib/vipmilter", "vipmilter-provision", "vipmilter-provision", 0o750},
		{"var/spool/postfix/vipmilter", "vipmilter", "postfix", 0o750},
	} {
		got, err := ownerOf(filepath.Join(root, d.path))
		if err != nil {
			t.Errorf("/%s not created: %v", d.path, err)
			continue
		}
		want := fmt.Sprintf("%v %s:%s", os.ModeDir|d.mode, users[d.user], groups[d.group])
		if got != want {
			t.Errorf("/%s: %s, want %s (%s:%s)", d.path, got, want, d.user, d.group)
		}
	}

	// make stamps the version with git describe.
	describe, err := exec.Command("git", "-C", repo, "describe", "--always", "--dirty").Output()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(root, "usr/bin/vipmilter"), "version").Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != string(describe) {
		t.Errorf("installed vipmilter version %q, want git describe's %q", out, describe)
	}
}

// readIDs maps names to ids in a passwd or group file.
func readIDs(t *testing.T, path string) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Split(line, ":"); len(f) > 2 {
			ids[f[0]] = f[2]
		}
	}
	return ids
}

// ownerOf is "MODE UID:GID" of path.
func ownerOf(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return "", fmt.Errorf("%s: no owner information", path)
	}
	return fmt.Sprintf("%v %d:%d", fi.Mode(), st.Uid, st.Gid), nil
}
