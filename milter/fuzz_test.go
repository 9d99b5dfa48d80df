package milter

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// fuzzConf and fuzzScript make a real policy that asks for every stage the
// milter can request (headers, body, size) and reaches every outcome:
// script, Match_Domain, group, comma list, unknown name (policy error →
// fallback), reject.
const fuzzConf = `
Milter_Listen   = "unix:/nonexistent/m.sock"
Sieve_Script    = "fuzz.sieve"
Binding_Header  = "X-Binding"
On_Policy_Error = default
Max_Body_Bytes  = 64
Binding "default" { Bind_Address = 192.0.2.1 }
Binding "Example" { Bind_Address = 192.0.2.10  Match_Domain = example.com }
Binding "Newsletters" { Bind_Address = 192.0.2.20 }
Binding_Group "Pool" {
  Binding "Pool1" { Bind_Address = 192.0.2.31  Weight = 3 }
  Binding "Pool2" { Bind_Address = 192.0.2.32 }
}
`

const fuzzScript = `require ["envelope", "variables", "environment", "body", "reject"];
if body :contains "REJECTME" { reject "body said so"; stop; }
if envelope :is "auth" "marketing" { set "binding" "Newsletters"; stop; }
if environment :matches "vnd.vipmilter.daemon" "sub*" { set "binding" "Example"; stop; }
if header :contains "Subject" "pool" { set "binding" "Pool"; stop; }
if header :matches "X-Want" "*" { set "binding" "${1}"; }
if size :over 100000 { set "binding" "Newsletters,Pool"; }
`

// fuzzBindings are the only values the fuzz policy may write.
var fuzzBindings = map[string]bool{"default": true, "Example": true, "Newsletters": true, "Pool1": true, "Pool2": true}

// fuzzPolicy loads the binding file and script above through config.Parse
// and sieve.New, as serve does.
func fuzzPolicy(tb testing.TB) *sieve.Policy {
	tb.Helper()
	dir := tb.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "fuzz.sieve"), []byte(fuzzScript), 0o644); err != nil {
		tb.Fatal(err)
	}
	cfg, err := config.Parse(filepath.Join(dir, "vipmilter.conf"), []byte(fuzzConf))
	if err != nil {
		tb.Fatalf("fuzz config: %v", err)
	}
	p, err := sieve.New(cfg, sieve.Options{})
	if err != nil {
		tb.Fatalf("fuzz policy: %v", err)
	}
	if n := p.Needs(); !n.Headers || !n.Body || !n.Size {
		tb.Fatalf("fuzz policy needs %+v, want every stage", n)
	}
	return p
}

// panicWatch records go-milter's log output; go-milter recovers panics in
// its command loop and only logs them, so a "panic" line is a crash that
// would otherwise go unnoticed.
type panicWatch struct {
	mu  sync.Mutex
	hit string
}

func (w *panicWatch) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("panic")) {
		w.mu.Lock()
		if w.hit == "" {
			w.hit = string(p)
		}
		w.mu.Unlock()
	}
	return len(p), nil
}

func (w *panicWatch) take() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	h := w.hit
	w.hit = ""
	return h
}

// wire encodes milter packets (command byte + data) with their 4-byte
// big-endian length, as the MTA sends them.
func wire(pkts ...[]byte) []byte {
	var b []byte
	for _, p := range pkts {
		b = binary.BigEndian.AppendUint32(b, uint32(len(p)))
		b = append(b, p...)
	}
	return b
}

// structured encodes packets for the structured fuzz mode: command byte,
// 2-byte big-endian data length, data. The fuzz body adds the real length
// prefix, so mutations stay inside well-framed packets.
func structured(pkts ...[]byte) []byte {
	var b []byte
	for _, p := range pkts {
		b = append(b, p[0])
		b = binary.BigEndian.AppendUint16(b, uint16(len(p)-1))
		b = append(b, p[1:]...)
	}
	return b
}

// unstructure turns the structured fuzz encoding into wire packets; a
// short trailing packet takes whatever bytes are left.
func unstructure(in []byte) []byte {
	var pkts [][]byte
	for len(in) > 0 {
		cmd := in[0]
		in = in[1:]
		n := 0
		if len(in) >= 2 {
			n = int(binary.BigEndian.Uint16(in))
			in = in[2:]
		}
		n = min(n, len(in))
		pkts = append(pkts, append([]byte{cmd}, in[:n]...))
		in = in[n:]
	}
	return wire(pkts...)
}

func pkt(code byte, parts ...string) []byte {
	b := []byte{code}
	for _, p := range parts {
		b = append(b, p...)
		b = append(b, 0)
	}
	return b
}

func optneg() []byte {
	b := []byte{'O'}
	b = binary.BigEndian.AppendUint32(b, 6)
	b = binary.BigEndian.AppendUint32(b, 0x1ff)
	return binary.BigEndian.AppendUint32(b, 0x1fffff)
}

func connect(host, addr string) []byte {
	b := append([]byte{'C'}, host...)
	b = append(b, 0, '4', 0x0a, 0x1b)
	return append(append(b, addr...), 0)
}

// seedSession is a Postfix-like session: OPTNEG, connect/MAIL/RCPT/EOM
// macros, headers with spoofed binding headers, body, EOM, then a second
// message and QUIT.
func seedSession() [][]byte {
	return [][]byte{
		optneg(),
		pkt('D', "C", "j", "mx.example.net", "{daemon_name}", "smtpd", "{client_addr}", "192.0.2.7"),
		connect("client.example", "192.0.2.7"),
		pkt('D', "H"),
		pkt('H', "client.example"),
		pkt('D', "M", "i", "4ABCDEF", "{auth_authen}", "alice"),
		pkt('M', "<a@example.com>", "SIZE=100"),
		pkt('D', "R", "{rcpt_addr}", "r@example.net"),
		pkt('R', "<r@example.net>"),
		pkt('R', "<s@example.org>"),
		{'T'},
		pkt('L', "Subject", "hello"),
		pkt('L', "X-Binding", "evil"),
		pkt('L', "x-binding", "evil2"),
		pkt('L', "X-Want", "Newsletters"),
		{'N'},
		append([]byte{'B'}, "hello\r\n"...),
		pkt('D', "E", "i", "4ABCDEF"),
		{'E'},
		pkt('M', "<>"),
		pkt('R', "<r@example.net>"),
		pkt('L', "Subject", "a pool"),
		{'N'},
		{'E'},
		pkt('A'),
		{'Q'},
	}
}

// checkReplies parses what the server wrote: well-framed packets with known
// codes, and for every accept exactly one binding header added (a known
// binding), preceded only by deletions of the binding header from the last
// index down to 1, no more than the client sent.
func checkReplies(out []byte, sentCopies int) error {
	var mods [][]byte
	for len(out) > 0 {
		if len(out) < 4 {
			return fmt.Errorf("truncated length: % x", out)
		}
		n := binary.BigEndian.Uint32(out)
		out = out[4:]
		if n == 0 || int(n) > len(out) {
			return fmt.Errorf("bad reply length %d (%d bytes left)", n, len(out))
		}
		p := out[:n]
		out = out[n:]
		switch p[0] {
		case 'h', 'm':
			mods = append(mods, p)
			continue
		case 'O', 'c', 't':
		case 'y':
			s := string(bytes.TrimSuffix(p[1:], []byte{0}))
			if !strings.HasPrefix(s, "550 5.7.1 ") && !strings.HasPrefix(s, "451 4.3.0 ") {
				return fmt.Errorf("unexpected reply code %q", s)
			}
		case 'a':
			var added []string
			want := 0
			for i, m := range mods {
				parts := strings.Split(string(m[1:]), "\x00")
				if m[0] == 'm' {
					if i != want || len(m) < 5 {
						return fmt.Errorf("change header after add: %q", m)
					}
					idx := binary.BigEndian.Uint32(m[1:5])
					parts = strings.Split(string(m[5:]), "\x00")
					if parts[0] != "X-Binding" || parts[1] != "" {
						return fmt.Errorf("change header %q", m)
					}
					if i == 0 && (int(idx) > sentCopies || idx == 0) {
						return fmt.Errorf("deleted copy %d, client sent %d", idx, sentCopies)
					}
					if i > 0 && idx != binary.BigEndian.Uint32(mods[i-1][1:5])-1 {
						return fmt.Errorf("deletions out of order: %q", mods)
					}
					want++
					continue
				}
				if parts[0] != "X-Binding" {
					return fmt.Errorf("added header %q", m)
				}
				added = append(added, parts[1])
			}
			if want > 0 && binary.BigEndian.Uint32(mods[want-1][1:5]) != 1 {
				return fmt.Errorf("deletions do not reach index 1: %q", mods)
			}
			if len(added) != 1 || !fuzzBindings[added[0]] {
				return fmt.Errorf("accept with added headers %q", added)
			}
		default:
			return fmt.Errorf("unexpected reply %q", p)
		}
		if len(mods) > 0 && p[0] != 'a' {
			return fmt.Errorf("modifications %q before %q", mods, p[:1])
		}
		mods = nil
	}
	if len(mods) > 0 {
		return fmt.Errorf("modifications without a final action: %q", mods)
	}
	return nil
}

// bindingCopies counts header commands naming the binding header, as the
// most deletions the server may answer with.
func bindingCopies(stream []byte) int {
	n := 0
	for len(stream) >= 5 {
		l := int(binary.BigEndian.Uint32(stream))
		stream = stream[4:]
		if l <= 0 || l > len(stream) {
			break
		}
		if p := stream[:l]; p[0] == 'L' && bytes.HasPrefix(bytes.ToLower(bytes.TrimLeft(p[1:], "\x00")), []byte("x-binding")) {
			n++
		}
		stream = stream[l:]
	}
	return n
}

// FuzzSession feeds fuzzed milter input to a real server on a unix socket,
// with the real Sieve policy. raw=true sends the bytes verbatim (framing
// errors); raw=false reads them as command, 2-byte length, data and frames
// them correctly, so mutations reach the callbacks. After every input the
// server must have answered with well-formed replies, closed the session,
// logged no panic, and still decide a well-formed session correctly.
func FuzzSession(f *testing.F) {
	watch := &panicWatch{}
	log.SetOutput(watch) // go-milter logs every bad command; keep only panics
	f.Cleanup(func() { log.SetOutput(os.Stderr) })
	srv, sock := startFuzzServer(f)
	client := gomilter.NewClientWithOptions("unix", sock, gomilter.ClientOptions{
		Dialer:       &net.Dialer{Timeout: 5 * time.Second},
		ReadTimeout:  5 * time.Second,
		WriteTimeout: 5 * time.Second,
		ActionMask:   gomilter.OptAddHeader | gomilter.OptChangeHeader,
		ProtocolMask: (protocol(true) | protocol(false)) & 0x7f,
	})

	s := seedSession()
	f.Add(wire(s...), true)
	f.Add(structured(s...), false)
	f.Add(wire(s[:7]...), true)                                    // ends after MAIL
	f.Add(wire(s[0], s[2], s[6], s[7], s[18]), true)               // no macros
	f.Add(wire(s[10:]...), true)                                   // no OPTNEG, no MAIL
	f.Add(wire(s[0], pkt('D'), []byte{'D'}, pkt('C')), true)       // empty macro and connect
	f.Add(wire(s[0], []byte{'C', 'h', 0, '4'}, []byte{'Z'}), true) // truncated connect, unknown command
	f.Add([]byte{0, 0, 0, 0}, true)                                // zero length
	f.Add([]byte{0, 0x10, 0, 1, 'B'}, true)                        // oversized, truncated
	f.Add(structured(s[0], s[6], pkt('L', "X-Binding"), pkt('L', "a", "b", "c"), pkt('B', strings.Repeat("x", 200)), pkt('E')), false)
	f.Add(structured(s[0], s[6], pkt('L', "Subject"), pkt('A'), pkt('A'), pkt('E'), pkt('E')), false)
	f.Add(structured(s[0], pkt('M', "<marketing@x>"), pkt('D', "E", "{auth_authen}", "marketing"), pkt('E')), false)

	f.Fuzz(func(t *testing.T, data []byte, raw bool) {
		stream := data
		if !raw {
			stream = unstructure(data)
		}
		out := roundTrip(t, sock, stream)
		if err := checkReplies(out, bindingCopies(stream)); err != nil {
			t.Fatalf("%v\nreplies: %q", err, out)
		}
		if p := watch.take(); p != "" {
			t.Fatalf("go-milter recovered a panic: %s", p)
		}
		if n := testutilCount(srv.Metrics().Panics); n != 0 {
			t.Fatalf("session panicked %v times (see log)", n)
		}

		// A well-formed session still gets the right decision.
		cs, err := client.Session()
		if err != nil {
			t.Fatalf("server gone: %v", err)
		}
		defer cs.Close()
		if _, err := cs.Conn("client.example", gomilter.FamilyInet, 2525, "192.0.2.7"); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.Mail("<a@Example.com>", nil); err != nil {
			t.Fatal(err)
		}
		if _, err := cs.Rcpt("<r@example.net>", nil); err != nil {
			t.Fatal(err)
		}
		cs.HeaderField("Subject", "hi")
		cs.HeaderField("X-Binding", "Pool1")
		if _, err := cs.HeaderEnd(); err != nil {
			t.Fatal(err)
		}
		mods, act, err := cs.BodyReadFrom(strings.NewReader("body\r\n"))
		if err != nil {
			t.Fatal(err)
		}
		del, add := summarize(mods)
		if act.Code != gomilter.ActAccept || !equal(del, []uint32{1}) || !equal(add, []string{"X-Binding: Example"}) {
			t.Fatalf("after fuzz input: action %+v, deleted %v, added %v", act, del, add)
		}
	})
}

// roundTrip writes stream to a new session, half-closes and returns all the
// server wrote until it closed the session.
func roundTrip(t *testing.T, sock string, stream []byte) []byte {
	t.Helper()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	werr := make(chan error, 1)
	go func() {
		_, err := conn.Write(stream)
		conn.(*net.UnixConn).CloseWrite()
		werr <- err
	}()
	// The server must close the session once the input ends.
	out, err := io.ReadAll(conn)
	if err != nil && !isReset(err) {
		t.Fatalf("reading replies: %v (after %q)", err, out)
	}
	if err := <-werr; err != nil && !isReset(err) {
		t.Fatalf("write: %v", err)
	}
	return out
}

func isReset(err error) bool {
	return err != nil && (strings.Contains(err.Error(), "connection reset") || strings.Contains(err.Error(), "broken pipe"))
}

// startFuzzServer serves the fuzz policy on a unix socket.
func startFuzzServer(tb testing.TB) (*Server, string) {
	tb.Helper()
	srv := New(fuzzPolicy(tb), slog.New(slog.NewTextHandler(io.Discard, nil)))
	sock := filepath.Join(tb.TempDir(), "m.sock")
	ln, err := srv.Listen(config.MustParseListen("unix:" + sock))
	if err != nil {
		tb.Fatal(err)
	}
	go srv.Serve(ln)
	tb.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return srv, sock
}

// TestFuzzSeeds pins what the seed session is answered, so the fuzz seeds
// are known to reach the decision and header rewriting, not just framing.
func TestFuzzSeeds(t *testing.T) {
	_, sock := startFuzzServer(t)
	s := seedSession()
	reject := append([][]byte{}, s[:16]...)
	reject = append(reject, pkt('B', "REJECTME"), []byte{'E'})
	// OPTNEG: version 2, actions add+change header, protocol: no HELO (the
	// policy needs headers, body and size). Pool is sticky on the first
	// recipient's domain, example.net → Pool2.
	cont := []string{"O\x00\x00\x00\x02\x00\x00\x00\x11\x00\x00\x00\x02",
		"c", "c", "c", "c", "c", "c", "c", "c", "c", "c", "c", "c"}
	session := append(cont[:13:13],
		"m\x00\x00\x00\x02X-Binding\x00\x00", "m\x00\x00\x00\x01X-Binding\x00\x00", "hX-Binding\x00Newsletters\x00", "a",
		"c", "c", "c", "c", "hX-Binding\x00Pool2\x00", "a")
	for _, tc := range []struct {
		name   string
		stream []byte
		want   []string
	}{
		{"session", wire(s...), session},
		{"structured", unstructure(structured(s...)), session},
		{"reject", wire(reject...), append(cont[:13:13], "y550 5.7.1 body said so\x00")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := roundTrip(t, sock, tc.stream)
			if err := checkReplies(out, bindingCopies(tc.stream)); err != nil {
				t.Fatal(err)
			}
			var got []string
			for len(out) > 0 {
				n := binary.BigEndian.Uint32(out)
				got = append(got, string(out[4:4+n]))
				out = out[4+n:]
			}
			if strings.Join(got, "|") != strings.Join(tc.want, "|") {
				t.Fatalf("replies\n got %q\nwant %q", got, tc.want)
			}
		})
	}
}
