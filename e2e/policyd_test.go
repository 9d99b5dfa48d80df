package e2e

import (
	"context"
	"fmt"
	"net"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/testenv"
	"github.com/vipmilter/vipmilter/policyd"
	"github.com/vipmilter/vipmilter/sieve"
)

// policyKey is the binding header key of this test's install.
const policyKey = "00112233445566778899aabbccddeeff"

// TestPolicyService routes mail through a real Postfix with "vipmilter
// serve" on an envelope-only policy, so the policy hook: smtpd mail is
// decided by the SMTPD policy service (no milter in smtpd_milters), which
// answers PREPEND with the keyed binding header, and header_checks route it;
// mail from sendmail is decided by the milter in non_smtpd_milters. All of
// it is rendered by "vipmilter postfix", which picks the policy hook from
// the script. Checked: what main.cf holds; the source address the sink saw for a
// sender rule, for a rule on the first of three recipients (known only
// from the RCPT requests), for messages whose client forged binding
// headers, for sendmail mail and after postsuper -r; that no binding
// header leaves; that smtpd never logs the key.
func TestPolicyService(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := newEnv(t, ctx)
	bindings := []struct{ name, addr string }{{"default", "192.0.2.30"}, {"News", "192.0.2.31"}, {"VIP", "192.0.2.32"}}
	dir, bin, keyFile := keyedSetup(t, ctx, e)
	conf := fmt.Sprintf("Sieve_Script = %q\nBinding_Header_Key = %q\nMilter_Listen = inet:127.0.0.1:8894\nPolicy_Listen = inet:127.0.0.1:8896\n",
		filepath.Join(dir, "policy.sieve"), keyFile)
	for _, b := range bindings {
		conf += fmt.Sprintf("Binding %q { Bind_Address = %s }\n", b.name, b.addr)
	}
	script := `require ["envelope", "variables"];
if envelope :domain :is "from" "news.test" { set "binding" "News"; stop; }
if envelope :localpart :is "to" "vip" { set "binding" "VIP"; stop; }
`
	confPath := filepath.Join(dir, "vipmilter.conf")
	for path, body := range map[string]string{filepath.Join(dir, "policy.sieve"): script, confPath: conf} {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := config.Load(confPath)
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
	serve := e.net.MTA.Command(context.Background(), bin, "serve", "-c", confPath)
	serve.Stdout, serve.Stderr = logBuf, logBuf
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		serve.Process.Signal(syscall.SIGTERM)
		serve.Wait()
		if t.Failed() {
			t.Logf("serve output:\n%s", logBuf.String())
		}
	})
	for _, port := range []int{8894, 8896} {
		if err := e.net.MTA.WaitListen(ctx, net.JoinHostPort("127.0.0.1", strconv.Itoa(port))); err != nil {
			t.Fatalf("%v\n%s", err, logBuf.String())
		}
	}

	// The host's own recipient restriction, kept after vipmilter's entry:
	// it rejects a recipient the policy service has already seen.
	rcptAccess := "check_recipient_access regexp:" + filepath.Join(e.pf.Dir, "rcpt_access")
	if err := os.WriteFile(filepath.Join(e.pf.Dir, "rcpt_access"), []byte("/^vip@rejected\\.test$/ REJECT no such user\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.pf.Postconf(ctx, "smtpd_recipient_restrictions = "+rcptAccess); err != nil {
		t.Fatal(err)
	}
	for _, b := range bindings {
		if err := e.net.AddAddress(ctx, b.addr); err != nil {
			t.Fatal(err)
		}
	}
	if out := applyPostfix(t, ctx, e, bin, confPath); !strings.Contains(out, "hook: policy (") {
		t.Fatalf("vipmilter postfix did not pick the policy hook:\n%s", out)
	}
	const entry = "check_policy_service { inet:127.0.0.1:8896, default_action=DUNNO }"
	mainCF := postconfValues(t, ctx, e, "smtpd_milters", "non_smtpd_milters", "smtpd_recipient_restrictions", "smtpd_data_restrictions")
	if strings.Contains(mainCF["smtpd_milters"], "8894") || !strings.Contains(mainCF["non_smtpd_milters"], "inet:127.0.0.1:8894") {
		t.Errorf("the policy hook must keep the milter for sendmail mail only: %q", mainCF)
	}
	if mainCF["smtpd_recipient_restrictions"] != entry+", "+rcptAccess || mainCF["smtpd_data_restrictions"] != entry {
		t.Errorf("restrictions: want vipmilter's policy service first, then the host's: %q", mainCF)
	}

	sink := "@[" + SinkAddr4 + "]"
	cases := []routeCase{
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
	// vip@rejected.test would place the message on VIP; Postfix rejects it
	// after the policy service saw it, so the accepted recipients alone
	// decide (here: they disagree with it, so On_Policy_Error = default).
	rejected := Message{From: "x@other.test", To: []string{"a" + sink, "b" + sink}, Subject: "policy rejected recipient"}
	if err := rawSubmit(ctx, e.net.MTA, rejected, "vip@rejected.test"); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, routeCase{rejected, "default"})
	local := Message{From: "l@news.test", To: []string{"r" + sink}, Subject: "policy sendmail"}
	if err := e.pf.Sendmail(ctx, local.From, local.To, []byte("Subject: "+local.Subject+"\nX-Binding: VIP\n\nbody\n")); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, routeCase{local, "News"})
	subjects = append(subjects, rejected.Subject, local.Subject)
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
	// smtpd does not log a PREPEND action; cleanup logs a header_checks
	// FILTER match cut at 200 bytes, before the key
	// (config.BindingHeaderValue): the key is in no maillog line.
	for _, line := range strings.Split(e.pf.Log(), "\n") {
		if strings.Contains(line, policyKey) {
			t.Errorf("the header key appears in the maillog: %s", line)
		}
	}
	// One policy-service decision per smtpd message, each with its queue
	// id; the sendmail message was the milter's.
	decisions := strings.Count(logBuf.String(), "policy decision")
	if decisions != len(cases)-1 || strings.Count(logBuf.String(), "queue_id=\"\"") != 0 {
		t.Errorf("%d policy decision lines for %d smtpd messages, or one without a queue id:\n%s", decisions, len(cases)-1, logBuf.String())
	}
	if !strings.Contains(logBuf.String(), "recipients uncertain") {
		t.Error("the decision for the message with a rejected recipient does not say the recipients were uncertain")
	}
	if n := strings.Count(logBuf.String(), "milter decision"); n != 1 {
		t.Errorf("%d milter decision lines, want 1 (the sendmail message)", n)
	}
	requeued(t, ctx, e)
}

// TestPolicyServiceNotNeeded: a binding file with Match_Domain alone and no
// script takes no hook at all. "vipmilter postfix" renders no milter and no
// policy service, and no "vipmilter serve" runs: Postfix's
// sender_dependent_default_transport_maps places the mail. Checked: main.cf
// holds no vipmilter milter or policy entry; mail by SMTP and by sendmail
// leaves from its Match_Domain binding, also when the client forged a
// binding header carrying the real key (nothing routes by the header, since
// vipmilter writes none) and after postsuper -r; mail for a binding whose
// address is not on the host waits in the deferred queue, never leaving
// from another address.
func TestPolicyServiceNotNeeded(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := newEnv(t, ctx)
	// Gone's address (192.0.2.39) is deliberately not on the host.
	dir, bin, keyFile := keyedSetup(t, ctx, e, "192.0.2.30", "192.0.2.31")
	conf := fmt.Sprintf(`Binding_Header_Key = %q
Milter_Listen = inet:127.0.0.1:8894
Policy_Listen = inet:127.0.0.1:8896
Binding "default" { Bind_Address = 192.0.2.30 }
Binding "News" {
  Bind_Address = 192.0.2.31
  Match_Domain = news.test
}
Binding "Gone" {
  Bind_Address = 192.0.2.39
  Match_Domain = gone.test
}
`, keyFile)
	confPath := filepath.Join(dir, "vipmilter.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := applyPostfix(t, ctx, e, bin, confPath); !strings.Contains(out, "hook: none (") {
		t.Fatalf("vipmilter postfix did not pick the none hook:\n%s", out)
	}
	mainCF := postconfValues(t, ctx, e, "smtpd_milters", "non_smtpd_milters", "smtpd_recipient_restrictions", "smtpd_data_restrictions", "milter_header_checks", "header_checks")
	for name, v := range mainCF {
		if strings.Contains(v, "8894") || strings.Contains(v, "8896") || strings.Contains(v, "check_policy_service") || strings.Contains(v, "vipmilter_header_checks") {
			t.Errorf("main.cf %s = %s: no hook renders no milter, no policy service and no routing by header", name, v)
		}
	}

	sink := "@[" + SinkAddr4 + "]"
	forged := []string{"X-Binding: default " + policyKey, "X-Binding: News " + policyKey}
	cases := []routeCase{
		{Message{From: "a@news.test", To: []string{"r" + sink}, Subject: "none: sender map", Headers: forged[:1]}, "192.0.2.31"},
		{Message{From: "b@other.test", To: []string{"r" + sink, "s" + sink}, Subject: "none: no match, default", Headers: forged[1:]}, "192.0.2.30"},
	}
	var subjects []string
	for _, c := range cases {
		subjects = append(subjects, c.msg.Subject)
		if err := Submit(ctx, e.net.MTA, c.msg); err != nil {
			t.Fatal(err)
		}
	}
	local := Message{From: "l@news.test", To: []string{"r" + sink}, Subject: "none: sendmail"}
	if err := e.pf.Sendmail(ctx, local.From, local.To, []byte("Subject: "+local.Subject+"\n"+forged[0]+"\n\nbody\n")); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, routeCase{local, "192.0.2.31"})
	gone := Message{From: "g@gone.test", To: []string{"r" + sink}, Subject: "none: binding address missing", Headers: forged[:1]}
	if err := Submit(ctx, e.net.MTA, gone); err != nil {
		t.Fatal(err)
	}
	got := e.waitSubjects(t, ctx, append(subjects, local.Subject)...)
	for _, c := range cases {
		m := got[c.msg.Subject]
		if m.ClientAddr != c.want {
			t.Errorf("%q: left from %s, want %s", c.msg.Subject, m.ClientAddr, c.want)
		}
		if v := m.Header.Values("X-Binding"); len(v) != 0 {
			t.Errorf("%q: binding header left the host: %q", c.msg.Subject, v)
		}
	}
	waitDeferred := func(sender string) {
		t.Helper()
		err := testenv.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
			qs, err := e.pf.Entries(ctx)
			for _, q := range qs {
				if q.Sender == sender && q.QueueName == "deferred" {
					return true, nil
				}
			}
			return false, err
		}, sender+" deferred")
		if err != nil {
			t.Fatalf("%v\n%s", err, e.pf.Queue(ctx))
		}
	}
	waitDeferred(gone.From)

	// Requeue: held back by defer_transports, requeued through pickup's
	// cleanup, released: still the sender map's binding, never the forged one.
	e.deferTransports(t, ctx, "vip_News")
	rq := Message{From: "q@news.test", To: []string{"r" + sink}, Subject: "none: requeued", Headers: forged[:1]}
	if err := Submit(ctx, e.net.MTA, rq); err != nil {
		t.Fatal(err)
	}
	waitDeferred(rq.From)
	if err := e.pf.Requeue(ctx); err != nil {
		t.Fatal(err)
	}
	e.kickPickup(t, ctx)
	e.deferTransports(t, ctx, "")
	if m := e.waitSubjects(t, ctx, rq.Subject)[rq.Subject]; m.ClientAddr != "192.0.2.31" {
		t.Errorf("requeued message left from %s, want 192.0.2.31 (binding News by Match_Domain)", m.ClientAddr)
	}
	waitDeferred(gone.From)
	msgs, err := testenv.ReadDumps(e.sinkDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Header.Get("Subject") == gone.Subject {
			t.Errorf("mail for a binding whose address is missing left from %s", m.ClientAddr)
		}
	}
}

// applyPostfix runs "vipmilter postfix" on the test's Postfix (it reloads
// it) and returns its output.
func applyPostfix(t *testing.T, ctx context.Context, e *env, bin, conf string) string {
	t.Helper()
	out, err := e.net.MTA.Command(ctx, bin, "postfix", "-c", conf, "--config-dir", e.pf.Dir).CombinedOutput()
	if err != nil {
		t.Fatalf("vipmilter postfix: %v\n%s", err, out)
	}
	return string(out)
}

// postconfValues reads main.cf parameters as "postconf -h" shows them.
func postconfValues(t *testing.T, ctx context.Context, e *env, names ...string) map[string]string {
	t.Helper()
	out, err := e.net.MTA.Command(ctx, "postconf", append([]string{"-c", e.pf.Dir, "-h"}, names...)...).Output()
	if err != nil {
		t.Fatalf("postconf: %v", err)
	}
	lines := strings.Split(strings.TrimRight(string(out), "\n"), "\n")
	if len(lines) != len(names) {
		t.Fatalf("postconf -h %s: %q", strings.Join(names, " "), out)
	}
	v := map[string]string{}
	for i, n := range names {
		v[n] = lines[i]
	}
	return v
}

// rawSubmit sends m over SMTP from inside ns with first as an extra first
// recipient that Postfix is expected to reject (5xx), then m.To.
func rawSubmit(ctx context.Context, ns *testenv.NS, m Message, first string) error {
	conn, err := ns.Dial(ctx, "127.0.0.1:25")
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	tp := textproto.NewConn(conn)
	if _, _, err := tp.ReadResponse(220); err != nil {
		return err
	}
	step := func(code int, format string, args ...any) error {
		if err := tp.PrintfLine(format, args...); err != nil {
			return err
		}
		if _, msg, err := tp.ReadResponse(code); err != nil {
			return fmt.Errorf("%s: %w (%s)", fmt.Sprintf(format, args...), err, msg)
		}
		return nil
	}
	if err := step(250, "EHLO client.e2e.test"); err != nil {
		return err
	}
	if err := step(250, "MAIL FROM:<%s>", m.From); err != nil {
		return err
	}
	if err := step(5, "RCPT TO:<%s>", first); err != nil {
		return err
	}
	for _, r := range m.To {
		if err := step(250, "RCPT TO:<%s>", r); err != nil {
			return err
		}
	}
	if err := step(354, "DATA"); err != nil {
		return err
	}
	return step(250, "Subject: %s\r\n\r\nbody\r\n.", m.Subject)
}

// requeued checks that mail the policy service placed is routed again by
// its keyed header after "postsuper -r": held back by defer_transports,
// requeued (pickup's cleanup applies header_checks again, the FILTER record
// of the first arrival is gone), then released, it must still leave from
// its binding's address and not through the stock smtp transport.
func requeued(t *testing.T, ctx context.Context, e *env) {
	t.Helper()
	e.deferTransports(t, ctx, "vip_VIP")
	routed := func() int { return strings.Count(e.pf.Log(), ": filter: header X-Binding: VIP ") }
	before := routed()
	m := Message{From: "r@other.test", To: []string{"vip@[" + SinkAddr4 + "]"}, Subject: "policy requeue"}
	if err := Submit(ctx, e.net.MTA, m); err != nil {
		t.Fatal(err)
	}
	wait := func(n int, what string) {
		if err := testenv.Poll(ctx, 100*time.Millisecond, func() (bool, error) { return routed() >= n, nil }, what); err != nil {
			t.Fatal(err)
		}
	}
	wait(before+1, "the message routed on arrival")
	if err := e.pf.Requeue(ctx); err != nil {
		t.Fatal(err)
	}
	e.kickPickup(t, ctx)
	wait(before+2, "the requeued message routed again by pickup's cleanup")
	e.deferTransports(t, ctx, "")
	if got := e.waitSubjects(t, ctx, m.Subject)[m.Subject]; got.ClientAddr != "192.0.2.32" {
		t.Errorf("requeued message left from %s, want 192.0.2.32 (binding VIP)", got.ClientAddr)
	}
}

// deferTransports sets main.cf defer_transports and reloads; "" releases
// the deferred mail at once (postqueue -f).
func (e *env) deferTransports(t *testing.T, ctx context.Context, transports string) {
	t.Helper()
	if err := e.pf.Postconf(ctx, "defer_transports = "+transports); err != nil {
		t.Fatal(err)
	}
	if err := e.pf.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if transports != "" {
		return
	}
	if err := e.pf.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// kickPickup wakes pickup now rather than at its next 60 s poll: postsuper
// -r leaves requeued mail in maildrop.
func (e *env) kickPickup(t *testing.T, ctx context.Context) {
	t.Helper()
	if out, err := e.net.MTA.Command(ctx, "postkick", "-c", e.pf.Dir, "public", "pickup", "W").CombinedOutput(); err != nil {
		t.Fatalf("postkick: %v: %s", err, out)
	}
}

// routeCase is a message and the binding it must leave from.
type routeCase struct {
	msg  Message
	want string
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

// keyedSetup makes the test's directory with the vipmilter binary and a
// Binding_Header_Key file holding policyKey, and puts addrs on the MTA
// side.
func keyedSetup(t *testing.T, ctx context.Context, e *env, addrs ...string) (dir, bin, keyFile string) {
	t.Helper()
	dir = t.TempDir()
	bin = e2eBinary(t, ctx, dir)
	keyFile = filepath.Join(dir, "binding-header.key")
	if err := os.WriteFile(keyFile, []byte(policyKey+"\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if err := e.net.AddAddress(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	return dir, bin, keyFile
}
