package milter

import (
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/emersion/go-message/textproto"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// The milter benchmarks push messages through go-milter's client over a
// real socket, against vipmilter (the example binding file and Sieve
// script) and against go-milter's NoOpMilter negotiating the same stages
// and macros, in the same run:
//
//	go test -run '^$' -bench Session -benchmem -count 3 ./milter
//
// BenchmarkSession opens one milter connection per message, as Postfix's
// smtpd does for a one-message SMTP session (connect, OPTNEG, macros, HELO
// if needed, MAIL, RCPT, headers, body if needed, EOM, QUIT).
// BenchmarkSessionParallel does the same from GOMAXPROCS clients at once.
// BenchmarkSessionRatio alternates the two message by message and reports
// vip/noop (goal ≥ 0.9 per socket kind).

// benchHeaders is a realistic submission, with a client copy of the
// binding header.
var benchHeaders = [][2]string{
	{"Received", "from client.example (client.example [192.0.2.7]) by mx.example.net (Postfix) with ESMTPSA id 4ABCDEF for <r@example.net>; Sun, 22 Nov 2026 10:00:00 +0000"},
	{"From", "Alice Example <alice@example.com>"},
	{"To", "Bob <r@example.net>"},
	{"Subject", "Quarterly report, draft 3"},
	{"Date", "Sun, 22 Nov 2026 10:00:00 +0000"},
	{"Message-ID", "<20261122100000.4ABCDEF@example.com>"},
	{"MIME-Version", "1.0"},
	{"Content-Type", "text/plain; charset=utf-8"},
	{"X-Binding", "Pool1"},
}

var benchBody = strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do.\r\n", 30)

// examplePolicy loads examples/vipmilter.conf and its script.
func examplePolicy(tb testing.TB) (*sieve.Policy, Settings) {
	tb.Helper()
	cfg, err := config.Load(filepath.Join("..", "examples", "vipmilter.conf"))
	if err != nil {
		tb.Fatalf("example config: %v", err)
	}
	p, err := sieve.New(cfg, sieve.Options{})
	if err != nil {
		tb.Fatalf("example policy: %v", err)
	}
	return p, Settings{BindingHeader: cfg.BindingHeader, HeaderKey: testKey, MaxBodyBytes: cfg.MaxBodyBytes, OnPolicyError: cfg.OnPolicyError}
}

// benchServe starts kind ("noop" or "vipmilter") on network ("unix" or
// "tcp") and returns a client negotiating like Postfix.
func benchServe(b *testing.B, kind, network string, d Decider, st Settings) *gomilter.Client {
	b.Helper()
	s := New(d, st, quietLog())
	if kind == "vipmilter" {
		a := serve(b, s, network)
		return newClient(a.Network(), a.String())
	}
	addr := config.Listen{Network: "tcp", Address: "127.0.0.1:0"}
	if network == "unix" {
		addr = config.Listen{Network: "unix", Address: filepath.Join(b.TempDir(), "m.sock")}
	}
	ln, err := s.Listen(addr)
	if err != nil {
		b.Fatal(err)
	}
	g := gomilter.NewServer(
		gomilter.WithMilter(func() gomilter.Milter { return gomilter.NoOpMilter{} }),
		gomilter.WithActions(gomilter.OptAddHeader),
		gomilter.WithProtocols(protocol(d.Needs())),
		gomilter.WithMacroRequest(gomilter.StageConnect, []gomilter.MacroName{gomilter.MacroClientAddr, gomilter.MacroClientName, gomilter.MacroDaemonName}),
		gomilter.WithMacroRequest(gomilter.StageMail, []gomilter.MacroName{gomilter.MacroAuthAuthen}),
		gomilter.WithMacroRequest(gomilter.StageEOM, []gomilter.MacroName{gomilter.MacroQueueId}),
	)
	go g.Serve(ln)
	b.Cleanup(func() { g.Close() })
	// No read/write timeouts: go-milter's client would set deadlines twice
	// per packet, a cost Postfix (poll-based timeouts) does not have.
	return gomilter.NewClient(ln.Addr().Network(), ln.Addr().String(), gomilter.WithReadTimeout(0), gomilter.WithWriteTimeout(0))
}

// benchMessage sends one message on a new milter connection and checks the
// answer: accept, plus for vipmilter one binding header.
func benchMessage(c *gomilter.Client, vip bool, hdr textproto.Header) error {
	bag := gomilter.NewMacroBag()
	bag.Set(gomilter.MacroDaemonName, "smtpd")
	bag.Set(gomilter.MacroClientAddr, "192.0.2.7")
	bag.Set(gomilter.MacroClientName, "client.example")
	bag.Set(gomilter.MacroAuthAuthen, "alice")
	bag.Set(gomilter.MacroQueueId, "4ABCDEF")
	cs, err := c.Session(bag)
	if err != nil {
		return err
	}
	defer cs.Close()
	if _, err := cs.Conn("client.example", gomilter.FamilyInet, 2525, "192.0.2.7"); err != nil {
		return err
	}
	if _, err := cs.Helo("client.example"); err != nil {
		return err
	}
	if _, err := cs.Mail("alice@example.com", ""); err != nil {
		return err
	}
	if _, err := cs.Rcpt("r@example.net", ""); err != nil {
		return err
	}
	if _, err := cs.Header(hdr); err != nil {
		return err
	}
	mods, act, err := cs.BodyReadFrom(strings.NewReader(benchBody))
	if err != nil {
		return err
	}
	if act.Type != gomilter.ActionAccept {
		return fmt.Errorf("action %v", act)
	}
	if vip {
		if _, add := summarize(mods); len(add) != 1 || add[0] != "X-Binding: Example "+testKey {
			return fmt.Errorf("added %v", add)
		}
	}
	return nil
}

func BenchmarkSession(b *testing.B) {
	p, st := examplePolicy(b)
	h := headerOf(benchHeaders)
	for _, network := range []string{"unix", "tcp"} {
		for _, kind := range []string{"noop", "vipmilter"} {
			b.Run(network+"/"+kind, func(b *testing.B) {
				c := benchServe(b, kind, network, p, st)
				b.ReportAllocs()
				for b.Loop() {
					if err := benchMessage(c, kind == "vipmilter", h); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

func BenchmarkSessionParallel(b *testing.B) {
	p, st := examplePolicy(b)
	for _, network := range []string{"unix", "tcp"} {
		for _, kind := range []string{"noop", "vipmilter"} {
			b.Run(network+"/"+kind, func(b *testing.B) {
				c := benchServe(b, kind, network, p, st)
				var once sync.Once
				var first error
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					h := headerOf(benchHeaders)
					for pb.Next() {
						if err := benchMessage(c, kind == "vipmilter", h); err != nil {
							once.Do(func() { first = err })
							return
						}
					}
				})
				if first != nil {
					b.Fatal(first)
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
			})
		}
	}
}

// BenchmarkSessionRatio alternates messages between NoOpMilter and
// vipmilter (one op = one message to each), so both see the same machine
// load; it reports each side's msgs/s and their ratio (goal ≥ 0.9).
func BenchmarkSessionRatio(b *testing.B) {
	p, st := examplePolicy(b)
	h := headerOf(benchHeaders)
	for _, network := range []string{"unix", "tcp"} {
		b.Run(network, func(b *testing.B) {
			noop := benchServe(b, "noop", network, p, st)
			vip := benchServe(b, "vipmilter", network, p, st)
			var tn, tv time.Duration
			b.ReportAllocs()
			for b.Loop() {
				t0 := time.Now()
				if err := benchMessage(noop, false, h); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := benchMessage(vip, true, h); err != nil {
					b.Fatal(err)
				}
				tn += t1.Sub(t0)
				tv += time.Since(t1)
			}
			b.ReportMetric(float64(b.N)/tn.Seconds(), "noop-msgs/s")
			b.ReportMetric(float64(b.N)/tv.Seconds(), "vip-msgs/s")
			b.ReportMetric(tn.Seconds()/tv.Seconds(), "vip/noop")
		})
	}
}

// BenchmarkOpenSessions holds 1,000 negotiated, idle sessions (as Postfix
// holds one per SMTP connection) and reports the heap they take per
// session; the v0.5.0 milter measured 25 MiB RSS for 1,000.
func BenchmarkOpenSessions(b *testing.B) {
	const n = 1000
	st := testSettings()
	st.MaxConnections = n + 10
	s := New(newFake(), st, quietLog())
	addr := serve(b, s, "unix")
	hello := wire(optneg(), pkt('D', "C", "{client_addr}", "192.0.2.7", "{daemon_name}", "smtpd"))
	for b.Loop() {
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		conns := make([]net.Conn, 0, n)
		for range n {
			c, err := net.Dial("unix", addr.String())
			if err != nil {
				b.Fatal(err)
			}
			c.Write(hello)
			var reply [4]byte
			if _, err := io.ReadFull(c, reply[:]); err != nil { // OPTNEG answered: negotiated
				b.Fatal(err)
			}
			conns = append(conns, c)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/n, "heap-B/session")
		for _, c := range conns {
			c.Close()
		}
		waitUntracked(b, s)
	}
}
