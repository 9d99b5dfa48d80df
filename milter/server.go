// Package milter is vipmilter's milter for Postfix and Sendmail (milter
// protocol 6, github.com/d--j/go-milter): it collects what the policy reads
// of each message, asks the policy for a binding, and writes one binding
// header at end of message.
//
// It negotiates only the stages the policy needs and asks for no replies
// where the answer cannot change anything: MAIL and RCPT always (envelope;
// MAIL also starts a message), HELO only for a policy that reads it, headers
// only for a policy that reads headers or the size, the body only for one
// that reads the body or the size. The client's address and name, the
// daemon name, the SASL login and the queue id come from macros requested at
// negotiation. Only end of message is answered.
package milter

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/socket"
	"github.com/vipmilter/vipmilter/sieve"
)

// Decider is what the milter needs of a policy; *sieve.Policy satisfies it.
type Decider interface {
	Decide(ctx context.Context, m *sieve.Message) sieve.Decision
	Needs() sieve.Needs
}

// headerReader is an optional Decider method: a policy that can name the
// header fields it reads lets the milter keep only those.
type headerReader interface {
	ReadsHeader(name string) bool
}

// Server serves milter sessions. The zero value is not usable; use New.
type Server struct {
	log     *slog.Logger
	metrics *Metrics
	gen     atomic.Pointer[generation]
	slots   chan struct{} // one per open connection, cap MaxConnections
	done    chan struct{} // closed by Shutdown
	capLog  atomic.Int64  // unix nanoseconds of the last "cap reached" log line

	mu       sync.Mutex
	closing  bool
	lns      []net.Listener
	sessions sync.WaitGroup
	active   map[*wireConn]struct{}
}

// generation is one policy with its settings and the go-milter server that
// negotiates the stages that policy needs. A reload starts a new generation;
// sessions of the old one finish with the policy they negotiated for.
type generation struct {
	d        Decider
	st       Settings
	needs    sieve.Needs
	protocol gomilter.OptProtocol
	lib      *gomilter.Server
	queue    *connQueue
}

// New returns a Server deciding with d under st. log may be nil
// (slog.Default). st.MaxConnections is read here; the other settings follow
// SetPolicy.
func New(d Decider, st Settings, log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	st = st.withDefaults()
	s := &Server{
		log:     log,
		metrics: NewMetrics(),
		slots:   make(chan struct{}, st.MaxConnections),
		done:    make(chan struct{}),
		active:  map[*wireConn]struct{}{},
	}
	setLibraryLogger(log)
	s.SetPolicy(d, st)
	return s
}

// SetPolicy swaps the policy and settings atomically. A session keeps the
// policy it negotiated for (the MTA sends only the stages that policy
// needs); new connections use d.
func (s *Server) SetPolicy(d Decider, st Settings) {
	st = st.withDefaults()
	g := &generation{d: d, st: st, needs: d.Needs(), queue: newConnQueue()}
	g.protocol = protocol(g.needs)
	g.lib = gomilter.NewServer(
		gomilter.WithDynamicMilter(func(uint32, gomilter.OptAction, gomilter.OptProtocol, gomilter.DataSize) gomilter.Milter {
			return newSession(s, g)
		}),
		gomilter.WithActions(gomilter.OptAddHeader),
		gomilter.WithProtocols(g.protocol),
		gomilter.WithMacroRequest(gomilter.StageConnect, []gomilter.MacroName{
			gomilter.MacroClientAddr, gomilter.MacroClientName, gomilter.MacroDaemonName}),
		gomilter.WithMacroRequest(gomilter.StageMail, []gomilter.MacroName{gomilter.MacroAuthAuthen}),
		gomilter.WithMacroRequest(gomilter.StageEOM, []gomilter.MacroName{gomilter.MacroQueueId}),
	)
	go g.lib.Serve(g.queue)
	if old := s.gen.Swap(g); old != nil {
		old.queue.Close() // its sessions run on
	}
}

// Policy returns the current policy.
func (s *Server) Policy() Decider { return s.gen.Load().d }

// Metrics returns the server's metrics (private registry).
func (s *Server) Metrics() *Metrics { return s.metrics }

// protocol is the stage set for a policy's needs (see the package comment).
// Every stage the milter receives but the end of message is no-reply: the
// answer could not change anything, since the decision needs the whole
// message.
func protocol(n sieve.Needs) gomilter.OptProtocol {
	p := gomilter.OptNoConnect | gomilter.OptNoData | gomilter.OptNoUnknown | gomilter.OptNoEOH |
		gomilter.OptNoMailReply | gomilter.OptNoRcptReply
	if n.Helo {
		p |= gomilter.OptNoHeloReply
	} else {
		p |= gomilter.OptNoHelo
	}
	if n.Headers || n.Size {
		p |= gomilter.OptNoHeaderReply
	} else {
		p |= gomilter.OptNoHeaders
	}
	if n.Body || n.Size {
		p |= gomilter.OptNoBodyReply
	} else {
		p |= gomilter.OptNoBody
	}
	return p
}

// Listen opens addr. A stale unix socket is removed first and removed
// again by Shutdown; a new one gets Settings.SocketMode.
func (s *Server) Listen(addr config.Listen) (net.Listener, error) {
	ln, err := socket.Listen(addr, fs.FileMode(s.gen.Load().st.SocketMode))
	if err != nil {
		return nil, fmt.Errorf("milter %w", err)
	}
	return ln, nil
}

// Accept back-off after errors such as EMFILE (as net/http does).
const (
	acceptBackoffMin = 5 * time.Millisecond
	acceptBackoffMax = time.Second
)

// Serve accepts connections on ln until Shutdown and hands each to the
// current generation. At most MaxConnections are open at once; accept
// errors other than a closed listener (EMFILE, ENFILE, ENOBUFS, …) are
// logged and counted, and accepting resumes after a back-off.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		ln.Close()
		return gomilter.ErrServerClosed
	}
	s.lns = append(s.lns, ln)
	s.mu.Unlock()
	var backoff time.Duration
	for {
		select {
		case s.slots <- struct{}{}:
		default:
			s.metrics.connCapped.Inc()
			// At most one line a minute under a flood.
			if last, now := s.capLog.Load(), time.Now().UnixNano(); now-last > int64(time.Minute) && s.capLog.CompareAndSwap(last, now) {
				s.log.Warn("milter connection cap reached; new connections wait", "max_connections", cap(s.slots))
			}
			select {
			case s.slots <- struct{}{}:
			case <-s.done:
				return gomilter.ErrServerClosed
			}
		}
		conn, err := ln.Accept()
		if err != nil {
			<-s.slots
			if s.isClosing() {
				return gomilter.ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("milter accept: %w", err)
			}
			backoff = min(max(2*backoff, acceptBackoffMin), acceptBackoffMax)
			s.metrics.acceptErrors.Inc()
			s.log.Error("milter accept failed; retrying", "err", err, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.done:
				return gomilter.ErrServerClosed
			}
			continue
		}
		backoff = 0
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			conn.Close()
			<-s.slots
			continue
		}
		s.sessions.Add(1)
		s.mu.Unlock()
		s.hand(conn)
	}
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// hand passes conn to the current generation's go-milter server.
func (s *Server) hand(conn net.Conn) {
	for {
		g := s.gen.Load()
		wc := newWireConn(conn, s, g)
		s.mu.Lock()
		s.active[wc] = struct{}{}
		s.mu.Unlock()
		if g.queue.put(wc) {
			return
		}
		// Replaced by a reload in between: take the new generation.
		s.mu.Lock()
		delete(s.active, wc)
		s.mu.Unlock()
	}
}

// release ends a connection's bookkeeping; wireConn.Close calls it once.
func (s *Server) release(c *wireConn) {
	s.mu.Lock()
	delete(s.active, c)
	s.mu.Unlock()
	<-s.slots
	s.sessions.Done()
}

// Shutdown stops accepting, waits for sessions in flight until ctx ends,
// then closes what is left.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		s.closing = true
		close(s.done)
	}
	for _, ln := range s.lns {
		ln.Close()
	}
	s.mu.Unlock()
	s.gen.Load().queue.Close()
	waited := make(chan struct{})
	go func() { s.sessions.Wait(); close(waited) }()
	select {
	case <-waited:
		return nil
	case <-ctx.Done():
		s.mu.Lock()
		conns := make([]*wireConn, 0, len(s.active))
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

// connQueue is the listener of one generation's go-milter server: Serve
// accepts on the real socket and queues each connection here.
type connQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue() *connQueue {
	return &connQueue{ch: make(chan net.Conn), done: make(chan struct{})}
}

// put hands c to the go-milter server; false if the queue is closed.
func (q *connQueue) put(c net.Conn) bool {
	select {
	case <-q.done:
		return false
	default:
	}
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return queueAddr{} }

type queueAddr struct{}

func (queueAddr) Network() string { return "milter" }
func (queueAddr) String() string  { return "vipmilter" }

// libLog receives go-milter's warnings (malformed packets, broken
// connections). go-milter has one package-wide hook, so the logger of the
// most recent New gets them.
var libLog atomic.Pointer[slog.Logger]

var libLogOnce sync.Once

func setLibraryLogger(log *slog.Logger) {
	libLog.Store(log)
	libLogOnce.Do(func() {
		gomilter.LogWarning = func(format string, v ...any) {
			libLog.Load().Warn("milter protocol", "detail", fmt.Sprintf(format, v...))
		}
	})
}
