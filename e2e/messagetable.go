package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// TableSinkAddr is where the message-table sink listens, on the sink's
// eth0 next to smtp-sink (which offers no SMTPUTF8, so it cannot take the
// table's international addresses).
const TableSinkAddr = SinkAddr4 + ":2526"

// TableDelivery is one message as the table sink received it.
type TableDelivery struct {
	Peer string // source address of the connection: the binding's address
	Helo string // EHLO name the sender gave
	From string
	To   []string
	Data string
}

// TableSink is a go-smtp server offering SMTPUTF8 that keeps every message
// it receives in memory. It runs in this process with its listener made in
// the sink namespace.
type TableSink struct {
	srv  *smtp.Server
	done chan error

	mu   sync.Mutex
	msgs []TableDelivery
}

// StartTableSink serves SMTP on addr inside namespace ns until Close.
func StartTableSink(ns *testenv.NS, addr string) (*TableSink, error) {
	ln, err := ns.Listen(addr)
	if err != nil {
		return nil, err
	}
	ts := &TableSink{done: make(chan error, 1)}
	ts.srv = smtp.NewServer(ts)
	ts.srv.Domain = "table-sink.e2e.test"
	ts.srv.EnableSMTPUTF8 = true
	ts.srv.MaxRecipients = 100
	go func() { ts.done <- ts.srv.Serve(ln) }()
	return ts, nil
}

// Close stops the server.
func (ts *TableSink) Close() error {
	err := ts.srv.Close()
	<-ts.done
	return err
}

// Deliveries returns a copy of what arrived so far.
func (ts *TableSink) Deliveries() []TableDelivery {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]TableDelivery(nil), ts.msgs...)
}

// NewSession implements smtp.Backend.
func (ts *TableSink) NewSession(c *smtp.Conn) (smtp.Session, error) {
	host, _, _ := net.SplitHostPort(c.Conn().RemoteAddr().String())
	return &tableSession{ts: ts, conn: c, peer: host}, nil
}

type tableSession struct {
	ts   *TableSink
	conn *smtp.Conn
	peer string
	cur  TableDelivery
}

func (s *tableSession) Mail(from string, _ *smtp.MailOptions) error {
	s.cur = TableDelivery{Peer: s.peer, Helo: s.conn.Hostname(), From: from}
	return nil
}

func (s *tableSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.cur.To = append(s.cur.To, to)
	return nil
}

func (s *tableSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.cur.Data = string(b)
	s.ts.mu.Lock()
	s.ts.msgs = append(s.ts.msgs, s.cur)
	s.ts.mu.Unlock()
	return nil
}

func (s *tableSession) Reset()        { s.cur = TableDelivery{} }
func (s *tableSession) Logout() error { return nil }

// TableMessage is one message of an SMTP session SendSession holds.
type TableMessage struct {
	From     string
	To       []string
	SMTPUTF8 bool   // MAIL FROM carries SMTPUTF8 (RFC 6531)
	Raw      string // whole message, CRLF line ends
}

// SendSession connects from inside ns to Postfix on 127.0.0.1:25, says
// EHLO helo and sends every message in one session, then QUIT. It returns
// the queue id Postfix gave each message ("250 2.0.0 Ok: queued as ID");
// an error names the message (1-based) Postfix refused.
func SendSession(ctx context.Context, ns *testenv.NS, helo string, msgs []TableMessage) ([]string, error) {
	conn, err := ns.Dial(ctx, "127.0.0.1:25")
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(2 * time.Minute))
	c := smtp.NewClient(conn)
	defer c.Close()
	if err := c.Hello(helo); err != nil {
		return nil, fmt.Errorf("EHLO %s: %w", helo, err)
	}
	var ids []string
	for i, m := range msgs {
		id, err := sendOne(c, m)
		if err != nil {
			return nil, fmt.Errorf("message %d: %w", i+1, err)
		}
		ids = append(ids, id)
	}
	return ids, c.Quit()
}

func sendOne(c *smtp.Client, m TableMessage) (string, error) {
	if err := c.Mail(m.From, &smtp.MailOptions{UTF8: m.SMTPUTF8}); err != nil {
		return "", fmt.Errorf("MAIL FROM:<%s>: %w", m.From, err)
	}
	for _, to := range m.To {
		if err := c.Rcpt(to, nil); err != nil {
			return "", fmt.Errorf("RCPT TO:<%s>: %w", to, err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return "", fmt.Errorf("DATA: %w", err)
	}
	if _, err := io.WriteString(w, m.Raw); err != nil {
		return "", fmt.Errorf("DATA: %w", err)
	}
	resp, err := w.CloseWithResponse()
	if err != nil {
		return "", fmt.Errorf("end of data: %w", err)
	}
	_, id, ok := strings.Cut(resp.StatusText, "queued as ")
	if !ok {
		return "", fmt.Errorf("end of data: no queue id in %q", resp.StatusText)
	}
	return strings.TrimSpace(id), nil
}

// marked appends a body line naming the message, so the sink's copy can be
// told apart from identical messages of other rows; no table policy reads
// the body.
func marked(raw, id string) string {
	if !strings.HasSuffix(raw, "\r\n") {
		raw += "\r\n"
	}
	return raw + "msgtable-id " + id + "\r\n"
}
