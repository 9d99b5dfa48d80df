package socket

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vipmilter/vipmilter/config"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("server closed")

// Server accepts connections on its listeners and hands each to Handle in
// its own goroutine, tracking them until Shutdown. It is the skeleton the
// line protocols share (the SMTPD policy service, the Sendmail socketmap);
// set the fields before the first Serve.
type Server struct {
	// Name appears in log lines ("policy service", "socketmap").
	Name string
	// Handle serves one connection and closes it.
	Handle func(net.Conn)
	// MaxConns caps open connections (Max_Connections); further ones wait
	// in the listen backlog. 0: config.DefaultMaxConnections.
	MaxConns int
	// Log receives the accept back-off warnings (nil: none).
	Log *slog.Logger

	acceptErrors atomic.Uint64
	once         sync.Once
	sem          chan struct{}

	mu      sync.Mutex
	closing bool
	lns     []net.Listener
	conns   map[net.Conn]struct{}
	wg      sync.WaitGroup
}

// AcceptErrors counts failed accepts (for example EMFILE) Serve backed off
// from.
func (s *Server) AcceptErrors() uint64 { return s.acceptErrors.Load() }

// Closing reports whether Shutdown has begun; a handler uses it to tell a
// read ended by Shutdown from a client's fault.
func (s *Server) Closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Serve accepts connections on ln until Shutdown (ErrServerClosed) or ln
// fails for good. Accept errors such as EMFILE are logged, counted and
// retried with a growing delay (5 ms to 1 s, as net/http does), so running
// out of descriptors slows the server down instead of ending it.
func (s *Server) Serve(ln net.Listener) error {
	s.once.Do(func() {
		n := s.MaxConns
		if n <= 0 {
			n = config.DefaultMaxConnections
		}
		s.sem = make(chan struct{}, n)
	})
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	var delay time.Duration
	for {
		s.acquire()
		c, err := ln.Accept()
		if err != nil {
			s.release()
			if s.Closing() {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return err
			}
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			if n := s.acceptErrors.Add(1); n&(n-1) == 0 && s.Log != nil {
				s.Log.Warn(s.Name+" accept failed; backing off", "err", err, "count", n, "delay", delay)
			}
			time.Sleep(delay)
			continue
		}
		delay = 0
		if !s.track(c) {
			s.release()
			c.Close()
			return ErrServerClosed
		}
		go func() {
			defer s.release()
			defer s.untrack(c)
			s.Handle(c)
		}()
	}
}

func (s *Server) acquire() { s.sem <- struct{}{} }

func (s *Server) release() { <-s.sem }

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closing {
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]struct{}{}
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// Shutdown closes the listeners and ends the reads that connections wait
// in between requests (a deadline in the past), so an idle connection ends
// without losing an answer; it waits for the connections to end. When ctx
// ends first it closes them and returns ctx.Err() (both MTAs retry a
// lookup that got no answer).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for _, ln := range s.lns {
		ln.Close()
	}
	for c := range s.conns {
		c.SetReadDeadline(time.Now())
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
		return ctx.Err()
	}
}
