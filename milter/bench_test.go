package milter

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-message/textproto"
	gomilter "github.com/emersion/go-milter"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// The milter benchmarks push messages through go-milter's client over a
// real socket, against vipmilter (the example binding file and Sieve
// script) and against go-milter's NoOpMilter negotiating the same stages,
// in the same run:
//
//	go test -run '^$' -bench Session -benchmem -count 3 ./milter
//
// BenchmarkSession opens one milter connection per message, as Postfix's
// smtpd does for a one-message SMTP session (connect, OPTNEG, CONNECT,
// MAIL, RCPT, headers, EOH, EOM, QUIT). BenchmarkSessionParallel does the
// same from GOMAXPROCS clients at once. The figure to compare is msgs/s;
// the goal is vipmilter ≥ 0.9 × noop per socket kind.

// benchHeaders is a realistic submission: the usual headers and a spoofed
// binding header the milter must delete.
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
func examplePolicy(tb testing.TB) *sieve.Policy {
	tb.Helper()
	cfg, err := config.Load(filepath.Join("..", "examples", "vipmilter.conf"))
	if err != nil {
		tb.Fatalf("example config: %v", err)
	}
	p, err := sieve.New(cfg, sieve.Options{})
	if err != nil {
		tb.Fatalf("example policy: %v", err)
	}
	return p
}

// benchServe starts kind ("noop" or "vipmilter") on network ("unix" or
// "tcp") and returns a client negotiating like Postfix.
func benchServe(b *testing.B, kind, network string, d Decider) *gomilter.Client {
	b.Helper()
	addr := config.Listen{Network: "tcp", Address: "127.0.0.1:0"}
	if network == "unix" {
		addr = config.Listen{Network: "unix", Address: filepath.Join(b.TempDir(), "m.sock")}
	}
	s := New(d, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ln, err := s.Listen(addr)
	if err != nil {
		b.Fatal(err)
	}
	switch kind {
	case "noop":
		n := d.Needs()
		g := &gomilter.Server{
			NewMilter: func() gomilter.Milter { return gomilter.NoOpMilter{} },
			Actions:   gomilter.OptAddHeader | gomilter.OptChangeHeader,
			Protocol:  protocol(n.Body || n.Size),
		}
		go g.Serve(ln)
		b.Cleanup(func() { g.Close() })
	default:
		go s.Serve(ln)
		b.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			s.Shutdown(ctx)
		})
	}
	return gomilter.NewClientWithOptions(ln.Addr().Network(), ln.Addr().String(), gomilter.ClientOptions{
		// No Read/WriteTimeout: go-milter's client would set deadlines
		// twice per packet, a cost Postfix (poll-based timeouts) does not
		// have, charged per packet and so more to the side that answers
		// with more packets.
		Dialer:       &net.Dialer{},
		ActionMask:   gomilter.OptAddHeader | gomilter.OptChangeHeader,
		ProtocolMask: 0x7f, // v2 stage bits: the milter may opt out of any stage
	})
}

// benchMessage sends one message on a new milter connection and checks the
// answer: accept, plus for vipmilter one deletion and one binding header.
func benchMessage(c *gomilter.Client, vip bool, hdr *textproto.Header) error {
	cs, err := c.Session()
	if err != nil {
		return err
	}
	defer cs.Close()
	if err := cs.Macros(gomilter.CodeConn, "j", "mx.example.net", "{daemon_name}", "smtpd"); err != nil {
		return err
	}
	if _, err := cs.Conn("client.example", gomilter.FamilyInet, 2525, "192.0.2.7"); err != nil {
		return err
	}
	if err := cs.Macros(gomilter.CodeMail, "i", "4ABCDEF", "{auth_authen}", "alice"); err != nil {
		return err
	}
	if _, err := cs.Mail("<alice@example.com>", nil); err != nil {
		return err
	}
	if _, err := cs.Rcpt("<r@example.net>", nil); err != nil {
		return err
	}
	if _, err := cs.Header(*hdr); err != nil {
		return err
	}
	mods, act, err := cs.BodyReadFrom(strings.NewReader(benchBody))
	if err != nil {
		return err
	}
	if act.Code != gomilter.ActAccept {
		return fmt.Errorf("action %c", act.Code)
	}
	if vip {
		del, add := summarize(mods)
		if len(del) != 1 || len(add) != 1 || add[0] != "X-Binding: Example" {
			return fmt.Errorf("deleted %v added %v", del, add)
		}
	}
	return nil
}

func benchHeader() *textproto.Header {
	var h textproto.Header
	for i := len(benchHeaders) - 1; i >= 0; i-- {
		h.Add(benchHeaders[i][0], benchHeaders[i][1])
	}
	return &h
}

func BenchmarkSession(b *testing.B) {
	p := examplePolicy(b)
	for _, network := range []string{"unix", "tcp"} {
		for _, kind := range []string{"noop", "vipmilter"} {
			b.Run(network+"/"+kind, func(b *testing.B) {
				c := benchServe(b, kind, network, p)
				h := benchHeader()
				b.ReportAllocs()
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
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
	p := examplePolicy(b)
	for _, network := range []string{"unix", "tcp"} {
		for _, kind := range []string{"noop", "vipmilter"} {
			b.Run(network+"/"+kind, func(b *testing.B) {
				c := benchServe(b, kind, network, p)
				var once sync.Once
				var first error
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					h := benchHeader()
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
	p := examplePolicy(b)
	for _, network := range []string{"unix", "tcp"} {
		b.Run(network, func(b *testing.B) {
			noop := benchServe(b, "noop", network, p)
			vip := benchServe(b, "vipmilter", network, p)
			h := benchHeader()
			var tn, tv time.Duration
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
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
