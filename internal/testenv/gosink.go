package testenv

import (
	"errors"
	"io"
	"maps"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// SinkStats is what a GoSink records: messages per peer address, the most
// sessions one peer held open at once, and messages per Subject.
type SinkStats struct {
	Messages      map[string]int
	MaxConcurrent map[string]int
	Subjects      map[string]int
}

// GoSink is a go-smtp server counting concurrent sessions per peer. Each
// message is held for a moment so overlapping sessions become observable.
type GoSink struct {
	srv   *smtp.Server
	delay time.Duration
	done  chan error

	mu     sync.Mutex
	active map[string]int
	stats  SinkStats
}

// StartGoSink serves SMTP on addr inside namespace ns (its listener is made
// there; the server runs in this process), holding each message for delay.
func StartGoSink(ns *NS, addr string, delay time.Duration) (*GoSink, error) {
	ln, err := ns.Listen(addr)
	if err != nil {
		return nil, err
	}
	g := &GoSink{delay: delay, done: make(chan error, 1), active: map[string]int{},
		stats: SinkStats{Messages: map[string]int{}, MaxConcurrent: map[string]int{}, Subjects: map[string]int{}}}
	g.srv = smtp.NewServer(g)
	g.srv.Domain = "sink.test"
	g.srv.MaxRecipients = 100
	go func() { g.done <- g.srv.Serve(ln) }()
	return g, nil
}

// StartTestGoSink is StartGoSink for a test; the sink stops when the test
// ends.
func StartTestGoSink(t testing.TB, ns *NS, addr string, delay time.Duration) *GoSink {
	t.Helper()
	g, err := StartGoSink(ns, addr, delay)
	if err != nil {
		t.Fatal(err)
	}
	CloseAtEnd(t, g)
	return g
}

// Stats is a copy of what the sink recorded so far.
func (g *GoSink) Stats() SinkStats {
	g.mu.Lock()
	defer g.mu.Unlock()
	return SinkStats{Messages: maps.Clone(g.stats.Messages), MaxConcurrent: maps.Clone(g.stats.MaxConcurrent), Subjects: maps.Clone(g.stats.Subjects)}
}

// Close stops the server and closes its sessions.
func (g *GoSink) Close() error {
	err := g.srv.Close()
	if serr := <-g.done; serr != nil && !errors.Is(serr, smtp.ErrServerClosed) && !errors.Is(serr, net.ErrClosed) {
		return errors.Join(err, serr)
	}
	return err
}

// NewSession implements smtp.Backend.
func (g *GoSink) NewSession(c *smtp.Conn) (smtp.Session, error) {
	host, _, _ := net.SplitHostPort(c.Conn().RemoteAddr().String())
	g.mu.Lock()
	g.active[host]++
	g.stats.MaxConcurrent[host] = max(g.stats.MaxConcurrent[host], g.active[host])
	g.mu.Unlock()
	return &goSinkSession{g: g, peer: host}, nil
}

type goSinkSession struct {
	g    *GoSink
	peer string
}

func (s *goSinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *goSinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *goSinkSession) Reset()                               {}

func (s *goSinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	time.Sleep(s.g.delay)
	subject := ""
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Subject: "); ok {
			subject = strings.TrimSpace(v)
			break
		}
		if strings.TrimSpace(line) == "" {
			break
		}
	}
	s.g.mu.Lock()
	defer s.g.mu.Unlock()
	s.g.stats.Messages[s.peer]++
	s.g.stats.Subjects[subject]++
	return nil
}

func (s *goSinkSession) Logout() error {
	s.g.mu.Lock()
	s.g.active[s.peer]--
	s.g.mu.Unlock()
	return nil
}
