package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// SinkStats is what the concurrency sink records: messages per peer address
// and the most sessions one peer held open at once.
type SinkStats struct {
	Messages      map[string]int `json:"messages"`
	MaxConcurrent map[string]int `json:"max_concurrent"`
	Subjects      map[string]int `json:"subjects"`
}

// concurrencySink counts concurrent sessions per peer. Each message is held
// for a moment so overlapping sessions become observable.
type concurrencySink struct {
	mu     sync.Mutex
	active map[string]int
	stats  SinkStats
	out    string
	delay  time.Duration
}

// RunConcurrencySink serves SMTP on addr until killed, rewriting statsFile
// after each message. It runs in the sink namespace in a re-executed test
// binary (see TestMain).
func RunConcurrencySink(addr, statsFile string, delay time.Duration) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("concurrency sink: %w", err)
	}
	cs := &concurrencySink{active: map[string]int{}, out: statsFile, delay: delay,
		stats: SinkStats{Messages: map[string]int{}, MaxConcurrent: map[string]int{}, Subjects: map[string]int{}}}
	srv := smtp.NewServer(cs)
	srv.Domain = "sink.e2e.test"
	srv.MaxRecipients = 100
	return srv.Serve(ln)
}

func (cs *concurrencySink) NewSession(c *smtp.Conn) (smtp.Session, error) {
	host, _, _ := net.SplitHostPort(c.Conn().RemoteAddr().String())
	cs.mu.Lock()
	cs.active[host]++
	if cs.active[host] > cs.stats.MaxConcurrent[host] {
		cs.stats.MaxConcurrent[host] = cs.active[host]
	}
	cs.mu.Unlock()
	return &sinkSession{cs: cs, peer: host}, nil
}

type sinkSession struct {
	cs   *concurrencySink
	peer string
}

func (s *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *sinkSession) Reset()                               {}

func (s *sinkSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	time.Sleep(s.cs.delay)
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
	cs := s.cs
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.stats.Messages[s.peer]++
	cs.stats.Subjects[subject]++
	j, err := json.Marshal(cs.stats)
	if err != nil {
		return err
	}
	// Rename keeps the test from reading a half-written file.
	tmp := cs.out + ".tmp"
	if err := os.WriteFile(tmp, j, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, cs.out)
}

func (s *sinkSession) Logout() error {
	s.cs.mu.Lock()
	s.cs.active[s.peer]--
	s.cs.mu.Unlock()
	return nil
}

// ReadSinkStats reads the concurrency sink's stats file; a missing file means
// no message yet.
func ReadSinkStats(path string) (SinkStats, error) {
	var st SinkStats
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("sink stats: %w", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return st, fmt.Errorf("sink stats: %w", err)
	}
	return st, nil
}
