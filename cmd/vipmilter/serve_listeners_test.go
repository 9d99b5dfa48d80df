package main

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/testenv"
)

// hookFiles is one binding file and script whose hook is known: none
// (Match_Domain only), policy (an envelope-only script) or milter (a
// script that tests a header).
type hookFiles struct {
	name   string
	conf   string // %DIR% is the test's directory
	script string // "" writes none
}

const hookBindings = `Milter_Listen  = "unix:%DIR%/milter.sock"
Policy_Listen  = "unix:%DIR%/policy.sock"
Binding_Header = "X-Binding"
Binding_Header_Key = "%DIR%/binding-header.key"
Binding "default" { Bind_Address = 192.0.2.1 }
Binding "Alpha"   { Bind_Address = 192.0.2.10  Match_Domain = example.com }
Binding "Beta"    { Bind_Address = 192.0.2.20 }
`

var (
	hookNone = hookFiles{name: "none", conf: hookBindings}
	// from beta.test → Beta: the policy service and the milter both say so.
	hookPolicy = hookFiles{name: "policy", conf: hookBindings + `Sieve_Script = "policy.sieve"` + "\n",
		script: "require [\"envelope\", \"variables\"];\nif envelope :domain :is \"from\" \"beta.test\" { set \"binding\" \"Beta\"; }\n"}
	// Subject "hi" (every message decided() sends) → Beta.
	hookMilter = hookFiles{name: "milter", conf: hookBindings + `Sieve_Script = "policy.sieve"` + "\n",
		script: "require [\"variables\"];\nif header :is \"Subject\" \"hi\" { set \"binding\" \"Beta\"; }\n"}
)

func (h hookFiles) write(t *testing.T, dir string) string {
	t.Helper()
	conf := filepath.Join(dir, "vipmilter.conf")
	writeFile(t, conf, strings.ReplaceAll(h.conf, "%DIR%", dir))
	if h.script != "" {
		writeFile(t, filepath.Join(dir, "policy.sieve"), h.script)
	}
	return conf
}

// served is what a serve process answers on: the milter's binding for
// b@beta.test and for a@example.com ("" without a milter listener), the
// policy service's binding for b@beta.test ("" without one).
type served struct {
	milterBeta, milterExample, policyBeta string
}

func observe(t *testing.T, dir string) served {
	t.Helper()
	var s served
	sock := filepath.Join(dir, "milter.sock")
	if c, err := net.Dial("unix", sock); err == nil {
		c.Close()
		c := serveClient(sock)
		s.milterBeta = decided(t, c, "b@beta.test")
		s.milterExample = decided(t, c, "a@example.com")
	}
	s.policyBeta = policyAnswer(t, filepath.Join(dir, "policy.sock"), "b@beta.test")
	return s
}

// policyAnswer asks the policy service on sock for a message from from
// (RCPT, then DATA, as Postfix does) and returns the binding it PREPENDs;
// "" when nothing listens.
func policyAnswer(t *testing.T, sock, from string) string {
	t.Helper()
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return ""
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(c)
	var action string
	for _, state := range []string{"RCPT", "DATA"} {
		fmt.Fprintf(c, "request=smtpd_access_policy\nprotocol_state=%s\nprotocol_name=ESMTP\ninstance=1.2.3\n"+
			"client_address=192.0.2.7\nclient_name=client.example\nhelo_name=client.example\nsender=%s\nrecipient=r@example.net\n\n", state, from)
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("policy service: %v", err)
		}
		if _, err := br.ReadString('\n'); err != nil { // the empty line
			t.Fatalf("policy service: %v", err)
		}
		action = strings.TrimSpace(strings.TrimPrefix(line, "action="))
	}
	// "PREPEND X-Binding: <binding> <key>"
	v, ok := strings.CutPrefix(action, "PREPEND X-Binding: ")
	if !ok {
		t.Fatalf("policy service answered %q at DATA, want PREPEND X-Binding", action)
	}
	name, _, _ := strings.Cut(v, " ")
	return name
}

// TestServeHookChange runs "vipmilter serve" on one hook, rewrites the
// files for another and sends SIGHUP: serve must listen on exactly what the
// new hook needs — none: nothing; policy: the policy service and the
// milter (for mail from sendmail); milter: the milter — and keep the old
// policy and listeners when the new files or listeners do not work.
func TestServeHookChange(t *testing.T) {
	needLoad(t)
	broken := hookFiles{name: "broken binding file", conf: hookPolicy.conf + "Binding \"Gamma\" { Bind_Address = 192.0.2.300 }\n", script: hookPolicy.script}
	unclosed := hookFiles{name: "binding file syntax error", conf: hookMilter.conf + "Binding \"Gamma\" {\n  Bind_Address = 192.0.2.30\n", script: hookPolicy.script}
	brokenScript := hookFiles{name: "broken script", conf: hookMilter.conf, script: "require [\"variables\"];\nif true {\n"}
	var (
		none   = served{}
		policy = served{milterBeta: "Beta", milterExample: "Alpha", policyBeta: "Beta"}
		milter = served{milterBeta: "Beta", milterExample: "Beta"}
	)
	for _, tc := range []struct {
		name     string
		from, to hookFiles
		prepare  func(t *testing.T, dir string) // before the reload
		before   served
		after    served
		log      string // in the output after the reload
		noLog    string // not in the output
	}{
		{name: "none to policy", from: hookNone, to: hookPolicy, before: none, after: policy, log: "policy reloaded"},
		{name: "policy to milter", from: hookPolicy, to: hookMilter, before: policy, after: milter, log: "policy service stopped"},
		{name: "milter to none", from: hookMilter, to: hookNone, before: milter, after: none, log: "milter listener closed"},
		{name: "policy to none", from: hookPolicy, to: hookNone, before: policy, after: none, log: "listeners changed"},
		{name: "broken binding file refused", from: hookPolicy, to: broken, before: policy, after: policy,
			log: "vipmilter.conf:9:", noLog: "policy reloaded"},
		{name: "binding file syntax error refused", from: hookMilter, to: unclosed, before: milter, after: milter,
			log: "vipmilter.conf:9:", noLog: "policy reloaded"},
		{name: "broken script refused", from: hookMilter, to: brokenScript, before: milter, after: milter,
			log: "policy.sieve:2:", noLog: "policy reloaded"},
		{name: "missing header key refused", from: hookMilter, to: hookPolicy, before: milter, after: milter,
			prepare: func(t *testing.T, dir string) { os.Remove(filepath.Join(dir, "binding-header.key")) },
			log:     "Binding_Header_Key: binding header key: open", noLog: "policy reloaded"},
		{name: "taken Policy_Listen keeps the old set", from: hookMilter, to: hookPolicy, before: milter,
			after: served{milterBeta: "Beta", milterExample: "Beta", policyBeta: "other"},
			prepare: func(t *testing.T, dir string) {
				// Another process's socket: serve must not steal it. It
				// answers every request with the binding "other".
				ln, err := net.Listen("unix", filepath.Join(dir, "policy.sock"))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				go func() {
					for {
						c, err := ln.Accept()
						if err != nil {
							return
						}
						go func() {
							defer c.Close()
							br := bufio.NewReader(c)
							for {
								line, err := br.ReadString('\n')
								if err != nil {
									return
								}
								if line == "\n" {
									fmt.Fprint(c, "action=PREPEND X-Binding: other\n\n")
								}
							}
						}()
					}
				}()
			},
			log: "reload failed; keeping the old policy and listeners", noLog: "policy reloaded"},
		{name: "Postfix not yet rendered for the new hook", from: hookPolicy, to: hookMilter, before: policy,
			// The policy service keeps answering (with the new policy,
			// which places beta.test by header only) until Postfix stops
			// asking it.
			after: served{milterBeta: "Beta", milterExample: "Beta", policyBeta: "default"},
			prepare: func(t *testing.T, dir string) {
				writeFile(t, filepath.Join(dir, "postfix", "main.cf"), "# rendered for another binding file\n")
			},
			log: "the old hook's listeners keep serving"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			pfDir := filepath.Join(dir, "postfix")
			if err := os.Mkdir(pfDir, 0o755); err != nil {
				t.Fatal(err)
			}
			if _, err := config.EnsureHeaderKey(filepath.Join(dir, "binding-header.key"), -1); err != nil {
				t.Fatal(err)
			}
			conf := tc.from.write(t, dir)
			p := startServe(t, conf, "--postfix-dir", pfDir)
			p.waitLog("msg=hook hook="+tc.from.name, 1)
			if tc.from.name == "none" {
				p.waitLog("no milter listener", 1)
			} else {
				p.waitLog("milter listening", 1)
			}
			if got := observe(t, dir); got != tc.before {
				t.Fatalf("hook %s serves %+v, want %+v", tc.from.name, got, tc.before)
			}
			if tc.prepare != nil {
				tc.prepare(t, dir)
			}
			tc.to.write(t, dir)
			p.signal(syscall.SIGHUP)
			p.waitLog(tc.log, 1)
			if tc.noLog == "" {
				p.waitLog("policy reloaded", 1) // the reload's last line
			}
			if got := observe(t, dir); got != tc.after {
				t.Fatalf("after the reload serves %+v, want %+v", got, tc.after)
			}
			if tc.noLog != "" && strings.Contains(p.stderr.String(), tc.noLog) {
				t.Fatalf("output has %q", tc.noLog)
			}
			select {
			case <-p.exited:
				t.Fatalf("serve exited: %v", p.err)
			default:
			}
			p.signal(syscall.SIGTERM)
			if code := p.exitCode(); code != 0 {
				t.Fatalf("exit status %d", code)
			}
			for _, s := range []string{"milter.sock", "policy.sock"} {
				if tc.prepare != nil && s == "policy.sock" {
					continue // the other process's socket, if any
				}
				if _, err := os.Stat(filepath.Join(dir, s)); err == nil {
					t.Errorf("%s left behind", s)
				}
			}
		})
	}
}

// TestServeNoneHook: with the none hook serve opens no milter socket but
// still tells systemd it is ready, serves metrics, and waits for a reload.
func TestServeNoneHook(t *testing.T) {
	needLoad(t)
	dir := t.TempDir()
	notify := filepath.Join(dir, "notify")
	sd, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sd.Close()
	metrics := freePort(t)
	conf := filepath.Join(dir, "vipmilter.conf")
	writeFile(t, conf, strings.ReplaceAll(hookBindings, "%DIR%", dir)+fmt.Sprintf("Metrics_Listen = %q\n", metrics))
	p := startServeEnv(t, []string{"NOTIFY_SOCKET=" + notify}, conf, "--postfix-dir", dir)
	buf := make([]byte, 512)
	sd.SetReadDeadline(time.Now().Add(testenv.Patience))
	n, err := sd.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("sd_notify: %q, %v; want READY=1", buf[:n], err)
	}
	p.waitLog("no milter listener", 1)
	if _, err := os.Stat(filepath.Join(dir, "milter.sock")); err == nil {
		t.Fatal("milter socket created for the none hook")
	}
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("metrics: %s", resp.Status)
	}
	p.signal(syscall.SIGTERM)
	if code := p.exitCode(); code != 0 {
		t.Fatalf("exit status %d", code)
	}
}

// TestServeSocketActivation: a milter socket passed by systemd (LISTEN_FDS)
// is served instead of Milter_Listen, is not served (but stays open) under
// the none hook, is served again after a reload to the milter hook, and is
// left to systemd at exit.
func TestServeSocketActivation(t *testing.T) {
	needLoad(t)
	dir := t.TempDir()
	if _, err := config.EnsureHeaderKey(filepath.Join(dir, "binding-header.key"), -1); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "milter.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	f, err := ln.(*net.UnixListener).File()
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	defer f.Close()
	conf := hookNone.write(t, dir)

	// LISTEN_PID must be serve's own pid: sh execs it under its own.
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@"`, os.Args[0], "serve", "-c", conf, "--postfix-dir", dir)
	cmd.ExtraFiles = []*os.File{f} // fd 3
	p := startCmd(t, cmd, nil)
	p.waitLog("no milter listener", 1)

	// Milter, none (not served, still there for the next reload), milter.
	for i, h := range []hookFiles{hookMilter, hookNone, hookMilter} {
		h.write(t, dir)
		p.signal(syscall.SIGHUP)
		p.waitLog("policy reloaded", i+1)
		if h.name == "none" {
			p.waitLog("milter listener closed", 1)
			continue
		}
		if got := decided(t, serveClient(sock), "b@beta.test"); got != "Beta" {
			t.Fatalf("reload %d, on systemd's socket: %q, want Beta", i+1, got)
		}
	}
	if strings.Contains(p.stderr.String(), "differs from Milter_Listen") {
		t.Error("warned about the very socket Milter_Listen names")
	}
	p.signal(syscall.SIGTERM)
	if code := p.exitCode(); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("systemd's socket removed: %v", err)
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
