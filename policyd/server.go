// Package policyd is vipmilter's Postfix SMTPD access policy delegation
// server (Postfix SMTPD_POLICY_README; main.cf check_policy_service). For
// policies that read only the envelope and the connection it replaces the
// milter on mail that passes smtpd: Postfix asks once per recipient (RCPT,
// answered DUNNO, the recipients are collected per message) and once at
// DATA, where the binding is decided with the same policy engine as the
// milter (sieve.Policy.Decide) and returned as
//
//	action=PREPEND <Binding_Header>: <binding> <key>
//
// so that the keyed binding header the milter would have written is in the
// queue file, and Postfix's header_checks route it on first arrival and on
// every later path (postsuper -r, content-filter re-injection). PREPEND is
// honoured in smtpd_data_restrictions but not in
// smtpd_end_of_data_restrictions (access(5)), which is why the decision is
// made at DATA: the message size is then only the client's MAIL FROM SIZE=,
// so policies testing "size" use the milter (ChooseHook).
package policyd

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/socket"
	"github.com/vipmilter/vipmilter/sieve"
)

// MaxRecipients bounds the recipients kept for one message: Postfix's
// default smtpd_recipient_limit. Beyond it recipients are counted, not kept.
const MaxRecipients = 1000

// Defaults for Options.
const (
	// DefaultIdleTimeout closes a policy connection that sends nothing. It
	// exceeds Postfix's smtpd_policy_service_max_idle (300s), so Postfix
	// normally closes first; a client that is not Postfix cannot hold a
	// connection forever.
	DefaultIdleTimeout = 10 * time.Minute
	writeTimeout       = 10 * time.Second
)

// SocketMode is the mode of a unix policy socket: smtpd (user postfix)
// connects to it; the directory it lives in limits who can reach it.
const SocketMode fs.FileMode = 0o666

// Options configure a Server.
type Options struct {
	// BindingHeader and HeaderKey make the PREPEND value
	// "<BindingHeader>: <binding> <HeaderKey>" (config.BindingHeaderValue:
	// the key past what Postfix logs; without it when it is empty, tests
	// only), the value the milter writes.
	BindingHeader string
	HeaderKey     string
	// Daemon is sieve.Message.Daemon when a request has no policy_context.
	// The milter sees Postfix's {daemon_name}, $myhostname by default;
	// serve passes the host name.
	Daemon      string
	IdleTimeout time.Duration // 0: DefaultIdleTimeout
	// MaxConns caps concurrent policy connections, one per smtpd process
	// that asked (Max_Connections); further ones wait in the listen
	// backlog. 0: config.DefaultMaxConnections.
	MaxConns int
	Log      *slog.Logger // nil: slog.Default()
}

// Server answers Postfix policy requests. It is safe for concurrent use;
// SetPolicy swaps the policy for requests that follow.
type Server struct {
	cur  atomic.Pointer[current]
	opts Options
	log  *slog.Logger
	conn socket.Server
}

// New returns a Server deciding with pol.
func New(pol *sieve.Policy, opts Options) *Server {
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = DefaultIdleTimeout
	}
	s := &Server{opts: opts, log: opts.Log}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.conn = socket.Server{Name: "policy service", Handle: s.ServeConn, MaxConns: opts.MaxConns, Log: s.log}
	s.cur.Store(&current{pol: pol, header: opts.BindingHeader, key: opts.HeaderKey})
	return s
}

// current is what a DATA request is answered with; a reload swaps it whole,
// so no answer pairs a new policy with an old header key.
type current struct {
	pol         *sieve.Policy
	header, key string
}

// SetPolicy replaces the policy, the binding header's name and its key
// (Binding_Header, Binding_Header_Key's content, as in Options); a message
// whose DATA request comes later is decided and answered by the new ones.
func (s *Server) SetPolicy(pol *sieve.Policy, bindingHeader, headerKey string) {
	s.cur.Store(&current{pol: pol, header: bindingHeader, key: headerKey})
}

// AcceptErrors counts failed accepts (for example EMFILE) the server
// backed off from.
func (s *Server) AcceptErrors() uint64 { return s.conn.AcceptErrors() }

// Listen opens addr. A stale unix socket file is replaced; the new one is
// made SocketMode and removed again when the listener closes.
func (s *Server) Listen(addr config.Listen) (net.Listener, error) {
	ln, err := socket.Listen(addr, SocketMode)
	if err != nil {
		return nil, fmt.Errorf("policy service %w", err)
	}
	return ln, nil
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = socket.ErrServerClosed

// Serve accepts connections on ln until Shutdown or a permanent error, at
// most MaxConns at once. Accept errors such as EMFILE are logged, counted
// and retried with a growing delay (5 ms to 1 s), so running out of
// descriptors slows the service down instead of ending it.
func (s *Server) Serve(ln net.Listener) error { return s.conn.Serve(ln) }

// Shutdown closes the listeners, then waits for connections to end (an
// idle one, between requests, ends at once); when ctx ends first, it closes
// them (Postfix retries a request that got no answer, SMTPD_POLICY_README).
func (s *Server) Shutdown(ctx context.Context) error { return s.conn.Shutdown(ctx) }

// ServeConn answers requests on c until it closes, misbehaves or idles out,
// then closes it. The message state (recipients so far) lives only here.
func (s *Server) ServeConn(c net.Conn) {
	defer c.Close()
	br := bufio.NewReaderSize(c, MaxLineBytes)
	bw := bufio.NewWriterSize(c, 512)
	var (
		req Request
		msg message
	)
	for {
		c.SetReadDeadline(time.Now().Add(s.opts.IdleTimeout))
		if err := readRequest(br, &req); err != nil {
			if err != io.EOF && !s.conn.Closing() {
				s.log.Warn("policy request refused; disconnecting", "remote", remote(c), "err", err)
			}
			return
		}
		action := s.answer(&msg, &req)
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		bw.WriteString("action=")
		bw.WriteString(action)
		bw.WriteString("\n\n")
		if err := bw.Flush(); err != nil {
			s.log.Warn("policy reply failed", "remote", remote(c), "err", err)
			return
		}
	}
}

func remote(c net.Conn) string {
	if a := c.RemoteAddr(); a != nil && a.String() != "" {
		return a.String()
	}
	return c.LocalAddr().String()
}

// message is what one connection knows of the message in progress.
// Postfix sends every request about one message over one connection, and
// a new instance value means the previous message is done or aborted
// (SMTPD_POLICY_README), so one message per connection is all there is.
type message struct {
	instance string
	to       []string // first MaxRecipients recipients, in RCPT order
	rcpts    int      // RCPT requests seen
}

func (m *message) reset(instance string) {
	m.instance = instance
	clear(m.to)
	m.to = m.to[:0]
	m.rcpts = 0
}

// dunno lets Postfix go on with its other restrictions.
const dunno = "DUNNO"

// answer returns the action for r, updating the connection's message.
func (s *Server) answer(m *message, r *Request) string {
	if r.Request != "smtpd_access_policy" {
		return dunno
	}
	if r.Instance != m.instance {
		m.reset(r.Instance)
	}
	switch r.State {
	case "RCPT":
		if r.Recipient != "" {
			m.rcpts++
			if len(m.to) < MaxRecipients {
				m.to = append(m.to, r.Recipient)
			}
		}
		return dunno
	case "DATA":
		act := s.decide(m, r)
		m.reset("")
		return act
	}
	return dunno
}
