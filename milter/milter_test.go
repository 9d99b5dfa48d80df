package milter

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-message/textproto"
	gomilter "github.com/emersion/go-milter"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// fakeDecider stands in for *sieve.Policy so each milter behaviour can be
// driven on its own; it decides from the sender domain and the macros.
type fakeDecider struct {
	needs sieve.Needs
	cfg   *config.Config
	calls atomic.Int64
	last  atomic.Pointer[sieve.Message]
}

func (f *fakeDecider) Needs() sieve.Needs     { return f.needs }
func (f *fakeDecider) Config() *config.Config { return f.cfg }
func (f *fakeDecider) Decide(_ context.Context, m *sieve.Message) sieve.Decision {
	f.calls.Add(1)
	cp := *m
	f.last.Store(&cp)
	_, dom, _ := strings.Cut(m.From, "@")
	switch dom {
	case "reject.test":
		return sieve.Decision{Binding: "default", Reason: sieve.ReasonReject, Action: sieve.Reject, RejectText: "no thanks"}
	case "fail.test":
		return sieve.Decision{Binding: "default", Reason: sieve.ReasonPolicyError, Action: sieve.Tempfail, Err: errors.New("unknown binding")}
	case "panic.test":
		panic("policy blew up")
	case "gone.test":
		return sieve.Decision{Binding: "Pool2", Group: "Pool", Reason: sieve.ReasonScript, Unavailable: 2, Trace: []sieve.Step{
			{Rule: "script", Line: 3, Detail: "binding = Pool"},
			{Rule: "group", Detail: "Pool (sticky): picked Pool2; skipped Pool1 (address not on host)"}}}
	case "":
		return sieve.Decision{Binding: "default", Reason: sieve.ReasonFallback}
	}
	if m.Daemon != "" {
		return sieve.Decision{Binding: m.Daemon, Reason: sieve.ReasonScript}
	}
	return sieve.Decision{Binding: strings.TrimSuffix(dom, ".test"), Reason: sieve.ReasonMatchDomain}
}

func newFake() *fakeDecider {
	return &fakeDecider{cfg: &config.Config{BindingHeader: "X-Binding", MaxBodyBytes: 1 << 20}}
}

// start serves s on a real unix or TCP socket and returns a client for it.
func start(t *testing.T, s *Server, network string) *gomilter.Client {
	t.Helper()
	addr := config.Listen{Network: "tcp", Address: "127.0.0.1:0"}
	if network == "unix" {
		addr = config.Listen{Network: "unix", Address: filepath.Join(t.TempDir(), "m.sock")}
	}
	ln, err := s.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return gomilter.NewClientWithOptions(ln.Addr().Network(), ln.Addr().String(), gomilter.ClientOptions{
		Dialer:       &net.Dialer{},
		ActionMask:   gomilter.OptAddHeader | gomilter.OptChangeHeader,
		ProtocolMask: (protocol(true) | protocol(false)) & 0x7f,
	})
}

type msg struct {
	from    string
	headers [][2]string
	macros  []string // sent with MAIL
}

type result struct {
	mods []gomilter.ModifyAction
	act  *gomilter.Action
}

func send(t *testing.T, cs *gomilter.ClientSession, m msg) result {
	t.Helper()
	if len(m.macros) > 0 {
		if err := cs.Macros(gomilter.CodeMail, m.macros...); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := cs.Mail("<"+m.from+">", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Rcpt("<rcpt@example.net>", nil); err != nil {
		t.Fatal(err)
	}
	var h textproto.Header
	for i := len(m.headers) - 1; i >= 0; i-- {
		h.Add(m.headers[i][0], m.headers[i][1])
	}
	if _, err := cs.Header(h); err != nil {
		t.Fatal(err)
	}
	mods, act, err := cs.BodyReadFrom(strings.NewReader("hello\r\n"))
	if err != nil {
		t.Fatal(err)
	}
	return result{mods, act}
}

func newSess(t *testing.T, c *gomilter.Client) *gomilter.ClientSession {
	t.Helper()
	cs, err := c.Session()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Conn("client.example", gomilter.FamilyInet, 2525, "192.0.2.7"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	return cs
}

// deleted returns the indices of binding headers deleted and the values added.
func summarize(mods []gomilter.ModifyAction) (deleted []uint32, added []string) {
	for _, m := range mods {
		switch m.Code {
		case gomilter.ActChangeHeader:
			if strings.EqualFold(m.HeaderName, "X-Binding") && m.HeaderValue == "" {
				deleted = append(deleted, m.HeaderIndex)
			}
		case gomilter.ActAddHeader:
			added = append(added, m.HeaderName+": "+m.HeaderValue)
		}
	}
	return
}

func TestMessages(t *testing.T) {
	cases := []struct {
		name    string
		m       msg
		deleted []uint32
		added   []string
		code    gomilter.ActionCode
		smtp    int
	}{
		{"no spoof", msg{from: "a@blue.test", headers: [][2]string{{"Subject", "x"}}}, nil, []string{"X-Binding: blue"}, gomilter.ActAccept, 0},
		{"one spoof", msg{from: "a@blue.test", headers: [][2]string{{"X-Binding", "evil"}}}, []uint32{1}, []string{"X-Binding: blue"}, gomilter.ActAccept, 0},
		{"two spoofs", msg{from: "a@red.test", headers: [][2]string{{"X-Binding", "e1"}, {"Subject", "s"}, {"X-Binding", "e2"}}}, []uint32{2, 1}, []string{"X-Binding: red"}, gomilter.ActAccept, 0},
		{"three mixed case", msg{from: "a@red.test", headers: [][2]string{{"x-binding", "e1"}, {"X-BINDING", "e2"}, {"X-Binding", "e3"}}}, []uint32{3, 2, 1}, []string{"X-Binding: red"}, gomilter.ActAccept, 0},
		{"null sender default", msg{from: "", headers: [][2]string{{"Subject", "x"}}}, nil, []string{"X-Binding: default"}, gomilter.ActAccept, 0},
		{"macro daemon", msg{from: "a@blue.test", macros: []string{"i", "QID1", "{daemon_name}", "submission"}}, nil, []string{"X-Binding: submission"}, gomilter.ActAccept, 0},
		{"reject", msg{from: "a@reject.test", headers: [][2]string{{"X-Binding", "e"}}}, nil, nil, gomilter.ActReplyCode, 550},
		{"tempfail", msg{from: "a@fail.test"}, nil, nil, gomilter.ActReplyCode, 451},
		{"panic", msg{from: "a@panic.test"}, nil, nil, gomilter.ActTempFail, 0},
	}
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			s := New(newFake(), nil)
			c := start(t, s, network)
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					cs := newSess(t, c)
					r := send(t, cs, tc.m)
					if r.act.Code != tc.code || (tc.smtp != 0 && r.act.SMTPCode != tc.smtp) {
						t.Fatalf("action = %+v, want code %c smtp %d", r.act, tc.code, tc.smtp)
					}
					del, add := summarize(r.mods)
					if !equal(del, tc.deleted) || !equal(add, tc.added) {
						t.Fatalf("deleted %v added %v, want %v %v", del, add, tc.deleted, tc.added)
					}
				})
			}
			if got := testutilCount(s.Metrics().Panics); got != 1 {
				t.Errorf("panics_total = %v, want 1", got)
			}
		})
	}
}

func TestAbortAndTwoMessages(t *testing.T) {
	f := newFake()
	s := New(f, nil)
	cs := newSess(t, start(t, s, "unix"))
	// First message aborted after a spoofed header and a queue id.
	if err := cs.Macros(gomilter.CodeMail, "i", "ABORTED", "{auth_authen}", "alice"); err != nil {
		t.Fatal(err)
	}
	cs.Mail("<a@blue.test>", nil)
	cs.Rcpt("<x@example.net>", nil)
	cs.HeaderField("X-Binding", "evil")
	if err := cs.Abort(); err != nil {
		t.Fatal(err)
	}
	for i, from := range []string{"b@red.test", "c@blue.test"} {
		r := send(t, cs, msg{from: from})
		del, add := summarize(r.mods)
		want := strings.TrimSuffix(strings.Split(from, "@")[1], ".test")
		if len(del) != 0 || !equal(add, []string{"X-Binding: " + want}) {
			t.Fatalf("message %d: deleted %v added %v", i, del, add)
		}
		last := f.last.Load()
		if last.QueueID != "" || last.Auth != "" || len(last.To) != 1 || last.RemoteIP != "192.0.2.7" {
			t.Fatalf("message %d: stale state %+v", i, last)
		}
	}
}

func TestSetPolicy(t *testing.T) {
	a, b := newFake(), newFake()
	b.cfg = &config.Config{BindingHeader: "X-Other", MaxBodyBytes: 10}
	s := New(a, nil)
	c := start(t, s, "tcp")
	send(t, newSess(t, c), msg{from: "a@blue.test"})
	s.SetPolicy(b)
	r := send(t, newSess(t, c), msg{from: "a@blue.test", headers: [][2]string{{"X-Other", "e"}}})
	if _, add := summarize(r.mods); !equal(add, []string{"X-Other: blue"}) || b.calls.Load() != 1 || a.calls.Load() != 1 {
		t.Fatalf("after SetPolicy: added %v, calls a=%d b=%d", add, a.calls.Load(), b.calls.Load())
	}
}

func TestShutdownWaitsForSession(t *testing.T) {
	s := New(newFake(), nil)
	c := start(t, s, "tcp")
	cs := newSess(t, c)
	cs.Mail("<a@blue.test>", nil)
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	// The message in flight completes after Shutdown began.
	cs.Rcpt("<x@example.net>", nil)
	mods, act, err := cs.End()
	if err != nil || act.Code != gomilter.ActAccept {
		t.Fatalf("in-flight message: %v %+v", err, act)
	}
	if _, add := summarize(mods); !equal(add, []string{"X-Binding: blue"}) {
		t.Fatalf("added %v", add)
	}
	cs.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := c.Session(); err == nil {
		t.Fatal("new connection accepted after Shutdown")
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestUnavailableCounted: group members skipped for a missing address are
// counted in vipmilter_milter_group_members_unavailable_total.
func TestUnavailableCounted(t *testing.T) {
	var logs bytes.Buffer
	s := New(newFake(), slog.New(slog.NewTextHandler(&logs, nil)))
	c := start(t, s, "unix")
	for range 3 {
		send(t, newSess(t, c), msg{from: "a@gone.test"})
	}
	send(t, newSess(t, c), msg{from: "a@blue.test"})
	if got := testutilCount(s.Metrics().Unavailable); got != 6 {
		t.Errorf("unavailable_total = %v, want 6", got)
	}
	// The decision line carries the trace, so the skip is in the log too.
	want := `trace="script (line 3): binding = Pool; group: Pool (sticky): picked Pool2; skipped Pool1 (address not on host)"`
	if n := strings.Count(logs.String(), want); n != 3 {
		t.Errorf("log has %d decision lines with %s, want 3:\n%s", n, want, logs.String())
	}
}
