// Package milter is vipmilter's Postfix milter: it collects what the policy
// needs of each message, asks the policy for a binding, and writes exactly
// one binding header (removing any copy the client sent).
package milter

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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

// Listen opens addr. A stale unix socket is removed first and removed
// again by Shutdown.
func (s *Server) Listen(addr config.Listen) (net.Listener, error) {
	if path := addr.Path(); path != "" {
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
			os.Remove(path)
		}
		ln, err := net.Listen("unix", path)
		if err != nil {
			return nil, fmt.Errorf("milter listen %s: %w", addr, err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(true)
		if err := os.Chmod(path, SocketMode); err != nil {
			ln.Close()
			return nil, fmt.Errorf("milter socket %q: %w", path, err)
		}
		return ln, nil
	}
	ln, err := net.Listen(addr.Network, addr.Address)
	if err != nil {
		return nil, fmt.Errorf("milter listen %s: %w", addr, err)
	}
	return ln, nil
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
		s.serveConn(tuneConn(conn))
	}
}

// serveConn runs one session through go-milter's own accept loop, fed with
// this single connection, so sessions keep go-milter's protocol handling.
// It returns at once: the session runs on go-milter's goroutine, and the
// connection's Close (go-milter always closes it) ends the bookkeeping.
func (s *Server) serveConn(conn net.Conn) {
	d := s.Policy()
	n := d.Needs()
	body := n.Body || n.Size
	cs := &connState{}
	tracked := &trackedConn{Conn: conn, w: coalescer{w: conn}, srv: s}
	s.mu.Lock()
	s.active[tracked] = struct{}{}
	s.mu.Unlock()
	g := &gomilter.Server{
		NewMilter: func() gomilter.Milter { return newSession(s, d, body, cs) },
		Actions:   gomilter.OptAddHeader | gomilter.OptChangeHeader,
		Protocol:  protocol(body),
	}
	g.Serve(&oneListener{conn: tracked})
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
		conns := make([]net.Conn, 0, len(s.active))
		for c := range s.active {
			conns = append(conns, c)
		}
		s.mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
		<-waited
		return fmt.Errorf("milter shutdown: %w", ctx.Err())
	}
}

// trackedConn ends the session's bookkeeping when go-milter closes the
// connection, and coalesces its writes.
type trackedConn struct {
	net.Conn
	w    coalescer
	srv  *Server
	once sync.Once
}

func (c *trackedConn) Write(p []byte) (int, error) { return c.w.Write(p) }

// coalescer holds the modification packets go-milter writes at end of
// message (delete and add header) and sends them in one write together
// with the final action that follows, instead of one write (and one
// wake-up of the MTA) per packet. The MTA reads the same bytes in the same
// order. go-milter writes every packet through its own bufio.Writer, so a
// Write starts a packet or continues the current one.
type coalescer struct {
	w    io.Writer
	held []byte // modification packets not yet sent
	rest int    // bytes of the current packet still to come
	hold bool   // the current packet is held
}

// isModification reports whether code is a milter modification action
// (SMFIR_ADDHEADER, CHGHEADER, ...), always followed by a final action.
func isModification(code byte) bool {
	return strings.IndexByte("hmi+-bqe", code) >= 0
}

func (c *coalescer) Write(p []byte) (int, error) {
	if c.rest == 0 { // a new packet
		if len(p) < 5 {
			return c.flush(p)
		}
		c.rest = 4 + int(binary.BigEndian.Uint32(p))
		c.hold = isModification(p[4])
	}
	c.rest -= len(p)
	if c.rest < 0 { // not go-milter's framing: stop interpreting
		c.rest, c.hold = 0, false
	}
	if c.hold {
		c.held = append(c.held, p...)
		if c.rest == 0 {
			c.hold = false
		}
		return len(p), nil
	}
	return c.flush(p)
}

// flush writes what is held followed by p in one write.
func (c *coalescer) flush(p []byte) (int, error) {
	if len(c.held) == 0 {
		return c.w.Write(p)
	}
	c.held = append(c.held, p...)
	_, err := c.w.Write(c.held)
	c.held = c.held[:0]
	if err != nil {
		return 0, err
	}
	return len(p), nil
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.srv.mu.Lock()
		delete(c.srv.active, c)
		c.srv.mu.Unlock()
		c.srv.sessions.Done()
	})
	return err
}

// oneListener yields one connection, then reports the listener closed, so
// go-milter's Serve starts that session and returns.
type oneListener struct {
	conn   *trackedConn
	handed bool
}

func (l *oneListener) Accept() (net.Conn, error) {
	if !l.handed {
		l.handed = true
		return l.conn, nil
	}
	return nil, net.ErrClosed
}
func (l *oneListener) Close() error   { return nil }
func (l *oneListener) Addr() net.Addr { return l.conn.LocalAddr() }

// Framer follows the milter packet framing of what the MTA sends (4-byte
// big-endian length, command byte, data) across reads.
type Framer struct {
	hdr   [4]byte
	nh    int  // length bytes seen
	need  int  // bytes of the current packet still to come
	first bool // the next byte is the command code
	code  byte
}

// noReply reports whether the milter sends nothing back for command code
// (in protocol v2: SMFIC_MACRO, SMFIC_ABORT, and QUIT).
func noReply(code byte) bool { return code == 'D' || code == 'A' || code == 'Q' || code == 'K' }

// Scan consumes p and reports whether a packet that gets no reply ended in
// it: after such a packet the milter must acknowledge at once (TCP_QUICKACK),
// since no reply will carry the ACK. Exported for bench/milter-socket.
func (f *Framer) Scan(p []byte) bool {
	ended := false
	for len(p) > 0 {
		if f.need == 0 {
			k := copy(f.hdr[f.nh:], p)
			f.nh += k
			p = p[k:]
			if f.nh == 4 {
				f.nh = 0
				f.need = int(binary.BigEndian.Uint32(f.hdr[:]))
				f.first = f.need > 0
			}
			continue
		}
		if f.first {
			f.code, f.first = p[0], false
		}
		k := min(f.need, len(p))
		f.need -= k
		p = p[k:]
		if f.need == 0 && noReply(f.code) {
			ended = true
		}
	}
	return ended
}
