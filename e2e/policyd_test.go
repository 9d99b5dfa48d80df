package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/policyd"
	"github.com/vipmilter/vipmilter/postfix"
	"github.com/vipmilter/vipmilter/sieve"
)

// policyKey is the binding header key of this test's install.
const policyKey = "00112233445566778899aabbccddeeff"

// TestPolicyService routes mail through a real Postfix with vipmilter's
// SMTPD policy service and no milter: Postfix asks at each RCPT and at
// DATA, the service answers PREPEND with the keyed binding header, and
// header_checks route it (the tables are written here as the policy hook's
// rendering describes them: keyed header -> FILTER, other copies IGNORE,
// MIME/nested parts and egress stripped). Checked: the source address the
// sink saw for a sender rule, for a rule on the second recipient of a
// multi-recipient message (known only from the RCPT requests), and for
// messages whose client forged binding headers, plus that the key never
// reaches the maillog or the sink.
func TestPolicyService(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := newEnv(t, ctx)
	dir := t.TempDir()
	// Postfix's smtpd (user postfix) must reach the socket.
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o011 != 0o011 {
			os.Chmod(d, fi.Mode().Perm()|0o011)
		}
	}

	bindings := []struct{ name, addr string }{{"default", "192.0.2.30"}, {"News", "192.0.2.31"}, {"VIP", "192.0.2.32"}}
	conf := fmt.Sprintf("Sieve_Script = %q\nPolicy_Listen = \"unix:%s\"\n", filepath.Join(dir, "policy.sieve"), filepath.Join(dir, "policy.sock"))
	for _, b := range bindings {
		conf += fmt.Sprintf("Binding %q { Bind_Address = %s }\n", b.name, b.addr)
	}
	script := `require ["envelope", "variables"];
if envelope :domain :is "from" "news.test" { set "binding" "News"; stop; }
if envelope :localpart :is "to" "vip" { set "binding" "VIP"; stop; }
`
	if err := os.WriteFile(filepath.Join(dir, "policy.sieve"), []byte(script), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(filepath.Join(dir, "vipmilter.conf"), []byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := sieve.New(cfg, sieve.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if hook, why, err := policyd.ChooseHook(cfg, pol.Needs()); err != nil || hook != config.HookPolicy {
		t.Fatalf("hook %q (%s, %v), want policy", hook, why, err)
	}
	logBuf := &lockedLog{}
	srv := policyd.New(pol, policyd.Options{BindingHeader: cfg.BindingHeader, HeaderKey: policyKey, Daemon: "mta.e2e.test",
		Log: slog.New(slog.NewTextHandler(logBuf, nil))})
	ln, err := srv.Listen(cfg.PolicyListen)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() {
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		srv.Shutdown(sctx)
	})

	hook, err := postfix.PolicyService(cfg, postfix.Options{}, nil, "", nil)
	if err != nil {
		t.Fatal(err)
	}
	routes, strip := "", "/^X-Binding:/ IGNORE\n"
	master := ""
	for _, b := range bindings {
		if err := e.net.AddAddress(ctx, b.addr); err != nil {
			t.Fatal(err)
		}
		routes += fmt.Sprintf("/^X-Binding: %s %s$/ FILTER vip_%s:\n", b.name, policyKey, b.name)
		master += fmt.Sprintf("vip_%s unix - - n - - smtp -o smtp_bind_address=%s -o smtp_helo_name=%s.e2e.test -o smtp_header_checks=regexp:%s/strip_checks\n",
			b.name, b.addr, strings.ToLower(b.name), e.pf.Dir)
	}
	routes += strip
	for name, body := range map[string]string{"route_checks": routes, "strip_checks": strip} {
		if err := os.WriteFile(filepath.Join(e.pf.Dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	settings := []string{
		"header_checks = regexp:" + filepath.Join(e.pf.Dir, "route_checks"),
		"mime_header_checks = regexp:" + filepath.Join(e.pf.Dir, "strip_checks"),
		"nested_header_checks = regexp:" + filepath.Join(e.pf.Dir, "strip_checks"),
	}
	for _, p := range hook.Main {
		settings = append(settings, p.Name+" = "+p.Value)
	}
	if err := e.pf.Postconf(ctx, settings...); err != nil {
		t.Fatal(err)
	}
	if err := e.pf.AppendMaster(master); err != nil {
		t.Fatal(err)
	}
	if err := e.pf.Reload(ctx); err != nil {
		t.Fatal(err)
	}

	sink := "@[" + SinkAddr4 + "]"
	cases := []struct {
		msg  Message
		want string // binding
	}{
		{Message{From: "a@news.test", To: []string{"r" + sink}, Subject: "policy sender rule"}, "News"},
		{Message{From: "b@other.test", To: []string{"first" + sink}, Subject: "policy default"}, "default"},
		{Message{From: "c@other.test", To: []string{"vip" + sink, "second" + sink, "third" + sink}, Subject: "policy multi-recipient"}, "VIP"},
		{Message{From: "d@other.test", To: []string{"r" + sink}, Subject: "policy forged",
			Headers: []string{"X-Binding: News", "X-Binding: News " + strings.Repeat("0", 32), "x-binding: VIP"}}, "default"},
		{Message{From: "e@news.test", To: []string{"r" + sink}, Subject: "policy forged to another binding",
			Headers: []string{"X-Binding: VIP", "X-Binding: VIP " + strings.Repeat("f", 32)}}, "News"},
	}
	var subjects []string
	for _, c := range cases {
		subjects = append(subjects, c.msg.Subject)
		if err := Submit(ctx, e.net.MTA, c.msg); err != nil {
			t.Fatal(err)
		}
	}
	got := e.waitSubjects(t, ctx, subjects...)
	addr := map[string]string{}
	for _, b := range bindings {
		addr[b.name] = b.addr
	}
	for _, c := range cases {
		m := got[c.msg.Subject]
		if m.ClientAddr != addr[c.want] {
			t.Errorf("%q: left from %s, want %s (binding %s)", c.msg.Subject, m.ClientAddr, addr[c.want], c.want)
		}
		if rc := m.Header.Values("X-Rcpt-Args"); len(rc) != len(c.msg.To) {
			t.Errorf("%q: sink saw recipients %q, want %d", c.msg.Subject, rc, len(c.msg.To))
		}
		if v := m.Header.Values("X-Binding"); len(v) != 0 {
			t.Errorf("%q: binding header left the host: %q", c.msg.Subject, v)
		}
	}
	// smtpd does not log a PREPEND action; cleanup logs every header_checks
	// FILTER match in full, key included (as for the milter's header), so
	// the maillog is as secret as the key file.
	for _, line := range strings.Split(e.pf.Log(), "\n") {
		if strings.Contains(line, policyKey) && !strings.Contains(line, "postfix/cleanup[") {
			t.Errorf("the header key appears in a maillog line other than cleanup's filter lines: %s", line)
		}
	}
	// One decision per message, each with its queue id.
	decisions := strings.Count(logBuf.String(), "policy decision")
	if decisions != len(cases) || strings.Count(logBuf.String(), "queue_id=\"\"") != 0 || strings.Contains(logBuf.String(), "queue_id= ") {
		t.Errorf("%d decision lines for %d messages, or one without a queue id:\n%s", decisions, len(cases), logBuf.String())
	}
	requeued(t, ctx, e)
}

// requeued checks that mail the policy service placed is routed again by
// its keyed header after "postsuper -r": held back by defer_transports,
// requeued (pickup's cleanup applies header_checks again, the FILTER record
// of the first arrival is gone), then released, it must still leave from
// its binding's address and not through the stock smtp transport.
func requeued(t *testing.T, ctx context.Context, e *env) {
	t.Helper()
	if err := e.pf.Postconf(ctx, "defer_transports = vip_VIP"); err != nil {
		t.Fatal(err)
	}
	if err := e.pf.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	routed := func() int { return strings.Count(e.pf.Log(), "filter: header X-Binding: VIP "+policyKey) }
	before := routed()
	m := Message{From: "r@other.test", To: []string{"vip@[" + SinkAddr4 + "]"}, Subject: "policy requeue"}
	if err := Submit(ctx, e.net.MTA, m); err != nil {
		t.Fatal(err)
	}
	wait := func(n int, what string) {
		if err := Poll(ctx, 100*time.Millisecond, func() (bool, error) { return routed() >= n, nil }, what); err != nil {
			t.Fatal(err)
		}
	}
	wait(before+1, "the message routed on arrival")
	if err := e.pf.Requeue(ctx); err != nil {
		t.Fatal(err)
	}
	// postsuper -r leaves the message in maildrop; wake pickup now
	// rather than at its next 60 s poll.
	if out, err := Exec(ctx, e.net.MTA, "postkick", "-c", e.pf.Dir, "public", "pickup", "W").CombinedOutput(); err != nil {
		t.Fatalf("postkick: %v: %s", err, out)
	}
	wait(before+2, "the requeued message routed again by pickup's cleanup")
	if err := e.pf.Postconf(ctx, "defer_transports ="); err != nil {
		t.Fatal(err)
	}
	if err := e.pf.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.pf.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.waitSubjects(t, ctx, m.Subject)[m.Subject]; got.ClientAddr != "192.0.2.32" {
		t.Errorf("requeued message left from %s, want 192.0.2.32 (binding VIP)", got.ClientAddr)
	}
}

// lockedLog collects the policy service's log lines; requests from several
// smtpd processes are served concurrently.
type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
