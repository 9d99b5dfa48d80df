package milter

import (
	"context"
	"fmt"
	"net"
	"net/textproto"
	"strings"
	"time"

	gomilter "github.com/emersion/go-milter"

	"github.com/vipmilter/vipmilter/sieve"
)

// session is one milter connection. go-milter reuses it for every message
// on the connection and calls Abort between them, so per-message state
// lives in msg and is reset there.
type session struct {
	srv    *Server
	policy Decider // snapshot at connect: the stages were negotiated for it
	body   bool    // the body stage was requested
	needs  sieve.Needs

	*connState // shared by every backend go-milter creates for this connection

	// message state
	msg     sieve.Message
	copies  int // client-sent copies of the binding header
	size    int
	started time.Time
}

// connState is per-connection state. go-milter builds a new backend after each
// accepted message, so what Connect/HELO learnt must live outside it.
type connState struct {
	remoteIP, remoteHost, helo, daemon string
}

func newSession(s *Server, d Decider, body bool, c *connState) *session {
	return &session{srv: s, policy: d, body: body, needs: d.Needs(), connState: c}
}

func (s *session) reset() {
	s.msg = sieve.Message{}
	s.copies, s.size = 0, 0
	s.started = time.Time{}
}

// recovered turns a panic in a callback into a tempfail for the message,
// so one bad message never takes down other sessions.
func (s *session) recovered(resp *gomilter.Response, err *error) {
	if r := recover(); r != nil {
		s.srv.metrics.Panics.Inc()
		s.srv.log.Error("milter session panic", "queue_id", s.msg.QueueID, "panic", fmt.Sprint(r))
		*resp, *err = gomilter.RespTempFail, nil
	}
}

func (s *session) macros(m *gomilter.Modifier) {
	if m == nil {
		return
	}
	if v := m.Macros["i"]; v != "" {
		s.msg.QueueID = v
	}
	if v := m.Macros["{auth_authen}"]; v != "" {
		s.msg.Auth = v
	}
	if v := m.Macros["{daemon_name}"]; v != "" {
		s.daemon = v
	}
	if v := m.Macros["{client_name}"]; v != "" && s.remoteHost == "" {
		s.remoteHost = v
	}
	if v := m.Macros["{client_addr}"]; v != "" && s.remoteIP == "" {
		s.remoteIP = v
	}
}

func (s *session) Connect(host, family string, port uint16, addr net.IP, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	s.remoteHost = host
	if addr != nil {
		s.remoteIP = addr.String()
	}
	s.macros(m)
	return gomilter.RespContinue, nil
}

func (s *session) Helo(name string, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	s.helo = name
	s.macros(m)
	return gomilter.RespContinue, nil
}

func (s *session) MailFrom(from string, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	s.reset()
	s.started = time.Now()
	s.msg.From = strings.TrimSuffix(strings.TrimPrefix(from, "<"), ">")
	s.macros(m)
	return gomilter.RespContinue, nil
}

func (s *session) RcptTo(to string, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	s.msg.To = append(s.msg.To, strings.TrimSuffix(strings.TrimPrefix(to, "<"), ">"))
	s.macros(m)
	return gomilter.RespContinue, nil
}

func (s *session) Header(name, value string, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	if strings.EqualFold(name, s.policy.Config().BindingHeader) {
		s.copies++
	}
	s.size += len(name) + len(value) + 4
	s.macros(m)
	return gomilter.RespContinue, nil
}

func (s *session) Headers(h textproto.MIMEHeader, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	if s.needs.Headers {
		s.msg.Header = h
	}
	s.size += 2
	s.macros(m)
	return gomilter.RespContinue, nil
}

func (s *session) BodyChunk(chunk []byte, m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	s.size += len(chunk)
	if s.needs.Body {
		max := s.policy.Config().MaxBodyBytes
		if room := max - int64(len(s.msg.Body)); room > 0 {
			if int64(len(chunk)) > room {
				chunk = chunk[:room]
			}
			s.msg.Body = append(s.msg.Body, chunk...)
		}
	}
	return gomilter.RespContinue, nil
}

// Body is end of message: decide, strip the client's binding headers and
// write ours.
func (s *session) Body(m *gomilter.Modifier) (resp gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	defer s.reset()
	s.macros(m)
	cfg := s.policy.Config()
	s.msg.RemoteIP, s.msg.RemoteHost, s.msg.Helo, s.msg.Daemon = s.remoteIP, s.remoteHost, s.helo, s.daemon
	s.msg.Phase = "during"
	s.msg.Size = s.size
	if s.needs.Headers && s.msg.Header == nil {
		s.msg.Header = m.Headers
	}
	if s.needs.Body && s.msg.Body == nil {
		s.msg.Body = []byte{}
	}
	d := s.policy.Decide(context.Background(), &s.msg)
	met := s.srv.metrics
	met.Decision.Observe(d.Elapsed.Seconds())
	met.Messages.WithLabelValues(d.Binding, string(d.Reason)).Inc()
	met.Unavailable.Add(float64(d.Unavailable))
	if d.Split {
		met.Split.Inc()
	}
	attrs := []any{"queue_id", s.msg.QueueID, "from", s.msg.From, "rcpts", len(s.msg.To),
		"binding", d.Binding, "group", d.Group, "reason", d.Reason, "split", d.Split,
		"trace", traceText(d.Trace), "elapsed", time.Since(s.started)}
	if d.Err != nil {
		met.PolicyErrors.Inc()
		s.srv.log.Warn("milter decision", append(attrs, "err", d.Err)...)
	} else {
		s.srv.log.Info("milter decision", attrs...)
	}
	switch d.Action {
	case sieve.Reject:
		text := d.RejectText
		if text == "" {
			text = "message refused by policy"
		}
		return gomilter.NewResponseStr('y', "550 5.7.1 "+oneLine(text)), nil
	case sieve.Tempfail:
		return gomilter.NewResponseStr('y', "451 4.3.0 binding policy failed, try again later"), nil
	}
	// Indices are per header name, 1-based; delete from the last copy so
	// earlier indices stay valid.
	for i := s.copies; i >= 1; i-- {
		if err := m.ChangeHeader(i, cfg.BindingHeader, ""); err != nil {
			return nil, fmt.Errorf("delete %s #%d: %w", cfg.BindingHeader, i, err)
		}
	}
	if err := m.AddHeader(cfg.BindingHeader, d.Binding); err != nil {
		return nil, fmt.Errorf("add %s: %w", cfg.BindingHeader, err)
	}
	return gomilter.RespAccept, nil
}

func (s *session) Abort(m *gomilter.Modifier) error {
	s.reset()
	return nil
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// traceText is the decision's trace on one log line: which rule decided,
// and for a group which members were skipped and why.
func traceText(steps []sieve.Step) string {
	var b strings.Builder
	for i, st := range steps {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(st.Rule)
		if st.Line > 0 {
			fmt.Fprintf(&b, " (line %d)", st.Line)
		}
		if st.Detail != "" {
			b.WriteString(": ")
			b.WriteString(st.Detail)
		}
	}
	return b.String()
}
