// Package milter is vipmilter's Postfix milter: it collects what the policy
// needs of each message, asks the policy for a binding, and writes exactly
// one binding header (removing any copy the client sent).
package milter

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	gomilter "github.com/emersion/go-milter"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// Decider is what the milter needs of a policy; *sieve.Policy satisfies it.
type Decider interface {
	Decide(ctx context.Context, m *sieve.Message) sieve.Decision
	Needs() sieve.Needs
	Config() *config.Config
}

// SocketMode is the mode of a unix socket the milter creates. Postfix's
// smtpd/cleanup run as user "postfix", which is normally not in vipmilter's
// group, so the socket is world-connectable; restrict access with the mode
// of its directory (e.g. 0750 root:postfix) instead.
var SocketMode fs.FileMode = 0o666

// Macros vipmilter reads: i, {auth_authen}, {daemon_name}, {client_addr},
// {client_name}. go-milter v0.5.0 cannot request them (protocol v2), so
// they come from Postfix's milter_*_macros settings; the 3.7 defaults
// already include them.
// Server serves milter sessions. The zero value is not usable; use New.
type Server struct {
	policy  atomic.Pointer[policyBox]
	log     *slog.Logger
	metrics *Metrics

	mu       sync.Mutex
	closing  bool
	lns      []net.Listener
	sessions sync.WaitGroup
	active   map[net.Conn]struct{}
}

type policyBox struct{ d Decider }

// New returns a Server deciding with d. log may be nil (slog.Default).
func New(d Decider, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	s := &Server{log: log, metrics: NewMetrics(), active: map[net.Conn]struct{}{}}
	s.SetPolicy(d)
	return s
}

// SetPolicy swaps the policy atomically. A session keeps the policy it
// took at connect time, because the stages it gets from Postfix were
// negotiated for that policy's Needs; new connections use d.
func (s *Server) SetPolicy(d Decider) { s.policy.Store(&policyBox{d}) }

// Policy returns the current policy.
func (s *Server) Policy() Decider { return s.policy.Load().d }

// Metrics returns the server's metrics (private registry).
func (s *Server) Metrics() *Metrics { return s.metrics }

// protocol is the stage set for a connection: headers always (the milter
// must count the client's Binding_Header copies) but without per-header
// replies; the body only when the policy reads it or its size.
func protocol(body bool) gomilter.OptProtocol {
	// go-milter v0.5.0 negotiates milter protocol version 2, where the
	// SMFIP_NR_* "no reply" bits and SETSYMLIST do not exist; asking for
	// them desynchronises replies, so only the v2 stage bits are used.
	p := gomilter.OptNoHelo
	if !body {
		p |= gomilter.OptNoBody
	}
	return p
}

// Listen opens addr in Postfix notation (unix:/path, local:/path,
// inet:host:port, inet6:[addr]:port). A stale unix socket is removed first
// and removed again by Shutdown.
func (s *Server) Listen(addr string) (net.Listener, error) {
	kind, rest, ok := strings.Cut(addr, ":")
	if !ok {
		return nil, fmt.Errorf("milter listen %q: want unix:/path or inet:host:port", addr)
	}
	switch kind {
	case "unix", "local":
		if fi, err := os.Lstat(rest); err == nil && fi.Mode()&fs.ModeSocket != 0 {
			os.Remove(rest)
		}
		ln, err := net.Listen("unix", rest)
		if err != nil {
			return nil, fmt.Errorf("milter listen %q: %w", addr, err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(true)
		if err := os.Chmod(rest, SocketMode); err != nil {
			ln.Close()
			return nil, fmt.Errorf("milter socket %q: %w", rest, err)
		}
		return ln, nil
	case "inet", "inet6":
		host := strings.TrimSuffix(strings.TrimPrefix(rest, "["), "]")
		if h, p, err := net.SplitHostPort(rest); err == nil {
			host = net.JoinHostPort(h, p)
		} else if i := strings.LastIndex(rest, ":"); i > 0 {
			host = net.JoinHostPort(strings.Trim(rest[:i], "[]"), rest[i+1:])
		}
		ln, err := net.Listen("tcp", host)
		if err != nil {
			return nil, fmt.Errorf("milter listen %q: %w", addr, err)
		}
		return ln, nil
	}
	return nil, fmt.Errorf("milter listen %q: unknown kind %q", addr, kind)
}

// Serve accepts connections on ln until Shutdown. Each connection is handed
// to a go-milter server whose stage set matches the policy current at
// accept time.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return gomilter.ErrServerClosed
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return gomilter.ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("milter accept: %w", err)
		}
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			conn.Close()
			continue
		}
		s.sessions.Add(1)
		s.mu.Unlock()
		go s.serveConn(tuneConn(conn))
	}
}

// serveConn runs one session through go-milter's own accept loop, fed with
// this single connection, so sessions keep go-milter's protocol handling.
func (s *Server) serveConn(conn net.Conn) {
	defer s.sessions.Done()
	d := s.Policy()
	n := d.Needs()
	body := n.Body || n.Size
	cs := &connState{}
	done := make(chan struct{})
	tracked := &trackedConn{Conn: conn, done: done}
	s.mu.Lock()
	s.active[tracked] = struct{}{}
	s.mu.Unlock()
	g := &gomilter.Server{
		NewMilter: func() gomilter.Milter { return newSession(s, d, body, cs) },
		Actions:   gomilter.OptAddHeader | gomilter.OptChangeHeader,
		Protocol:  protocol(body),
	}
	go g.Serve(&oneListener{conn: tracked})
	<-done
	s.mu.Lock()
	delete(s.active, tracked)
	s.mu.Unlock()
}

// Shutdown stops accepting, waits for sessions in flight until ctx ends,
// then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for _, ln := range s.lns {
		ln.Close()
	}
	s.mu.Unlock()
	waited := make(chan struct{})
	go func() { s.sessions.Wait(); close(waited) }()
	select {
	case <-waited:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.active {
			c.Close()
		}
		s.mu.Unlock()
		<-waited
		return fmt.Errorf("milter shutdown: %w", ctx.Err())
	}
}

// trackedConn signals when go-milter closes the session's connection.
type trackedConn struct {
	net.Conn
	once sync.Once
	done chan struct{}
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { close(c.done) })
	return err
}

// oneListener yields one connection, then blocks until that connection
// is closed and reports the listener closed.
type oneListener struct {
	conn   *trackedConn
	handed bool
}

func (l *oneListener) Accept() (net.Conn, error) {
	if !l.handed {
		l.handed = true
		return l.conn, nil
	}
	<-l.conn.done
	return nil, net.ErrClosed
}
func (l *oneListener) Close() error   { return nil }
func (l *oneListener) Addr() net.Addr { return l.conn.LocalAddr() }
