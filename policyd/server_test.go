package policyd

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

const key = "k3y"

func newServer(t testing.TB, script string, extra ...string) *Server {
	return New(testPolicy(t, script, extra...), Options{BindingHeader: "X-Binding", HeaderKey: key, Daemon: "mta.test", Log: quietLog()})
}

func prepend(binding string) string {
	return "PREPEND X-Binding: " + config.BindingHeaderValue("X-Binding", binding, key)
}

// TestMessages runs whole messages through one connection: the RCPT
// requests, then DATA, whose action is checked.
func TestMessages(t *testing.T) {
	type rq struct {
		state string
		attrs []string
	}
	rcpt := func(a string) rq { return rq{"RCPT", []string{"sender=s@x.test", "recipient=" + a}} }
	data := func(n int, attrs ...string) rq {
		return rq{"DATA", append([]string{"sender=s@x.test", "recipient_count=" + string(rune('0'+n)), "queue_id=Q1"}, attrs...)}
	}
	for _, c := range []struct {
		name   string
		extra  []string
		reqs   []rq
		want   string
		script string
	}{
		{name: "sender domain", reqs: []rq{
			{"RCPT", []string{"sender=a@news.test", "recipient=r@d.test"}},
			{"DATA", []string{"sender=a@news.test", "recipient=r@d.test", "recipient_count=1"}}}, want: prepend("News")},
		{name: "SASL login", reqs: []rq{rcpt("r@d.test"), data(1, "recipient=r@d.test", "sasl_username=marketing")}, want: prepend("News")},
		{name: "client address picks a group member", reqs: []rq{rcpt("r@d.test"), data(1, "recipient=r@d.test", "client_address=192.0.2.99")}, want: "PREPEND X-Binding: P"},
		{name: "policy_context is the service name", reqs: []rq{rcpt("r@d.test"), data(1, "recipient=r@d.test", "policy_context=submission")}, want: prepend("Sub")},
		{name: "Match_Domain without a script rule", reqs: []rq{
			{"RCPT", []string{"sender=u@Dom.Test", "recipient=r@d.test"}},
			{"DATA", []string{"sender=u@Dom.Test", "recipient=r@d.test", "recipient_count=1"}}}, want: prepend("Dom")},
		{name: "nothing matches: default", reqs: []rq{rcpt("r@d.test"), data(1, "recipient=r@d.test")}, want: prepend("default")},
		{name: "second of two recipients, known only from RCPT", reqs: []rq{rcpt("vip@d.test"), rcpt("other@d.test"), data(2)}, want: prepend("VIP")},
		{name: "recipient of a previous message is forgotten", reqs: []rq{
			{"RCPT", []string{"instance=old", "recipient=vip@d.test"}}, rcpt("other@d.test"), data(1)}, want: prepend("default")},
		{name: "rejected recipient does not matter when all agree", reqs: []rq{rcpt("a@d.test"), rcpt("b@d.test"), rcpt("c@d.test"), data(2)}, want: prepend("default")},
		{name: "rejected recipient that would change the binding: On_Policy_Error default", reqs: []rq{rcpt("vip@d.test"), rcpt("b@d.test"), data(1)}, want: prepend("default")},
		{name: "same, On_Policy_Error tempfail", extra: []string{"On_Policy_Error = tempfail"}, reqs: []rq{rcpt("vip@d.test"), rcpt("b@d.test"), data(1)}, want: "451 4.3.0 binding policy failed, try again later"},
		{name: "exact single recipient wins over RCPT list", extra: []string{"On_Policy_Error = tempfail"}, reqs: []rq{rcpt("b@d.test"), rcpt("vip@d.test"), data(1, "recipient=vip@d.test")}, want: prepend("VIP")},
		{name: "recipients the connection never saw: tempfail whatever On_Policy_Error", reqs: []rq{rcpt("r@d.test"), data(3)}, want: "451 4.3.0"},
		{name: "no RCPT seen at all", reqs: []rq{data(2)}, want: "451 4.3.0"},
		{name: "reject", reqs: []rq{rcpt("r@d.test"), data(1, "helo_name=reject.test")}, want: "550 5.7.1 go away"},
		{name: "unknown binding: On_Policy_Error tempfail", extra: []string{"On_Policy_Error = tempfail"}, reqs: []rq{rcpt("r@d.test"), data(1, "queue_id=QERR")}, want: "451 4.3.0 binding policy failed, try again later"},
		{name: "no script", script: "-", reqs: []rq{
			{"RCPT", []string{"sender=u@dom.test", "recipient=r@d.test"}},
			{"DATA", []string{"sender=u@dom.test", "recipient_count=1"}}}, want: prepend("Dom")},
	} {
		t.Run(c.name, func(t *testing.T) {
			script := testScript
			if c.script == "-" {
				script = ""
			}
			cl := dial(t, newServer(t, script, c.extra...))
			for i, r := range c.reqs {
				act, ok := cl.ask(req(r.state, "m1", r.attrs...)...)
				if !ok {
					t.Fatalf("request %d: connection closed", i)
				}
				if i < len(c.reqs)-1 {
					if act != "DUNNO" {
						t.Fatalf("request %d (%s): %q, want DUNNO", i, r.state, act)
					}
					continue
				}
				if !strings.HasPrefix(act, c.want) {
					t.Errorf("DATA: %q, want %q", act, c.want)
				}
			}
		})
	}
}

// TestProtocol checks the framing: several requests per connection, other
// states and request types answered DUNNO, and bad input answered by
// disconnecting (SMTPD_POLICY_README: no reply in case of trouble).
func TestProtocol(t *testing.T) {
	long := "sender=" + strings.Repeat("x", MaxLineBytes)
	many := make([]string, MaxAttributes+1)
	for i := range many {
		many[i] = "x=y"
	}
	for _, c := range []struct {
		name  string
		attrs []string
		want  string // "" = disconnect
	}{
		{"CONNECT", req("CONNECT", "i"), "DUNNO"},
		{"MAIL", req("MAIL", "i", "sender=a@news.test"), "DUNNO"},
		{"END-OF-MESSAGE", req("END-OF-MESSAGE", "i", "sender=a@news.test", "size=100"), "DUNNO"},
		{"other request type", []string{"request=junk", "protocol_state=DATA"}, "DUNNO"},
		{"unknown attributes ignored, CR tolerated", append(req("RCPT", "i", "recipient=r@d.test"), "tls_sni=x\r", "future_attribute=1"), "DUNNO"},
		{"duplicate attribute", append(req("DATA", "i", "sender=a@x.test", "recipient_count=1", "recipient=r@d.test"), "sender=a@news.test"), prepend("News")},
		{"line without =", append(req("RCPT", "i"), "garbage"), ""},
		{"empty name", append(req("RCPT", "i"), "=v"), ""},
		{"bad count", req("DATA", "i", "recipient_count=many"), ""},
		{"line too long", append(req("RCPT", "i"), long), ""},
		{"too many attributes", many, ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl := dial(t, newServer(t, testScript))
			for round := 0; round < 2; round++ {
				act, ok := cl.ask(c.attrs...)
				if c.want == "" {
					if ok {
						t.Fatalf("answered %q, want a disconnect", act)
					}
					return
				}
				if !ok || act != c.want {
					t.Fatalf("round %d: %q (connected %v), want %q", round, act, ok, c.want)
				}
			}
		})
	}
}

// TestStateBounded: recipients beyond MaxRecipients are counted, not kept,
// and a message's state goes at DATA.
func TestStateBounded(t *testing.T) {
	s := newServer(t, testScript)
	var m message
	for i := 0; i < MaxRecipients+10; i++ {
		r := Request{Request: "smtpd_access_policy", State: "RCPT", Instance: "m", Recipient: "r@d.test"}
		if act := s.answer(&m, &r); act != "DUNNO" {
			t.Fatal(act)
		}
	}
	if len(m.to) != MaxRecipients || m.rcpts != MaxRecipients+10 {
		t.Fatalf("kept %d, counted %d", len(m.to), m.rcpts)
	}
	r := Request{Request: "smtpd_access_policy", State: "DATA", Instance: "m", RecipientCount: MaxRecipients + 10}
	s.answer(&m, &r)
	if len(m.to) != 0 || m.rcpts != 0 || m.instance != "" {
		t.Fatalf("state after DATA: %+v", m)
	}
}

// TestSetPolicy: a reload's policy, header name and key answer the next
// message on a connection that stays open (smtpd keeps it for
// policy_time_limit), never a new policy with the old key.
func TestSetPolicy(t *testing.T) {
	s := newServer(t, testScript)
	c := dial(t, s)
	msg := func(inst string) string {
		t.Helper()
		if _, ok := c.ask(req("RCPT", inst, "sender=s@x.test", "recipient=vip@d.test")...); !ok {
			t.Fatal("connection closed at RCPT")
		}
		act, ok := c.ask(req("DATA", inst, "sender=s@x.test", "recipient=vip@d.test", "recipient_count=1")...)
		if !ok {
			t.Fatal("connection closed at DATA")
		}
		return act
	}
	if got := msg("m1"); got != prepend("VIP") {
		t.Fatalf("before reload: %q, want %q", got, prepend("VIP"))
	}
	s.SetPolicy(testPolicy(t, `require ["variables"]; set "binding" "News";`), "X-Route", "n3wk3y")
	if got, want := msg("m2"), "PREPEND X-Route: "+config.BindingHeaderValue("X-Route", "News", "n3wk3y"); got != want {
		t.Fatalf("after reload: %q, want %q", got, want)
	}
}

// TestDataAlone: a policy no recipient can change (no envelope "to", no
// sticky group) is rendered at DATA only, and decides from that request
// whatever the recipient count; one that reads recipients still refuses to
// guess when it saw none of them.
func TestDataAlone(t *testing.T) {
	const conf = `Binding "default" { Bind_Address = 192.0.2.10 }
Binding "News" { Bind_Address = 192.0.2.11 }
Binding "VIP" { Bind_Address = 192.0.2.12 }
Binding_Group "Pool" { Selection = random  Binding "P1" { Bind_Address = 192.0.2.21 } }
`
	const senderOnly = `require ["envelope", "variables"];
if envelope :domain :is "from" "news.test" { set "binding" "News"; stop; }
`
	const readsTo = senderOnly + `if envelope :localpart :is "to" "vip" { set "binding" "VIP"; stop; }
`
	for _, c := range []struct {
		name, script string
		attrs        []string
		want         string
	}{
		{"sender places, three recipients unseen", senderOnly, []string{"sender=a@news.test", "recipient_count=3"}, prepend("News")},
		{"nothing matches", senderOnly, []string{"sender=a@other.test", "recipient_count=2"}, prepend("default")},
		{"one recipient named at DATA", senderOnly, []string{"sender=a@news.test", "recipient=r@d.test", "recipient_count=1"}, prepend("News")},
		{"script reads recipients it never saw", readsTo, []string{"sender=a@other.test", "recipient_count=2"}, "451 4.3.0"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			script := filepath.Join(dir, "policy.sieve")
			if err := os.WriteFile(script, []byte(c.script), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Parse(filepath.Join(dir, "t.conf"), []byte("Sieve_Script = "+quote(script)+"\n"+conf))
			if err != nil {
				t.Fatal(err)
			}
			pol, err := sieve.New(cfg, sieve.Options{})
			if err != nil {
				t.Fatal(err)
			}
			cl := dial(t, New(pol, Options{BindingHeader: "X-Binding", HeaderKey: key, Log: quietLog()}))
			act, ok := cl.ask(req("DATA", "m1", c.attrs...)...)
			if !ok || !strings.HasPrefix(act, c.want) {
				t.Errorf("DATA: %q (open %v), want %q", act, ok, c.want)
			}
		})
	}
}

// TestDecisionLog: the policy service logs one line per decision with the
// fields the milter's decision line has (queue id, split, trace with the
// script line).
func TestDecisionLog(t *testing.T) {
	var buf bytes.Buffer
	s := New(testPolicy(t, testScript), Options{BindingHeader: "X-Binding", HeaderKey: key, Daemon: "mta.test",
		Log: slog.New(slog.NewTextHandler(&buf, nil))})
	cl := dial(t, s)
	// "Sub" is set in one place only, so the trace can name its line.
	if act, ok := cl.ask(req("DATA", "m1", "sender=a@other.test", "recipient=r@d.test", "recipient_count=1", "queue_id=4QID", "policy_context=submission")...); !ok || act != prepend("Sub") {
		t.Fatalf("DATA: %q (open %v), want %q", act, ok, prepend("Sub"))
	}
	line := buf.String()
	for _, want := range []string{`msg="policy decision"`, " queue_id=4QID ", " binding=Sub ", " split=false ", `trace="script (line 6): binding = Sub"`} {
		if !strings.Contains(line, want) {
			t.Errorf("log line lacks %s:\n%s", want, line)
		}
	}
}
