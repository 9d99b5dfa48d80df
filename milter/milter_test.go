package milter

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/emersion/go-message/textproto"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// fakeDecider stands in for *sieve.Policy so each milter behaviour can be
// driven on its own; it decides from the sender domain and the macros.
type fakeDecider struct {
	needs sieve.Needs
	calls atomic.Int64
	last  atomic.Pointer[sieve.Message]
}

func (f *fakeDecider) Needs() sieve.Needs { return f.needs }
func (f *fakeDecider) Decide(_ context.Context, m *sieve.Message) sieve.Decision {
	f.calls.Add(1)
	cp := *m
	f.last.Store(&cp)
	_, dom, _ := strings.Cut(m.From, "@")
	switch dom {
	case "reject.test":
		return sieve.Decision{Reason: sieve.ReasonReject, Action: sieve.Reject, RejectText: "no thanks"}
	case "fail.test":
		return sieve.Decision{Reason: sieve.ReasonPolicyError, Action: sieve.Tempfail, Err: errors.New("unknown binding")}
	case "panic.test":
		panic("policy blew up")
	case "gone.test":
		return sieve.Decision{Binding: "Pool2", Group: "Pool", Reason: sieve.ReasonScript, Unavailable: 2, Trace: []sieve.Step{
			{Rule: "script", Line: 3, Detail: "binding = Pool"},
			{Rule: "group", Detail: "Pool (sticky): picked Pool2; skipped Pool1 (address not on host)"}}}
	case "list.test":
		if m.Header.Get("List-Id") != "" {
			return sieve.Decision{Binding: "list", Reason: sieve.ReasonScript}
		}
		return sieve.Decision{Binding: "default", Reason: sieve.ReasonFallback}
	case "":
		return sieve.Decision{Binding: "default", Reason: sieve.ReasonFallback}
	}
	if m.Daemon != "" {
		return sieve.Decision{Binding: m.Daemon, Reason: sieve.ReasonScript}
	}
	return sieve.Decision{Binding: strings.TrimSuffix(dom, ".test"), Reason: sieve.ReasonMatchDomain}
}

func newFake() *fakeDecider { return &fakeDecider{needs: sieve.Needs{Headers: true}} }

const testKey = "0123456789abcdef0123456789abcdef"

func testSettings() Settings { return Settings{BindingHeader: "X-Binding", HeaderKey: testKey} }

func quietLog() *slog.Logger { return slog.New(slog.DiscardHandler) }

// serve serves s on a real unix or TCP socket and returns its address.
func serve(t testing.TB, s *Server, network string) net.Addr {
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
	return ln.Addr()
}

// start serves s and returns a client that negotiates like Postfix.
func start(t testing.TB, s *Server, network string) *gomilter.Client {
	t.Helper()
	a := serve(t, s, network)
	return newClient(a.Network(), a.String())
}

func newClient(network, addr string) *gomilter.Client {
	return gomilter.NewClient(network, addr, gomilter.WithReadTimeout(5*time.Second), gomilter.WithWriteTimeout(5*time.Second))
}

type msg struct {
	from    string
	rcpts   []string
	headers [][2]string
	macros  map[string]string // set before MAIL
	daemon  string            // {daemon_name}, sent at connect
	body    string
}

type result struct {
	mods []gomilter.ModifyAction
	act  *gomilter.Action
}

// client is one MTA session: the macros it sends and the session.
type client struct {
	bag *gomilter.MacroBag
	cs  *gomilter.ClientSession
}

// newSess opens a session; connMacros (name, value, …) are sent at connect
// besides the client's address and name.
func newSess(t testing.TB, c *gomilter.Client, helo string, connMacros ...string) *client {
	t.Helper()
	bag := gomilter.NewMacroBag()
	bag.Set(gomilter.MacroClientAddr, "192.0.2.7")
	bag.Set(gomilter.MacroClientName, "client.example")
	for i := 0; i+1 < len(connMacros); i += 2 {
		bag.Set(connMacros[i], connMacros[i+1])
	}
	cs, err := c.Session(bag)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cs.Close() })
	if _, err := cs.Conn("client.example", gomilter.FamilyInet, 2525, "192.0.2.7"); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.Helo(helo); err != nil {
		t.Fatal(err)
	}
	return &client{bag: bag, cs: cs}
}

func (c *client) send(t testing.TB, m msg) result {
	t.Helper()
	for k, v := range m.macros {
		c.bag.Set(k, v)
	}
	if _, err := c.cs.Mail(m.from, ""); err != nil {
		t.Fatal(err)
	}
	rcpts := m.rcpts
	if rcpts == nil {
		rcpts = []string{"rcpt@example.net"}
	}
	for _, r := range rcpts {
		if _, err := c.cs.Rcpt(r, ""); err != nil {
			t.Fatal(err)
		}
	}
	var h textproto.Header
	for i := len(m.headers) - 1; i >= 0; i-- {
		h.Add(m.headers[i][0], m.headers[i][1])
	}
	if _, err := c.cs.Header(h); err != nil {
		t.Fatal(err)
	}
	body := m.body
	if body == "" {
		body = "hello\r\n"
	}
	mods, act, err := c.cs.BodyReadFrom(strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return result{mods, act}
}

// summarize returns the header changes (deletions) and the added headers.
func summarize(mods []gomilter.ModifyAction) (changed, added []string) {
	for _, m := range mods {
		switch m.Type {
		case gomilter.ActionAddHeader:
			// The spaces that keep the key out of Postfix's log
			// (config.BindingHeaderValue, tested there) read as one.
			added = append(added, m.HeaderName+": "+strings.Join(strings.Fields(m.HeaderValue), " "))
		default:
			changed = append(changed, m.String())
		}
	}
	return
}

func TestMessages(t *testing.T) {
	cases := []struct {
		name  string
		m     msg
		onErr config.PolicyErrorAction
		added []string
		act   gomilter.ActionType
		smtp  uint16
	}{
		{"plain", msg{from: "a@blue.test", headers: [][2]string{{"Subject", "x"}}}, "", []string{"X-Binding: blue " + testKey}, gomilter.ActionAccept, 0},
		// Client copies are left for the MTA to strip (the Postfix side
		// ignores binding headers without the key on entry).
		{"client copies kept", msg{from: "a@red.test", headers: [][2]string{{"X-Binding", "e1"}, {"Subject", "s"}, {"x-binding", "e2"}}}, "", []string{"X-Binding: red " + testKey}, gomilter.ActionAccept, 0},
		{"null sender", msg{from: "", headers: [][2]string{{"Subject", "x"}}}, "", []string{"X-Binding: default " + testKey}, gomilter.ActionAccept, 0},
		{"daemon macro", msg{from: "a@blue.test", daemon: "submission"}, "", []string{"X-Binding: submission " + testKey}, gomilter.ActionAccept, 0},
		{"reject", msg{from: "a@reject.test"}, "", nil, gomilter.ActionRejectWithCode, 550},
		{"tempfail", msg{from: "a@fail.test"}, "", nil, gomilter.ActionRejectWithCode, 451},
		{"panic, On_Policy_Error default", msg{from: "a@panic.test"}, config.PolicyErrorDefault, []string{"X-Binding: default " + testKey}, gomilter.ActionAccept, 0},
		{"panic, On_Policy_Error tempfail", msg{from: "a@panic.test"}, config.PolicyErrorTempfail, nil, gomilter.ActionRejectWithCode, 451},
	}
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					st := testSettings()
					st.OnPolicyError = tc.onErr
					s := New(newFake(), st, quietLog())
					var conn []string
					if tc.m.daemon != "" {
						conn = []string{gomilter.MacroDaemonName, tc.m.daemon}
					}
					c := newSess(t, start(t, s, network), "client.example", conn...)
					r := c.send(t, tc.m)
					if r.act.Type != tc.act || (tc.smtp != 0 && r.act.SMTPCode != tc.smtp) {
						t.Fatalf("action = %v, want type %d smtp %d", r.act, tc.act, tc.smtp)
					}
					changed, added := summarize(r.mods)
					if len(changed) != 0 || !equal(added, tc.added) {
						t.Fatalf("changed %v added %q, want added %q", changed, added, tc.added)
					}
					wantPanics := 0.0
					if strings.HasPrefix(tc.name, "panic") {
						wantPanics = 1
					}
					if got := testutilCount(s.Metrics().panics); got != wantPanics {
						t.Errorf("panics_total = %v, want %v", got, wantPanics)
					}
				})
			}
		})
	}
}

// TestMessageStateResets: Sendmail sends no ABORT between accepted
// messages of one session, so everything per message resets at MAIL; an
// aborted message leaves nothing behind either.
func TestMessageStateResets(t *testing.T) {
	f := newFake()
	s := New(f, testSettings(), quietLog())
	c := newSess(t, start(t, s, "unix"), "client.example")

	// Aborted message: queue id, login, a header, recipients.
	c.bag.Set("{auth_authen}", "alice")
	c.cs.Mail("a@list.test", "")
	c.cs.Rcpt("x@example.net", "")
	c.cs.Header(headerOf([][2]string{{"List-Id", "<aborted.example>"}}))
	if err := c.cs.Abort(nil); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		m       msg
		binding string
	}{
		{msg{from: "a@list.test", headers: [][2]string{{"List-Id", "<news.example>"}}, macros: map[string]string{"i": "QID1", "{auth_authen}": "bob"}}, "list"},
		{msg{from: "a@list.test", headers: [][2]string{{"Subject", "no list"}}, macros: map[string]string{"i": "QID2", "{auth_authen}": ""}}, "default"},
		{msg{from: "b@red.test", rcpts: []string{"y@example.net", "z@example.org"}}, "red"},
	}
	for i, st := range steps {
		r := c.send(t, st.m)
		if _, add := summarize(r.mods); !equal(add, []string{"X-Binding: " + st.binding + " " + testKey}) {
			t.Fatalf("message %d: added %q, want binding %s", i+1, add, st.binding)
		}
		last := f.last.Load()
		if i == 1 && (last.Header.Get("List-Id") != "" || last.Auth != "" || last.QueueID != "QID2") {
			t.Fatalf("message 2 sees message 1's state: %+v", last)
		}
		if want := max(len(st.m.rcpts), 1); len(last.To) != want || last.RemoteIP != "192.0.2.7" || last.Helo != "" {
			t.Fatalf("message %d: %+v", i+1, last)
		}
	}
}

func headerOf(fields [][2]string) textproto.Header {
	var h textproto.Header
	for i := len(fields) - 1; i >= 0; i-- {
		h.Add(fields[i][0], fields[i][1])
	}
	return h
}

// TestHeloWhenNeeded: HELO reaches the policy when it reads it, and is not
// negotiated otherwise.
func TestHeloWhenNeeded(t *testing.T) {
	for _, needs := range []bool{true, false} {
		f := newFake()
		f.needs.Helo = needs
		s := New(f, testSettings(), quietLog())
		c := newSess(t, start(t, s, "tcp"), "client.example.net")
		c.send(t, msg{from: "a@blue.test"})
		want := ""
		if needs {
			want = "client.example.net"
		}
		if got := f.last.Load().Helo; got != want {
			t.Errorf("needs.Helo=%v: Helo = %q, want %q", needs, got, want)
		}
		if got := c.cs.ProtocolOption(gomilter.OptNoHelo); got == needs {
			t.Errorf("needs.Helo=%v: OptNoHelo negotiated = %v", needs, got)
		}
	}
}

// TestStagesNegotiated: only what the policy reads is sent, and only end of
// message is answered.
func TestStagesNegotiated(t *testing.T) {
	cases := []struct {
		needs sieve.Needs
		on    gomilter.OptProtocol // stages that must be off
		off   gomilter.OptProtocol // stages that must be on
	}{
		{sieve.Needs{}, gomilter.OptNoHeaders | gomilter.OptNoBody | gomilter.OptNoHelo | gomilter.OptNoConnect, gomilter.OptNoMailFrom | gomilter.OptNoRcptTo},
		{sieve.Needs{Headers: true}, gomilter.OptNoBody | gomilter.OptNoHeaderReply, gomilter.OptNoHeaders},
		{sieve.Needs{Body: true}, gomilter.OptNoHeaders | gomilter.OptNoBodyReply, gomilter.OptNoBody},
		{sieve.Needs{Size: true}, gomilter.OptNoHeaderReply | gomilter.OptNoBodyReply, gomilter.OptNoHeaders | gomilter.OptNoBody},
	}
	for _, tc := range cases {
		p := protocol(tc.needs)
		if p&tc.on != tc.on || p&tc.off != 0 {
			t.Errorf("needs %+v: protocol %v", tc.needs, p)
		}
		if p&(gomilter.OptNoMailReply|gomilter.OptNoRcptReply) == 0 {
			t.Errorf("needs %+v: MAIL/RCPT answered: %v", tc.needs, p)
		}
	}
}

// TestSize: the size counts headers and body even when neither is kept.
func TestSize(t *testing.T) {
	f := &fakeDecider{needs: sieve.Needs{Size: true}}
	s := New(f, testSettings(), quietLog())
	c := newSess(t, start(t, s, "unix"), "h")
	c.send(t, msg{from: "a@blue.test", headers: [][2]string{{"Subject", "abc"}}, body: strings.Repeat("x", 1000)})
	last := f.last.Load()
	// "Subject: abc\r\n" (14 bytes; the MTA passes " abc" or "abc") + CRLF + body.
	if last.Size < 1000+14 || last.Size > 1000+18 || last.Header != nil || last.Body != nil {
		t.Fatalf("size %d header %v body %d", last.Size, last.Header, len(last.Body))
	}
}

// filterDecider reads only the headers it names.
type filterDecider struct {
	fakeDecider
	reads []string
}

func (f *filterDecider) ReadsHeader(name string) bool {
	for _, r := range f.reads {
		if strings.EqualFold(r, name) {
			return true
		}
	}
	return false
}

// TestHeadersKept: only fields the policy reads are kept, up to
// MaxHeaderBytes; the rest is counted.
func TestHeadersKept(t *testing.T) {
	fields := [][2]string{{"Subject", strings.Repeat("s", 50)}, {"List-Id", "<a.example>"}, {"Received", strings.Repeat("r", 100)}, {"List-Id", strings.Repeat("l", 100)}}
	cases := []struct {
		name   string
		d      Decider
		max    int64
		want   []string // kept field names in order
		capped float64
	}{
		{"all", newFake(), 0, []string{"Subject", "List-Id", "Received", "List-Id"}, 0},
		{"capped", newFake(), 200, []string{"Subject", "List-Id", "Received"}, 1},
		{"filtered", &filterDecider{fakeDecider{needs: sieve.Needs{Headers: true}}, []string{"list-id"}}, 0, []string{"List-Id", "List-Id"}, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st := testSettings()
			st.MaxHeaderBytes = tc.max
			s := New(tc.d, st, quietLog())
			c := newSess(t, start(t, s, "unix"), "h")
			c.send(t, msg{from: "a@blue.test", headers: fields})
			var last *sieve.Message
			switch d := tc.d.(type) {
			case *fakeDecider:
				last = d.last.Load()
			case *filterDecider:
				last = d.last.Load()
			}
			for _, name := range tc.want {
				if len(last.Header.Values(name)) == 0 {
					t.Errorf("%s not kept", name)
				}
			}
			got := 0
			for _, vs := range last.Header {
				got += len(vs)
			}
			if got != len(tc.want) {
				t.Errorf("kept %d fields %v, want %v", got, last.Header, tc.want)
			}
			if c := testutilCount(s.Metrics().headersCapped); c != tc.capped {
				t.Errorf("headers_capped_total = %v, want %v", c, tc.capped)
			}
		})
	}
}

// TestDecided: the callback sees each accepted message once, with its queue
// id, and no rejected one.
func TestDecided(t *testing.T) {
	var mu sync.Mutex
	var got []string
	st := testSettings()
	st.Decided = func(qid, binding string) {
		mu.Lock()
		got = append(got, qid+"="+binding)
		mu.Unlock()
	}
	s := New(newFake(), st, quietLog())
	c := newSess(t, start(t, s, "tcp"), "h")
	c.send(t, msg{from: "a@blue.test", macros: map[string]string{"i": "Q1"}})
	c.send(t, msg{from: "a@reject.test", macros: map[string]string{"i": "Q2"}})
	c.send(t, msg{from: "a@red.test", macros: map[string]string{"i": "Q3"}})
	mu.Lock()
	defer mu.Unlock()
	if !equal(got, []string{"Q1=blue", "Q3=red"}) {
		t.Fatalf("Decided calls %q", got)
	}
}

// TestNoHeader: with NoHeader (a Sendmail host) the decision reaches Decided
// and no header is written, so nothing carries it to recipients.
func TestNoHeader(t *testing.T) {
	var got []string
	var mu sync.Mutex
	st := testSettings()
	st.NoHeader = true
	st.Decided = func(qid, binding string) {
		mu.Lock()
		got = append(got, qid+"="+binding)
		mu.Unlock()
	}
	c := newSess(t, start(t, New(newFake(), st, quietLog()), "tcp"), "h")
	r := c.send(t, msg{from: "a@blue.test", macros: map[string]string{"i": "Q1"}})
	if _, add := summarize(r.mods); len(add) != 0 {
		t.Errorf("NoHeader: added %v", add)
	}
	mu.Lock()
	defer mu.Unlock()
	if !equal(got, []string{"Q1=blue"}) {
		t.Fatalf("Decided calls %q", got)
	}
}

func TestSetPolicy(t *testing.T) {
	a, b := newFake(), newFake()
	s := New(a, testSettings(), quietLog())
	c := start(t, s, "tcp")
	old := newSess(t, c, "h") // negotiated before the reload
	newSess(t, c, "h").send(t, msg{from: "a@blue.test"})
	s.SetPolicy(b, Settings{BindingHeader: "X-Other"})
	r := newSess(t, c, "h").send(t, msg{from: "a@blue.test"})
	if _, add := summarize(r.mods); !equal(add, []string{"X-Other: blue"}) || b.calls.Load() != 1 || a.calls.Load() != 1 {
		t.Fatalf("after SetPolicy: added %v, calls a=%d b=%d", add, a.calls.Load(), b.calls.Load())
	}
	// The session opened before the reload keeps its policy.
	r = old.send(t, msg{from: "a@red.test"})
	if _, add := summarize(r.mods); !equal(add, []string{"X-Binding: red " + testKey}) || a.calls.Load() != 2 {
		t.Fatalf("old session after SetPolicy: added %v, calls a=%d", add, a.calls.Load())
	}
}

func TestShutdownWaitsForSession(t *testing.T) {
	s := New(newFake(), testSettings(), quietLog())
	c := start(t, s, "tcp")
	cl := newSess(t, c, "h")
	cl.cs.Mail("a@blue.test", "")
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	time.Sleep(50 * time.Millisecond)
	// The message in flight completes after Shutdown began.
	cl.cs.Rcpt("x@example.net", "")
	cl.cs.Header(textproto.Header{})
	mods, act, err := cl.cs.BodyReadFrom(strings.NewReader("x"))
	if err != nil || act.Type != gomilter.ActionAccept {
		t.Fatalf("in-flight message: %v %v", err, act)
	}
	if _, add := summarize(mods); !equal(add, []string{"X-Binding: blue " + testKey}) {
		t.Fatalf("added %v", add)
	}
	cl.cs.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := c.Session(nil); err == nil {
		t.Fatal("new connection accepted after Shutdown")
	}
}

// TestShutdownTimeout: a session that does not finish within the grace
// period is cut off, and Shutdown reports it.
func TestShutdownTimeout(t *testing.T) {
	s := New(newFake(), testSettings(), quietLog())
	cl := newSess(t, start(t, s, "unix"), "h")
	if _, err := cl.cs.Mail("a@blue.test", ""); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown = nil with a session in flight")
	}
	cl.cs.Rcpt("x@example.net", "")
	cl.cs.Header(textproto.Header{})
	if _, _, err := cl.cs.BodyReadFrom(strings.NewReader("x")); err == nil {
		t.Fatal("session still served after the grace period")
	}
	waitUntracked(t, s)
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
// counted, and the decision line carries the trace.
func TestUnavailableCounted(t *testing.T) {
	var logs bytes.Buffer
	var mu sync.Mutex
	s := New(newFake(), testSettings(), slog.New(slog.NewTextHandler(&lockedWriter{w: &logs, mu: &mu}, nil)))
	c := start(t, s, "unix")
	for range 3 {
		newSess(t, c, "h").send(t, msg{from: "a@gone.test"})
	}
	newSess(t, c, "h").send(t, msg{from: "a@blue.test"})
	if got := testutilCount(s.Metrics().unavailable); got != 6 {
		t.Errorf("unavailable_total = %v, want 6", got)
	}
	want := `trace="script (line 3): binding = Pool; group: Pool (sticky): picked Pool2; skipped Pool1 (address not on host)"`
	mu.Lock()
	defer mu.Unlock()
	if n := strings.Count(logs.String(), want); n != 3 {
		t.Errorf("log has %d decision lines with %s, want 3:\n%s", n, want, logs.String())
	}
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
