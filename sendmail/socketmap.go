package sendmail

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/socket"
)

// MapName is the name Sendmail sends in front of every socketmap request:
// the K line of the fragment declares the map under this name.
const MapName = "vipmilter"

// DefaultTTL is how long a decision is kept. Sendmail asks within
// milliseconds of end of message (the queuegroup ruleset runs before the
// queue file is written) and never again afterwards, because the answer is
// then stored in the queue file's persistent macros.
const DefaultTTL = time.Hour

// Store holds the milter's decisions, queue id → binding, for the socketmap.
// It is safe for concurrent use. The zero value is not usable; use NewStore.
type Store struct {
	cfg atomic.Pointer[config.Config]
	ttl time.Duration
	now func() time.Time
	log *slog.Logger

	mu    sync.Mutex
	byID  map[string]entry
	order []string // queue ids in recording order, for expiry
}

type entry struct {
	answer string // the socketmap value, see Answer
	at     time.Time
}

// NewStore returns a store answering with the addresses of cfg. log may be
// nil (slog.Default).
func NewStore(cfg *config.Config, log *slog.Logger) *Store {
	if log == nil {
		log = slog.Default()
	}
	s := &Store{ttl: DefaultTTL, now: time.Now, log: log, byID: make(map[string]entry)}
	s.cfg.Store(cfg)
	return s
}

// SetConfig makes later Records resolve binding names in cfg (serve calls it
// on reload). Decisions already recorded keep the address they were made with.
func (s *Store) SetConfig(cfg *config.Config) { s.cfg.Store(cfg) }

// Record stores the milter's decision for queue id queueID (Sendmail's macro
// i). It has the shape of milter.Settings.Decided: called once per accepted
// message at end of message. A binding the current config does not know is
// not recorded (logged), so Sendmail falls back as when the milter is down,
// rather than leaving from an address nobody chose.
func (s *Store) Record(queueID, binding string) {
	if queueID == "" {
		s.log.Warn("sendmail socketmap: decision without a queue id; Sendmail must send macro i to the milter", "binding", binding)
		return
	}
	ans, ok := Answer(s.cfg.Load(), binding)
	if !ok {
		s.log.Error("sendmail socketmap: decided binding is not in the config; the message takes the fallback", "queue_id", queueID, "binding", binding)
		return
	}
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(now)
	if _, dup := s.byID[queueID]; !dup {
		s.order = append(s.order, queueID)
	}
	s.byID[queueID] = entry{answer: ans, at: now}
}

// Lookup returns the socketmap value recorded for queueID.
func (s *Store) Lookup(queueID string) (string, bool) {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.byID[queueID]
	if !ok || now.Sub(e.at) > s.ttl {
		return "", false
	}
	return e.answer, true
}

// Len is the number of decisions held.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.byID)
}

// expire drops decisions older than the TTL; s.mu is held.
func (s *Store) expire(now time.Time) {
	n := 0
	for _, id := range s.order {
		if e, ok := s.byID[id]; ok && now.Sub(e.at) <= s.ttl {
			break
		}
		delete(s.byID, id)
		n++
	}
	if n > 0 {
		s.order = append(s.order[:0], s.order[n:]...)
	}
}

// Answer is the value the socketmap, the Match_Domain map and the fallback
// rule give Sendmail for binding name: "QUEUEGROUP/NAME/ADDRESS", with
// ADDRESS empty for a binding without an address (Sendmail's ordinary
// source address). The address is chosen by Family. It reports false when
// cfg has no binding called name, except for DefaultBindingName, which
// always exists for Sendmail (without a declared binding it is ordinary
// delivery).
func Answer(cfg *config.Config, name string) (string, bool) {
	b := cfg.Binding(name)
	if b == nil {
		if name != config.DefaultBindingName {
			return "", false
		}
		return DefaultQueueGroup + "/" + name + "/", true
	}
	addr := ""
	if a, ok := Family(b); ok {
		addr = a.String()
	}
	return QueueGroup(b) + "/" + b.Name + "/" + addr, true
}

// Family is the address a binding's Sendmail mail leaves from. Sendmail
// binds one address per message ({if_addr}), and the family of that address
// is the only family the message can use. The rule: the IPv4 address when
// the binding has one, else the IPv6 address. A dual-stack binding's mail
// therefore travels over IPv4 on Sendmail; destinations reachable only over
// IPv6 need an IPv6-only binding.
func Family(b *config.Binding) (netip.Addr, bool) {
	if a, ok := b.Addr4(); ok {
		return a, true
	}
	return b.Addr6()
}

// SocketmapServer answers Sendmail's socketmap requests from a Store.
type SocketmapServer struct {
	store *Store
	log   *slog.Logger
	conn  socket.Server
}

// NewSocketmapServer returns a server answering from store.
func NewSocketmapServer(store *Store, log *slog.Logger) *SocketmapServer {
	if log == nil {
		log = slog.Default()
	}
	s := &SocketmapServer{store: store, log: log}
	s.conn = socket.Server{Name: "socketmap", Handle: s.serveConn, MaxConns: store.cfg.Load().MaxConnections, Log: log}
	return s
}

// Listen opens addr (Sendmail_Socketmap); a stale unix socket is replaced.
func Listen(addr config.Listen) (net.Listener, error) {
	// Sendmail runs the lookups as root: the socket keeps the umask's mode.
	ln, err := socket.Listen(addr, 0)
	if err != nil {
		return nil, fmt.Errorf("socketmap %w", err)
	}
	return ln, nil
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = socket.ErrServerClosed

// Serve accepts connections on ln until Shutdown (ErrServerClosed) or ln
// fails for good; accept errors such as EMFILE are backed off from, not
// fatal.
func (s *SocketmapServer) Serve(ln net.Listener) error { return s.conn.Serve(ln) }

// Shutdown stops accepting, ends the reads idle connections wait in
// (Sendmail keeps a map connection open between lookups) and waits for the
// others until ctx ends.
func (s *SocketmapServer) Shutdown(ctx context.Context) error { return s.conn.Shutdown(ctx) }

// idleTimeout closes a connection Sendmail left idle; Sendmail reopens the
// map on its next lookup.
const idleTimeout = 5 * time.Minute

func (s *SocketmapServer) serveConn(c net.Conn) {
	defer c.Close()
	r := bufio.NewReader(c)
	for {
		c.SetReadDeadline(time.Now().Add(idleTimeout))
		req, err := readNetstring(r, maxRequest)
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !isTimeout(err) {
				s.log.Warn("sendmail socketmap: bad request", "err", err)
			}
			return
		}
		resp := s.answer(req)
		c.SetWriteDeadline(time.Now().Add(30 * time.Second))
		if _, err := io.WriteString(c, netstring(resp)); err != nil {
			return
		}
	}
}

// answer is the reply to one request "MAPNAME KEY" (Sendmail's socketmap
// protocol): "OK value", "NOTFOUND " or "PERM reason".
func (s *SocketmapServer) answer(req string) string {
	name, key, ok := strings.Cut(req, " ")
	switch {
	case !ok || key == "":
		return "PERM request is not \"map key\""
	case name != MapName:
		return "PERM unknown map " + strconv.Quote(name) + "; vipmilter serves " + MapName
	}
	v, found := s.store.Lookup(key)
	if !found {
		s.log.Debug("sendmail socketmap: queue id not decided by this process; Sendmail takes the fallback", "queue_id", key)
		return "NOTFOUND "
	}
	s.log.Debug("sendmail socketmap: answered", "queue_id", key, "value", v)
	return "OK " + v
}

// maxRequest bounds a request: a map name and a queue id are short.
const maxRequest = 1024

// readNetstring reads one netstring "LEN:DATA," (Bernstein).
func readNetstring(r *bufio.Reader, max int) (string, error) {
	head, err := r.ReadString(':')
	if err != nil {
		if head == "" && errors.Is(err, io.EOF) {
			return "", io.EOF
		}
		return "", fmt.Errorf("netstring length: %w", err)
	}
	n, err := strconv.Atoi(head[:len(head)-1])
	if err != nil || n < 0 || len(head) > 8 {
		return "", fmt.Errorf("netstring length %q", head)
	}
	if n > max {
		return "", fmt.Errorf("netstring of %d bytes, at most %d", n, max)
	}
	buf := make([]byte, n+1)
	if _, err := io.ReadFull(r, buf); err != nil {
		return "", fmt.Errorf("netstring data: %w", err)
	}
	if buf[n] != ',' {
		return "", errors.New("netstring not terminated by ','")
	}
	return string(buf[:n]), nil
}

func netstring(s string) string { return strconv.Itoa(len(s)) + ":" + s + "," }

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
