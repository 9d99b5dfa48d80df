package milter

import (
	"context"
	"fmt"
	"strings"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// session is one MTA connection's backend. Connection fields and message
// fields are kept apart, and reset clears exactly the message fields: at
// MAIL (Sendmail sends no ABORT between accepted messages), at ABORT, and
// after end of message.
type session struct {
	gomilter.NoOpMilter
	srv     *Server
	g       *generation // the policy the stages were negotiated for
	headers headerReader

	// connection
	helo string

	// message
	msg         sieve.Message
	size        int
	headerBytes int64 // header bytes kept for the policy
	capped      bool  // a header field was dropped for MaxHeaderBytes
	failed      bool  // a callback panicked: the message is tempfailed
	started     time.Time
}

func newSession(s *Server, g *generation) *session {
	ses := &session{srv: s, g: g}
	ses.headers, _ = g.d.(headerReader)
	return ses
}

func (s *session) reset() {
	s.msg = sieve.Message{}
	s.size, s.headerBytes, s.capped, s.failed = 0, 0, false, false
	s.started = time.Time{}
}

// recovered turns a panic in a callback into a failed message, so one bad
// message never takes down other sessions: go-milter does not recover.
func (s *session) recovered(resp **gomilter.Response, err *error) {
	if r := recover(); r != nil {
		s.srv.metrics.panics.Inc()
		s.srv.log.Error("milter session panic", "queue_id", s.msg.QueueID, "panic", fmt.Sprint(r))
		s.failed = true
		*resp, *err = gomilter.RespTempFail, nil
	}
}

func (s *session) NewConnection(gomilter.Modifier) error {
	s.helo = ""
	s.reset()
	return nil
}

func (s *session) Helo(name string, _ gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	s.helo = name
	return gomilter.RespContinue, nil
}

func (s *session) MailFrom(from, _ string, _ gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	s.reset()
	s.started = time.Now()
	s.msg.From = from
	return gomilter.RespContinue, nil
}

func (s *session) RcptTo(to, _ string, _ gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	s.msg.To = append(s.msg.To, to)
	return gomilter.RespContinue, nil
}

// Header keeps a field for the policy, through sieve.Message.AddHeader (the
// one message view), when the policy reads headers and reads this one,
// within MaxHeaderBytes.
func (s *session) Header(name, value string, _ gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	n := len(name) + len(value)
	s.size += n + 3 // ":" and CRLF
	if !s.g.needs.Headers || (s.headers != nil && !s.headers.ReadsHeader(name)) {
		return gomilter.RespContinue, nil
	}
	if s.headerBytes+int64(n) > s.g.st.MaxHeaderBytes {
		s.capped = true
		return gomilter.RespContinue, nil
	}
	s.headerBytes += int64(n)
	s.msg.AddHeader(name, value)
	return gomilter.RespContinue, nil
}

func (s *session) BodyChunk(chunk []byte, _ gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	s.size += len(chunk)
	if s.g.needs.Body {
		if room := s.g.st.MaxBodyBytes - int64(len(s.msg.Body)); room > 0 {
			if int64(len(chunk)) > room {
				chunk = chunk[:room]
			}
			s.msg.Body = append(s.msg.Body, chunk...)
		}
	}
	return gomilter.RespContinue, nil
}

// EndOfMessage decides and writes the binding header.
func (s *session) EndOfMessage(m gomilter.Modifier) (resp *gomilter.Response, err error) {
	defer s.recovered(&resp, &err)
	defer s.reset()
	st := s.g.st
	s.msg.QueueID = m.Get(gomilter.MacroQueueId)
	s.msg.Auth = m.Get(gomilter.MacroAuthAuthen)
	s.msg.Daemon = m.Get(gomilter.MacroDaemonName)
	s.msg.RemoteIP = m.Get(gomilter.MacroClientAddr)
	s.msg.RemoteHost = m.Get(gomilter.MacroClientName)
	s.msg.Helo = s.helo
	if s.failed {
		return gomilter.RespTempFail, nil
	}
	s.msg.Phase = "during"
	s.msg.Size = s.size + 2 // the empty line after the header
	if s.g.needs.Body && s.msg.Body == nil {
		s.msg.Body = []byte{}
	}
	met := s.srv.metrics
	if s.capped {
		met.headersCapped.Inc()
	}
	d := s.decide()
	met.decision.Observe(d.Elapsed.Seconds())
	met.messages.WithLabelValues(d.Binding, string(d.Reason)).Inc()
	met.unavailable.Add(float64(d.Unavailable))
	if d.Split {
		met.split.Inc()
	}
	attrs := []any{"queue_id", s.msg.QueueID, "from", s.msg.From, "rcpts", len(s.msg.To),
		"binding", d.Binding, "group", d.Group, "reason", d.Reason, "split", d.SplitText(),
		"trace", d.TraceText(), "elapsed", time.Since(s.started)}
	if s.capped {
		attrs = append(attrs, "headers_capped", st.MaxHeaderBytes)
	}
	if d.Err != nil {
		met.policyErrors.Inc()
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
		return gomilter.RejectWithCodeAndReason(550, "5.7.1 "+oneLine(text))
	case sieve.Tempfail:
		return gomilter.RejectWithCodeAndReason(451, "4.3.0 binding policy failed, try again later")
	}
	if !st.NoHeader {
		if err := m.AddHeader(st.BindingHeader, st.headerValue(d.Binding)); err != nil {
			return nil, fmt.Errorf("add %s: %w", st.BindingHeader, err)
		}
	}
	if st.Decided != nil {
		st.Decided(s.msg.QueueID, d.Binding)
	}
	return gomilter.RespAccept, nil
}

// decide runs the policy; a panic in it is a policy error handled per
// Settings.OnPolicyError.
func (s *session) decide() (d sieve.Decision) {
	defer func() {
		if r := recover(); r != nil {
			s.srv.metrics.panics.Inc()
			d = sieve.Decision{Reason: sieve.ReasonPolicyError, Err: fmt.Errorf("policy panic: %v", r)}
			if s.g.st.OnPolicyError == config.PolicyErrorTempfail {
				d.Action = sieve.Tempfail
				return
			}
			d.Binding = config.DefaultBindingName
			d.Trace = []sieve.Step{{Rule: "error", Detail: d.Err.Error()}, {Rule: "fallback", Detail: "binding " + d.Binding}}
		}
	}()
	return s.g.d.Decide(context.Background(), &s.msg)
}

func (s *session) Abort(gomilter.Modifier) error {
	s.reset()
	return nil
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}
