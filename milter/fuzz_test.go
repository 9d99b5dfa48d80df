package milter

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// fuzzConf and fuzzScript make a real policy that asks for every stage the
// milter can request (HELO, headers, body, size) and reaches every outcome:
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
if environment :is "vnd.vipmilter.helo" "helo.newsletter.example" { set "binding" "Newsletters"; stop; }
if envelope :is "auth" "marketing" { set "binding" "Newsletters"; stop; }
if environment :matches "vnd.vipmilter.daemon" "sub*" { set "binding" "Example"; stop; }
if header :contains "Subject" "pool" { set "binding" "Pool"; stop; }
if header :matches "X-Want" "*" { set "binding" "${1}"; }
if size :over 100000 { set "binding" "Newsletters,Pool"; }
`

// fuzzBindings are the only bindings the fuzz policy may write.
var fuzzBindings = map[string]bool{"default": true, "Example": true, "Newsletters": true, "Pool1": true, "Pool2": true}

// fuzzPolicy loads the binding file and script above through config.Parse
// and sieve.New, as serve does, and the milter settings serve would build.
func fuzzPolicy(tb testing.TB) (*sieve.Policy, Settings) {
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
	if n := p.Needs(); !n.Headers || !n.Body || !n.Size || !n.Helo {
		tb.Fatalf("fuzz policy needs %+v, want every stage", n)
	}
	return p, Settings{BindingHeader: cfg.BindingHeader, HeaderKey: testKey, MaxBodyBytes: cfg.MaxBodyBytes, OnPolicyError: cfg.OnPolicyError}
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

// optneg is an MTA offering protocol 6 with every action and stage option.
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

// seedSession is a Postfix-like session for the fuzz policy's stages:
// OPTNEG, macros, HELO, two messages (the second without ABORT, as
// Sendmail sends it), QUIT.
func seedSession() [][]byte {
	return [][]byte{
		optneg(),
		pkt('D', "C", "j", "mx.example.net", "{daemon_name}", "smtpd", "{client_addr}", "192.0.2.7", "{client_name}", "client.example"),
		pkt('D', "H"),
		pkt('H', "client.example"),
		pkt('D', "M", "{auth_authen}", "alice"),
		pkt('M', "<a@example.com>", "SIZE=100"),
		pkt('D', "R", "{rcpt_addr}", "r@example.net"),
		pkt('R', "<r@example.net>"),
		pkt('R', "<s@example.org>"),
		pkt('L', "Subject", "hello"),
		pkt('L', "X-Binding", "evil"),
		pkt('L', "X-Want", "Newsletters"),
		append([]byte{'B'}, "hello\r\n"...),
		pkt('D', "E", "i", "4ABCDEF"),
		{'E'},
		pkt('M', "<>"),
		pkt('R', "<r@example.net>"),
		pkt('L', "Subject", "a pool"),
		{'E'},
		pkt('A'),
		{'Q'},
	}
}

// checkReplies parses what the server wrote: well-framed packets with known
// codes; every accept preceded by exactly one added binding header naming a
// binding known to the policy (nil: any) with the key, and nothing else
// modified.
func checkReplies(out []byte, known map[string]bool) error {
	var mods [][]byte
	for i := 0; len(out) > 0; i++ {
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
		case 'h':
			mods = append(mods, p)
			continue
		case 'O':
			if i != 0 {
				return fmt.Errorf("OPTNEG reply #%d", i)
			}
		case 'c':
		case 'y':
			s := string(bytes.TrimSuffix(p[1:], []byte{0}))
			if !strings.HasPrefix(s, "550 5.7.1 ") && !strings.HasPrefix(s, "451 4.3.0 ") {
				return fmt.Errorf("unexpected reply code %q", s)
			}
		case 'a':
			if len(mods) != 1 {
				return fmt.Errorf("accept after %d modifications %q", len(mods), mods)
			}
			parts := strings.Split(string(mods[0][1:]), "\x00")
			name, key, _ := strings.Cut(parts[1], " ")
			if parts[0] != "X-Binding" || (known != nil && !known[name]) || strings.TrimLeft(key, " ") != testKey {
				return fmt.Errorf("added header %q", mods[0])
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

// FuzzSession feeds fuzzed milter input to a real server on a unix socket,
// with the real Sieve policy. raw=true sends the bytes verbatim (framing
// errors); raw=false reads them as command, 2-byte length, data and frames
// them correctly, so mutations reach the callbacks. After every input the
// server must have answered with well-formed replies, closed the session,
// recovered no panic (go-milter does not recover: a panic there crashes
// the fuzzer), and still decide a well-formed session correctly.
func FuzzSession(f *testing.F) {
	srv, sock := startFuzzServer(f)
	client := newClient("unix", sock)

	s := seedSession()
	f.Add(wire(s...), true)
	f.Add(structured(s...), false)
	f.Add(wire(s[:6]...), true)                              // ends after MAIL
	f.Add(wire(s[0], s[3], s[5], s[7], s[14]), true)         // no macros
	f.Add(wire(s[9:]...), true)                              // no OPTNEG, no MAIL
	f.Add(wire(s[0], pkt('D'), []byte{'D'}, pkt('C')), true) // empty macro and connect
	f.Add(wire(s[0], connect("client.example", "192.0.2.7"), []byte{'C', 'h', 0, '4'}, []byte{'Z'}), true)
	f.Add([]byte{0, 0, 0, 0}, true)         // zero length
	f.Add([]byte{0, 0x10, 0, 1, 'B'}, true) // oversized, truncated
	f.Add([]byte{0x7f, 0, 0, 0, 'L'}, true) // larger than any MTA sends
	f.Add(structured(s[0], s[5], pkt('L', "X-Binding"), pkt('L', "a", "b", "c"), pkt('B', strings.Repeat("x", 200)), pkt('E')), false)
	f.Add(structured(s[0], s[5], pkt('L', "Subject"), pkt('A'), pkt('A'), pkt('E'), pkt('E')), false)
	f.Add(structured(s[0], pkt('M', "<marketing@x>"), pkt('D', "E", "{auth_authen}", "marketing"), pkt('E')), false)
	f.Add(structured(s[0], pkt('T'), pkt('N'), pkt('U', "XYZZY"), pkt('K'), pkt('H', "x"), pkt('E')), false)

	f.Fuzz(func(t *testing.T, data []byte, raw bool) {
		stream := data
		if !raw {
			stream = unstructure(data)
		}
		out := roundTrip(t, sock, stream)
		if err := checkReplies(out, fuzzBindings); err != nil {
			t.Fatalf("%v\nreplies: %q", err, out)
		}
		if n := testutilCount(srv.Metrics().panics); n != 0 {
			t.Fatalf("session panicked %v times", n)
		}

		// A well-formed session still gets the right decision.
		c := newSess(t, client, "client.example")
		r := c.send(t, msg{from: "a@Example.com", headers: [][2]string{{"Subject", "hi"}, {"X-Binding", "Pool1"}}, body: "body\r\n"})
		changed, added := summarize(r.mods)
		if r.act.Type != gomilter.ActionAccept || len(changed) != 0 || !equal(added, []string{"X-Binding: Example " + testKey}) {
			t.Fatalf("after fuzz input: action %v, changed %v, added %v", r.act, changed, added)
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
	p, st := fuzzPolicy(tb)
	srv := New(p, st, quietLog())
	return srv, serve(tb, srv, "unix").String()
}

// TestFuzzSeeds pins what the seed sessions are answered, so the fuzz seeds
// are known to reach the decision and the header, not just framing.
func TestFuzzSeeds(t *testing.T) {
	p, _ := fuzzPolicy(t)
	_, sock := startFuzzServer(t)
	s := seedSession()
	// OPTNEG: version 6, actions add header + set macro list, the
	// policy's stages, and the macros requested per stage.
	var neg []byte
	neg = binary.BigEndian.AppendUint32(append(neg, 'O'), 6)
	neg = binary.BigEndian.AppendUint32(neg, uint32(gomilter.OptAddHeader|gomilter.OptSetMacros))
	neg = binary.BigEndian.AppendUint32(neg, uint32(protocol(p.Needs())))
	neg = append(neg, "\x00\x00\x00\x00{client_addr} {client_name} {daemon_name}\x00"+
		"\x00\x00\x00\x02{auth_authen}\x00"+"\x00\x00\x00\x05i\x00"...)
	hdr := func(b string) string {
		return "hX-Binding\x00" + config.BindingHeaderValue("X-Binding", b, testKey) + "\x00"
	}
	reject := append([][]byte{}, s[:12]...)
	reject = append(reject, pkt('B', "REJECTME"), []byte{'E'})
	helo := append([][]byte{}, s...)
	helo[3] = pkt('H', "helo.newsletter.example")
	// Pool is sticky on the first recipient's domain: example.net → Pool2.
	session := []string{string(neg), hdr("Newsletters"), "a", hdr("Pool2"), "a"}
	for _, tc := range []struct {
		name   string
		stream []byte
		want   []string
	}{
		{"session", wire(s...), session},
		{"structured", unstructure(structured(s...)), session},
		{"reject", wire(reject...), []string{string(neg), "y550 5.7.1 body said so\x00"}},
		{"helo", wire(helo...), []string{string(neg), hdr("Newsletters"), "a", hdr("Newsletters"), "a"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := roundTrip(t, sock, tc.stream)
			if err := checkReplies(out, fuzzBindings); err != nil {
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
