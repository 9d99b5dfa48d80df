package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/emersion/go-message/textproto"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// serveChildEnv makes the test binary run vipmilter's main instead of the
// tests, so "vipmilter serve" can be tested as a process: signals, exit
// status and all.
const serveChildEnv = "VIPMILTER_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(serveChildEnv) == "1" {
		c := &cli{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}
		os.Exit(c.main(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// lockedBuffer collects a child's stderr.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type serveProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	stderr *lockedBuffer
	exited chan struct{}
	err    error // Wait's result, once exited is closed
}

// startServe runs "vipmilter serve -c conf" as a child process.
func startServe(t *testing.T, conf string, args ...string) *serveProc {
	t.Helper()
	return startServeEnv(t, nil, conf, args...)
}

// startServeEnv is startServe with env added to the child's environment.
func startServeEnv(t *testing.T, env []string, conf string, args ...string) *serveProc {
	t.Helper()
	return startCmd(t, exec.Command(os.Args[0], append([]string{"serve", "-c", conf}, args...)...), env)
}

// startCmd starts cmd, a command line that runs this binary as vipmilter,
// with env added to the child's environment.
func startCmd(t *testing.T, cmd *exec.Cmd, env []string) *serveProc {
	t.Helper()
	cmd.Env = append(append(os.Environ(), serveChildEnv+"=1", "LISTEN_FDS=", "NOTIFY_SOCKET=", "VIPMILTER_CONFIG="), env...)
	p := &serveProc{t: t, cmd: cmd, stderr: &lockedBuffer{}, exited: make(chan struct{})}
	cmd.Stdout = p.stderr
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.err = cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("vipmilter serve output:\n%s", p.stderr.String())
		}
	})
	return p
}

// waitLog waits until the output holds want n times.
func (p *serveProc) waitLog(want string, n int) {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.Patience)
	defer cancel()
	err := testenv.Poll(ctx, 10*time.Millisecond, func() (bool, error) {
		// Exited is read first: output written before the exit still counts.
		exited := false
		select {
		case <-p.exited:
			exited = true
		default:
		}
		if strings.Count(p.stderr.String(), want) >= n {
			return true, nil
		}
		if exited {
			return false, fmt.Errorf("vipmilter exited (%v)", p.err)
		}
		return false, nil
	}, fmt.Sprintf("%d× %q in the output", n, want))
	if err != nil {
		p.t.Fatalf("%v:\n%s", err, p.stderr.String())
	}
}

// exitCode waits for the process to end and returns its status.
func (p *serveProc) exitCode() int {
	p.t.Helper()
	select {
	case <-p.exited:
	case <-time.After(15 * time.Second):
		p.t.Fatalf("vipmilter did not exit:\n%s", p.stderr.String())
	}
	var ee *exec.ExitError
	if errors.As(p.err, &ee) {
		return ee.ExitCode()
	}
	if p.err != nil {
		p.t.Fatal(p.err)
	}
	return 0
}

func (p *serveProc) signal(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
}

const serveConf = `Milter_Listen   = "unix:%SOCK%"
Sieve_Script    = "policy.sieve"
Binding_Header  = "X-Binding"  Hook = milter
Binding "default" { Bind_Address = 192.0.2.1 }
Binding "Alpha"   { Bind_Address = 192.0.2.10  Match_Domain = example.com }
Binding "Beta"    { Bind_Address = 192.0.2.20 }
`

func writeFile(t *testing.T, path, body string) {
	t.Helper()
	// Write and rename so a reload never sees a half-written file.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func serveClient(sock string) *gomilter.Client {
	return gomilter.NewClient("unix", sock, gomilter.WithDialer(&net.Dialer{Timeout: 5 * time.Second}),
		gomilter.WithReadTimeout(10*time.Second), gomilter.WithWriteTimeout(10*time.Second))
}

// decided sends one message with two spoofed binding headers and returns
// the binding written. It fails unless exactly one binding header is added
// and nothing else is changed (the MTA strips client copies).
func decided(t *testing.T, c *gomilter.Client, from string) string {
	t.Helper()
	cs, err := c.Session(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if _, err := cs.Conn("client.example", gomilter.FamilyInet, 2525, "192.0.2.7"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Helo("client.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Mail(from, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Rcpt("r@example.net", ""); err != nil {
		t.Fatal(err)
	}
	var h textproto.Header
	h.Add("X-Binding", "spoof2")
	h.Add("Subject", "hi")
	h.Add("x-binding", "spoof1")
	if _, err := cs.Header(h); err != nil {
		t.Fatal(err)
	}
	mods, act, err := cs.BodyReadFrom(strings.NewReader("body\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	return checkMods(t, mods, act)
}

func checkMods(t *testing.T, mods []gomilter.ModifyAction, act *gomilter.Action) string {
	t.Helper()
	if act.Type != gomilter.ActionAccept {
		t.Fatalf("action %v, want accept", act)
	}
	var added []string
	for _, m := range mods {
		if m.Type != gomilter.ActionAddHeader || m.HeaderName != "X-Binding" {
			t.Fatalf("unexpected modification %v", m)
		}
		added = append(added, m.HeaderValue)
	}
	if len(added) != 1 {
		t.Fatalf("added %q; want one binding", added)
	}
	// "<binding> <key>", or "<binding>" without a key file.
	name, _, _ := strings.Cut(added[0], " ")
	return name
}

// TestServe runs "vipmilter serve" as a process on a unix socket: one
// binding header written and spoofed copies removed; SIGHUP with a broken
// script keeps the old policy (and logs the error); SIGHUP with a changed
// script changes decisions; SIGTERM in the middle of a session lets it
// finish, refuses new connections and exits 0.
func TestServe(t *testing.T) {
	needLoad(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "milter.sock")
	conf := filepath.Join(dir, "vipmilter.conf")
	script := filepath.Join(dir, "policy.sieve")
	writeFile(t, conf, strings.ReplaceAll(serveConf, "%SOCK%", sock))
	writeFile(t, script, `require ["envelope", "variables"];
if envelope :domain :is "from" "beta.test" { set "binding" "Beta"; }
`)
	p := startServe(t, conf, "-shutdown-timeout", "20s")
	p.waitLog("milter listening", 1)
	c := serveClient(sock)

	for from, want := range map[string]string{"a@example.com": "Alpha", "b@beta.test": "Beta", "c@other.test": "default"} {
		if got := decided(t, c, from); got != want {
			t.Errorf("from %s: binding %q, want %q", from, got, want)
		}
	}

	// A broken script: reload refused, old policy keeps serving.
	writeFile(t, script, "require [\"variables\"];\nif true {\n  set \"binding\" \"Beta\"\n")
	p.signal(syscall.SIGHUP)
	p.waitLog("reload failed; keeping the old policy", 1)
	if got := decided(t, c, "b@beta.test"); got != "Beta" {
		t.Fatalf("after broken reload: %q, want Beta", got)
	}
	if got := decided(t, c, "a@example.com"); got != "Alpha" {
		t.Fatalf("after broken reload: %q, want Alpha", got)
	}
	if !strings.Contains(p.stderr.String(), "policy.sieve:") {
		t.Errorf("reload error does not name the script:\n%s", p.stderr.String())
	}

	// A changed script: new decisions.
	writeFile(t, script, `require ["variables"];
set "binding" "Beta";
`)
	p.signal(syscall.SIGHUP)
	p.waitLog("policy reloaded", 1)
	for _, from := range []string{"a@example.com", "c@other.test"} {
		if got := decided(t, c, from); got != "Beta" {
			t.Fatalf("after reload, from %s: %q, want Beta", from, got)
		}
	}

	// SIGTERM in the middle of a session: it finishes, then exit 0.
	cs, err := c.Session(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if _, err := cs.Conn("client.example", gomilter.FamilyInet, 2525, "192.0.2.7"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Helo("client.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Mail("a@example.com", ""); err != nil {
		t.Fatal(err)
	}
	p.signal(syscall.SIGTERM)
	p.waitLog("milter stopping", 1)
	// The listener is closed: no new sessions.
	testenv.Eventually(t, "new sessions refused after SIGTERM", func() bool {
		s, err := c.Session(nil)
		if err != nil {
			return true
		}
		s.Close()
		return false
	})
	select {
	case <-p.exited:
		t.Fatalf("exited with a session in flight:\n%s", p.stderr.String())
	default:
	}
	if _, err := cs.Rcpt("r@example.net", ""); err != nil {
		t.Fatal(err)
	}
	var h textproto.Header
	h.Add("X-Binding", "spoof2")
	h.Add("X-Binding", "spoof1")
	if _, err := cs.Header(h); err != nil {
		t.Fatal(err)
	}
	mods, act, err := cs.BodyReadFrom(strings.NewReader("body\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := checkMods(t, mods, act); got != "Beta" {
		t.Fatalf("in-flight message: %q, want Beta", got)
	}
	cs.Close()
	if code := p.exitCode(); code != 0 {
		t.Fatalf("exit status %d, want 0", code)
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket left behind: %v", err)
	}
	if strings.Contains(p.stderr.String(), "shutdown incomplete") {
		t.Error("shutdown did not wait for the session")
	}
	if n := strings.Count(p.stderr.String(), "milter decision"); n != 8 {
		t.Errorf("%d decision log lines, want 8", n)
	}
}

// TestServeConfigError: a config or script that does not load stops serve
// with every problem (file:line:col) and exit status 2.
func TestServeConfigError(t *testing.T) {
	needLoad(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "milter.sock")
	for _, tc := range []struct {
		name, conf, script, want string
	}{
		{"unknown keyword", strings.ReplaceAll(serveConf, "%SOCK%", sock) + "Bind_Adress = 192.0.2.1\n", "keep;\n", "vipmilter.conf:7:1"},
		{"broken script", strings.ReplaceAll(serveConf, "%SOCK%", sock), "if true {\n", "policy.sieve:"},
		{"refused command", strings.ReplaceAll(serveConf, "%SOCK%", sock), "discard;\n", "discard would lose mail"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf := filepath.Join(dir, "vipmilter.conf")
			writeFile(t, conf, tc.conf)
			writeFile(t, filepath.Join(dir, "policy.sieve"), tc.script)
			p := startServe(t, conf)
			if code := p.exitCode(); code != 2 {
				t.Fatalf("exit status %d, want 2:\n%s", code, p.stderr.String())
			}
			if out := p.stderr.String(); !strings.Contains(out, tc.want) {
				t.Fatalf("output lacks %q:\n%s", tc.want, out)
			}
			if _, err := os.Stat(sock); err == nil {
				t.Fatal("socket created despite the error")
			}
		})
	}
}
