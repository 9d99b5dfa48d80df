package e2e

import (
	"context"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"time"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// Message is one test message submitted to Postfix's smtpd.
type Message struct {
	From    string
	To      []string
	Subject string   // unique per message: the sink side counts by it
	Headers []string // extra "Name: value" lines
	Auth    string   // unused unless the private smtpd offers SASL
}

// Submit sends m with swaks from inside namespace ns to Postfix on 127.0.0.1:25.
func Submit(ctx context.Context, ns *testenv.NS, m Message) error {
	args := []string{"--silent", "2", "--server", "127.0.0.1:25",
		"--helo", "client.e2e.test", "--from", m.From, "--to", strings.Join(m.To, ","),
		"--header", "Subject: " + m.Subject}
	for _, h := range m.Headers {
		args = append(args, "--add-header", h)
	}
	if _, err := ns.Run(ctx, "swaks", args...); err != nil {
		return fmt.Errorf("submit %q: %w", m.Subject, err)
	}
	return nil
}

// Session is an SMTP submission to Postfix held open part-way, so a test can
// act (kill the milter) while smtpd, cleanup and the milter are in the middle
// of the transaction. Finish completes it.
type Session struct {
	conn   net.Conn
	tp     *textproto.Conn
	m      Message
	inData bool
}

// OpenSession connects from inside ns to Postfix on 127.0.0.1:25 and sends
// EHLO, MAIL FROM and RCPT TO; with inData also DATA and the header block and
// the first body line, but not the end of the message.
func OpenSession(ctx context.Context, ns *testenv.NS, m Message, inData bool) (*Session, error) {
	conn, err := ns.Dial(ctx, "127.0.0.1:25")
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Now().Add(5 * time.Minute))
	s := &Session{conn: conn, tp: textproto.NewConn(conn), m: m, inData: inData}
	fail := func(err error) (*Session, error) {
		conn.Close()
		return nil, fmt.Errorf("session %q: %w", m.Subject, err)
	}
	if _, _, err := s.tp.ReadResponse(220); err != nil {
		return fail(err)
	}
	steps := []struct {
		cmd  string
		code int
	}{{"EHLO client.e2e.test", 250}, {"MAIL FROM:<" + m.From + ">", 250}}
	for _, r := range m.To {
		steps = append(steps, struct {
			cmd  string
			code int
		}{"RCPT TO:<" + r + ">", 250})
	}
	if inData {
		steps = append(steps, struct {
			cmd  string
			code int
		}{"DATA", 354})
	}
	for _, st := range steps {
		if err := s.cmd(st.cmd, st.code); err != nil {
			return fail(err)
		}
	}
	if inData {
		if err := s.tp.PrintfLine("%s", s.header()+"\r\nfirst line of the body"); err != nil {
			return fail(err)
		}
	}
	return s, nil
}

func (s *Session) cmd(line string, code int) error {
	id, err := s.tp.Cmd("%s", line)
	if err != nil {
		return err
	}
	s.tp.StartResponse(id)
	defer s.tp.EndResponse(id)
	if _, msg, err := s.tp.ReadResponse(code); err != nil {
		return fmt.Errorf("%s: %w (%s)", line, err, msg)
	}
	return nil
}

func (s *Session) header() string {
	h := []string{"From: <" + s.m.From + ">", "To: <" + strings.Join(s.m.To, ">, <") + ">", "Subject: " + s.m.Subject,
		"Date: " + time.Now().Format(time.RFC1123Z)}
	h = append(h, s.m.Headers...)
	return strings.Join(h, "\r\n") + "\r\n"
}

// Finish sends the rest of the message and QUIT; an error means Postfix did
// not accept the message.
func (s *Session) Finish() error {
	defer s.conn.Close()
	if !s.inData {
		if err := s.cmd("DATA", 354); err != nil {
			return fmt.Errorf("session %q: %w", s.m.Subject, err)
		}
		if err := s.tp.PrintfLine("%s", s.header()+"\r\nfirst line of the body"); err != nil {
			return fmt.Errorf("session %q: %w", s.m.Subject, err)
		}
	}
	if err := s.cmd("last line of the body\r\n.", 250); err != nil {
		return fmt.Errorf("session %q: end of data: %w", s.m.Subject, err)
	}
	s.cmd("QUIT", 221)
	return nil
}
