package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// TestServeHookChangeRendered walks one "vipmilter serve" through the three
// hooks with a real Postfix, reloading it (SIGHUP) as an administrator
// would, before or after running "vipmilter postfix": none → policy →
// milter → none. After each step serve listens on exactly what the hook
// Postfix was rendered for needs (a hook change reloaded before the render
// keeps the old hook's listeners, since Postfix still uses them), and mail
// leaves from the binding that hook's path decides.
func TestServeHookChangeRendered(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := newEnv(t, ctx)
	dir, bin, keyFile := keyedSetup(t, ctx, e, "192.0.2.30", "192.0.2.31", "192.0.2.32")
	const milterAddr, policyAddr = "127.0.0.1:8894", "127.0.0.1:8896"
	base := fmt.Sprintf(`Binding_Header_Key = %q
Milter_Listen = inet:%s
Policy_Listen = inet:%s
Binding "default" { Bind_Address = 192.0.2.30 }
Binding "News"    { Bind_Address = 192.0.2.31  Match_Domain = news.test }
Binding "VIP"     { Bind_Address = 192.0.2.32 }
`, keyFile, milterAddr, policyAddr)
	confPath := filepath.Join(dir, "vipmilter.conf")
	scriptPath := filepath.Join(dir, "policy.sieve")
	withScript := base + fmt.Sprintf("Sieve_Script = %q\n", scriptPath)
	write := func(conf, script string) {
		t.Helper()
		if script != "" {
			if err := os.WriteFile(scriptPath, []byte(script), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	const (
		// The policy hook: the envelope sender places vip.test.
		envelopeScript = "require [\"envelope\", \"variables\"];\nif envelope :domain :is \"from\" \"vip.test\" { set \"binding\" \"VIP\"; }\n"
		// The milter hook: a header places it.
		headerScript = "require [\"variables\"];\nif header :contains \"Subject\" \"[vip]\" { set \"binding\" \"VIP\"; }\n"
	)
	render := func(hook string) {
		t.Helper()
		if out := applyPostfix(t, ctx, e, bin, confPath); !strings.Contains(out, "hook: "+hook+" (") {
			t.Fatalf("vipmilter postfix did not pick the %s hook:\n%s", hook, out)
		}
	}

	write(base, "")
	render("none")
	logBuf := &lockedLog{}
	serve := e.net.MTA.Command(context.Background(), bin, "serve", "-c", confPath, "--postfix-dir", e.pf.Dir)
	serve.Stdout, serve.Stderr = logBuf, logBuf
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- serve.Wait() }()
	t.Cleanup(func() {
		serve.Process.Signal(syscall.SIGTERM)
		<-exited
		if t.Failed() {
			t.Logf("serve output:\n%s\nmaillog tail:\n%s", logBuf.String(), e.pf.LogTail(60))
		}
	})
	waitLog := func(want string, n int) {
		t.Helper()
		testenv.Eventually(t, fmt.Sprintf("%d× %q in serve's output", n, want), func() bool {
			return strings.Count(logBuf.String(), want) >= n
		}, logBuf.String)
	}
	reload := func(n int) {
		t.Helper()
		if err := serve.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitLog("policy reloaded", n)
	}
	listening := func(step string, milter, policy bool) {
		t.Helper()
		for addr, want := range map[string]bool{milterAddr: milter, policyAddr: policy} {
			got, err := e.net.MTA.Listening(ctx, addr)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("%s: listening on %s: %v, want %v", step, addr, got, want)
			}
		}
	}
	sink := "@[" + SinkAddr4 + "]"
	n := 0
	send := func(step, from, subject, want string) {
		t.Helper()
		n++
		m := Message{From: from, To: []string{"r" + sink}, Subject: fmt.Sprintf("%s %d: %s", subject, n, step)}
		if err := Submit(ctx, e.net.MTA, m); err != nil {
			t.Fatal(err)
		}
		if got := e.waitSubjects(t, ctx, m.Subject)[m.Subject]; got.ClientAddr != want {
			t.Errorf("%s: %q left from %s, want %s", step, m.Subject, got.ClientAddr, want)
		}
	}

	waitLog("no milter listener", 1)
	listening("none", false, false)
	send("none", "a@news.test", "match", "192.0.2.31")

	// none → policy, reloaded before the render: nothing was running, so
	// the policy hook's listeners start at once.
	write(withScript, envelopeScript)
	reload(1)
	listening("policy, before the render", true, true)
	render("policy")
	send("policy", "b@vip.test", "envelope", "192.0.2.32")
	send("policy", "a@news.test", "match", "192.0.2.31")
	if !strings.Contains(logBuf.String(), "policy decision") {
		t.Error("no policy decision logged: the policy service did not decide")
	}

	// policy → milter, reloaded before the render: Postfix still asks the
	// policy service, which keeps serving.
	write(withScript, headerScript)
	reload(2)
	waitLog("the old hook's listeners keep serving", 1)
	listening("milter, before the render", true, true)
	render("milter")
	reload(3)
	waitLog("listeners changed", 2)
	listening("milter", true, false)
	send("milter", "c@other.test", "[vip]", "192.0.2.32")
	send("milter", "a@news.test", "match", "192.0.2.31")

	// milter → none, rendered first: the milter listener closes.
	write(base, "")
	render("none")
	reload(4)
	waitLog("milter listener closed", 1)
	listening("none again", false, false)
	send("none again", "a@news.test", "match", "192.0.2.31")
	send("none again", "d@other.test", "[vip]", "192.0.2.30")

	select {
	case err := <-exited:
		t.Fatalf("serve exited: %v", err)
	default:
	}
}
