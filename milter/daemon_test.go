package milter

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/config"
)

// flakyListener fails its first accepts like a process out of file
// descriptors.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: &osSyscallError{syscall.EMFILE}}
	}
	return l.Listener.Accept()
}

type osSyscallError struct{ errno syscall.Errno }

func (e *osSyscallError) Error() string { return "accept4: " + e.errno.Error() }
func (e *osSyscallError) Unwrap() error { return e.errno }

// TestAcceptErrorsBackOff: EMFILE does not end Serve; it is counted and
// serving resumes.
func TestAcceptErrorsBackOff(t *testing.T) {
	s := New(newFake(), testSettings(), quietLog())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	fl := &flakyListener{Listener: ln}
	fl.fails.Store(4)
	served := make(chan error, 1)
	go func() { served <- s.Serve(fl) }()
	t.Cleanup(func() { s.Shutdown(t.Context()) })
	c := newSess(t, newClient("tcp", ln.Addr().String()), "h")
	r := c.send(t, msg{from: "a@blue.test"})
	if _, add := summarize(r.mods); !equal(add, []string{"X-Binding: blue " + testKey}) {
		t.Fatalf("added %q", add)
	}
	select {
	case err := <-served:
		t.Fatalf("Serve ended: %v", err)
	default:
	}
	if got := testutilCount(s.Metrics().acceptErrors); got != 4 {
		t.Fatalf("accept_errors_total = %v, want 4", got)
	}
}

// TestConnectionCap: past MaxConnections a connection waits until one
// closes.
func TestConnectionCap(t *testing.T) {
	st := testSettings()
	st.MaxConnections = 2
	s := New(newFake(), st, quietLog())
	c := start(t, s, "unix")
	a, b := newSess(t, c, "h"), newSess(t, c, "h")
	third := make(chan error, 1)
	go func() {
		cs, err := c.Session(nil)
		if err == nil {
			cs.Close()
		}
		third <- err
	}()
	select {
	case err := <-third:
		t.Fatalf("third session negotiated with the cap at 2 (err %v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	a.cs.Close()
	if err := <-third; err != nil {
		t.Fatalf("third session after one closed: %v", err)
	}
	b.send(t, msg{from: "a@blue.test"})
	if got := testutilCount(s.Metrics().connCapped); got < 1 {
		t.Fatalf("connection_cap_reached_total = %v", got)
	}
}

// TestReadTimeouts: a connection that sends nothing is closed after the
// negotiation limit, an idle negotiated one after CommandTimeout, a packet
// stalled halfway after PacketTimeout.
func TestReadTimeouts(t *testing.T) {
	st := testSettings()
	st.CommandTimeout = 400 * time.Millisecond
	st.PacketTimeout = 200 * time.Millisecond
	s := New(newFake(), st, quietLog())
	addr := serve(t, s, "tcp")
	cases := []struct {
		name       string
		send       []byte
		minT, maxT time.Duration
	}{
		{"nothing", nil, 900 * time.Millisecond, 3 * time.Second},
		{"idle after negotiation", wire(optneg()), 350 * time.Millisecond, 3 * time.Second},
		{"stalled packet", append(wire(optneg()), 0, 0, 0, 20, 'M', 'x'), 150 * time.Millisecond, 350 * time.Millisecond},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", addr.String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			start := time.Now()
			conn.Write(tc.send)
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.Copy(io.Discard, conn) // until the server closes
			if el := time.Since(start); el < tc.minT || el > tc.maxT {
				t.Fatalf("closed after %v, want %v..%v", el, tc.minT, tc.maxT)
			}
		})
	}
	waitUntracked(t, s)
}

// waitUntracked fails unless every session's bookkeeping ends soon: the
// server closes a connection before it releases it.
func waitUntracked(t testing.TB, s *Server) {
	t.Helper()
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		n := len(s.active)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d sessions still tracked", n)
		}
	}
}

// TestMalformedPackets: input that go-milter v0.10.1 would index past or
// allocate without bound ends that session only; the server keeps
// deciding.
func TestMalformedPackets(t *testing.T) {
	s := New(newFake(), testSettings(), quietLog())
	addr := serve(t, s, "unix")
	huge := binary.BigEndian.AppendUint32(nil, 0x7fffffff)
	cases := map[string][]byte{
		"zero length":           {0, 0, 0, 0},
		"zero length after neg": append(wire(optneg()), 0, 0, 0, 0),
		"huge length":           append(huge, 'L'),
		"huge after neg":        append(wire(optneg()), append(huge, 'B')...),
		"short optneg":          wire([]byte{'O', 0, 0, 0, 6}),
		"connect no NUL":        wire(optneg(), []byte("Cclient.example")),
		"connect no family":     wire(optneg(), []byte("Cclient.example\x00")),
		"connect bad family":    wire(optneg(), []byte("Cclient\x00X")),
		"connect short port":    wire(optneg(), []byte("Cclient\x004\x01")),
		"connect bad address":   wire(optneg(), []byte("Cclient\x004\x00\x19not-an-ip\x00")),
		"mail no NUL":           wire(optneg(), []byte("M<a@b>")),
		"rcpt no NUL":           wire(optneg(), pkt('M', "<a@b>"), []byte("R<c@d>")),
		"mail empty":            wire(optneg(), []byte("M")),
		"helo empty":            wire(optneg(), []byte("H")),
		"header one string":     wire(optneg(), pkt('M', "<a@b>"), pkt('L', "Subject")),
		"header three strings":  wire(optneg(), pkt('M', "<a@b>"), pkt('L', "a", "b", "c")),
		"macro empty":           wire(optneg(), []byte("D")),
		"macro odd":             wire(optneg(), pkt('D', "M", "i"), pkt('M', "<a@b>"), []byte{'E'}),
		"macro unknown stage":   wire(optneg(), pkt('D', "Z", "i", "x")),
		"unknown command":       wire(optneg(), []byte("Zzz")),
		"second optneg":         wire(optneg(), optneg()),
		"eom first":             wire(optneg(), []byte{'E'}),
		"body first":            wire(optneg(), []byte("Bbody")),
		"abort twice":           wire(optneg(), []byte{'A'}, []byte{'A'}, []byte{'E'}),
		"truncated length":      {0, 0},
		"truncated packet":      {0, 0, 0, 9, 'O', 0},
		"quit new conn":         wire(optneg(), pkt('M', "<a@b>"), []byte{'K'}, pkt('M', "<c@d>"), []byte{'E'}),
		"version 1":             wire([]byte{'O', 0, 0, 0, 1, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff}),
		"no actions offered":    wire([]byte{'O', 0, 0, 0, 6, 0, 0, 0, 0, 0, 0x1f, 0xff, 0xff}),
		"eom with huge body":    wire(optneg(), pkt('M', "<a@b>"), append([]byte{'B'}, strings.Repeat("x", 1<<20)...), []byte{'E'}),
	}
	for name, stream := range cases {
		t.Run(name, func(t *testing.T) {
			out := roundTrip(t, addr.String(), stream)
			if err := checkReplies(out, nil); err != nil {
				t.Fatalf("%v: %q", err, out)
			}
			c := newSess(t, newClient("unix", addr.String()), "h")
			if _, add := summarize(c.send(t, msg{from: "a@blue.test"}).mods); !equal(add, []string{"X-Binding: blue " + testKey}) {
				t.Fatalf("after %s: added %q", name, add)
			}
		})
	}
}

// TestPanicIsolated: a panic in one session tempfails that message only;
// a session open at the same time is unaffected.
func TestPanicIsolated(t *testing.T) {
	st := testSettings()
	st.OnPolicyError = "tempfail"
	s := New(newFake(), st, quietLog())
	c := start(t, s, "tcp")
	other := newSess(t, c, "h")
	other.cs.Mail("a@red.test", "")
	r := newSess(t, c, "h").send(t, msg{from: "a@panic.test"})
	if r.act.SMTPCode != 451 {
		t.Fatalf("panicking message: %v", r.act)
	}
	other.cs.Rcpt("x@example.net", "")
	other.cs.Header(headerOf(nil))
	mods, act, err := other.cs.BodyReadFrom(strings.NewReader("x"))
	if _, add := summarize(mods); err != nil || !equal(add, []string{"X-Binding: red " + testKey}) {
		t.Fatalf("concurrent session: %v %v %q", err, act, add)
	}
}

// TestSocketMode: a unix socket gets Settings.SocketMode, 0666 by default.
func TestSocketMode(t *testing.T) {
	for _, tc := range []struct{ set, want uint32 }{{0, 0o666}, {0o660, 0o660}} {
		st := testSettings()
		st.SocketMode = tc.set
		s := New(newFake(), st, quietLog())
		path := filepath.Join(t.TempDir(), "m.sock")
		ln, err := s.Listen(config.Listen{Network: "unix", Address: path})
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		ln.Close()
		if err != nil || uint32(fi.Mode().Perm()) != tc.want {
			t.Errorf("SocketMode %o: mode %v (%v), want %o", tc.set, fi.Mode().Perm(), err, tc.want)
		}
	}
}
