package policyd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// decide places the message at the DATA request and returns the action.
func (s *Server) decide(m *message, r *Request) string {
	cur := s.cur.Load()
	pol := cur.pol
	msg := sieve.Message{
		From:       r.Sender,
		Auth:       r.SASLUsername,
		RemoteIP:   r.ClientAddress,
		RemoteHost: r.ClientName,
		Helo:       r.HeloName,
		QueueID:    r.QueueID,
		Daemon:     r.PolicyContext,
		Phase:      "during",
		Size:       r.Size,
	}
	if msg.Daemon == "" {
		msg.Daemon = s.opts.Daemon
	}
	// With exactly one accepted recipient Postfix names it at DATA: that
	// is exact even when a later restriction rejected others we saw.
	exact := r.RecipientCount == 1 && r.Recipient != ""
	// A policy no recipient can change (Needs.Recipients false) is
	// rendered at DATA only: it decides from this request alone.
	alone := !pol.Needs().Recipients
	switch {
	case exact:
		msg.To = []string{r.Recipient}
	case alone && len(m.to) == 0:
		// Logged and traced without recipients; the decision is the same.
	default:
		msg.To = m.to
	}
	ctx := context.Background()
	d := pol.Decide(ctx, &msg)
	switch {
	case exact || alone || m.rcpts == r.RecipientCount:
	case m.rcpts < r.RecipientCount:
		// Recipients were accepted that this connection never heard of:
		// Postfix reopened the policy connection during the message (its
		// max_idle/max_ttl timers run between SMTP commands), or the
		// entry is not first in smtpd_recipient_restrictions. Transient in
		// the first case, loud in the second: ask the client to retry.
		d = unseen(d, m.rcpts, r.RecipientCount)
	default:
		d = s.uncertain(ctx, pol, &msg, d, m.rcpts, r.RecipientCount)
	}
	s.logDecision(&msg, d)
	switch d.Action {
	case sieve.Reject:
		text := d.RejectText
		if text == "" {
			text = "message refused by policy"
		}
		return "550 5.7.1 " + oneLine(text)
	case sieve.Tempfail:
		return "451 4.3.0 binding policy failed, try again later"
	}
	return "PREPEND " + cur.header + ": " + config.BindingHeaderValue(cur.header, d.Binding, cur.key)
}

// errUncertain is the policy error for a message whose accepted recipients
// are not known and for which they would change the decision.
var errUncertain = errors.New("recipients uncertain: a restriction after the policy service rejected some, and the policy places the remaining candidates differently")

// uncertain handles a DATA request whose recipient count differs from the
// recipients the RCPT requests named: a restriction listed after the
// policy service (or Postfix's own recipient validation) rejected some,
// or more than MaxRecipients came. The decision stands when every
// recipient seen, taken alone, is placed the same way (so whichever were
// accepted, the first of them gives this result); otherwise the message
// follows On_Policy_Error, as for any message the policy cannot place.
func (s *Server) uncertain(ctx context.Context, pol *sieve.Policy, msg *sieve.Message, d sieve.Decision, seen, accepted int) sieve.Decision {
	all := msg.To
	defer func() { msg.To = all }()
	tried := map[string]bool{}
	for _, rcpt := range all {
		if tried[rcpt] || len(tried) >= sieve.MaxSplitRecipients {
			continue
		}
		tried[rcpt] = true
		msg.To = []string{rcpt}
		alone := pol.Decide(ctx, msg)
		if alone.Action != d.Action || placeOf(alone) != placeOf(d) {
			return s.policyError(pol, d, errUncertain)
		}
	}
	if seen > len(all) && len(tried) < sieve.MaxSplitRecipients {
		// Recipients beyond MaxRecipients were not kept, so not checked.
		return s.policyError(pol, d, errUncertain)
	}
	d.Trace = append(d.Trace, sieve.Step{Rule: "recipients", Detail: "saw " + strconv.Itoa(seen) + " RCPT, Postfix accepted " + strconv.Itoa(accepted) + "; each seen recipient alone gives the same binding"})
	return d
}

// unseen is the decision for a message with recipients the service did
// not see: a temporary failure whatever On_Policy_Error says, since the
// binding may depend on them and a retry normally sees them all.
func unseen(d sieve.Decision, seen, accepted int) sieve.Decision {
	err := fmt.Errorf("recipients unseen: Postfix accepted %d, the RCPT requests on this connection named %d (policy connection reopened, or check_policy_service is not first in smtpd_recipient_restrictions)", accepted, seen)
	d.Reason, d.Err, d.Action, d.Binding, d.Group = sieve.ReasonPolicyError, err, sieve.Tempfail, "", ""
	d.Trace = append(d.Trace, sieve.Step{Rule: "error", Detail: err.Error()})
	return d
}

// placeOf is what must agree between two decisions: the group when one
// was picked from (its members are chosen per message), else the binding.
func placeOf(d sieve.Decision) string {
	if d.Group != "" {
		return "group " + d.Group
	}
	return d.Binding
}

// policyError turns d into the On_Policy_Error outcome for err, as
// sieve.Policy does for its own errors.
func (s *Server) policyError(pol *sieve.Policy, d sieve.Decision, err error) sieve.Decision {
	d.Reason = sieve.ReasonPolicyError
	d.Err = err
	d.Trace = append(d.Trace, sieve.Step{Rule: "error", Detail: err.Error()})
	d.Group = ""
	if pol.Config().OnPolicyError == config.PolicyErrorTempfail {
		d.Action = sieve.Tempfail
		d.Binding = ""
		return d
	}
	d.Action = sieve.Accept
	d.Binding = config.DefaultBindingName
	d.Trace = append(d.Trace, sieve.Step{Rule: "fallback", Detail: "binding " + config.DefaultBindingName})
	return d
}

func (s *Server) logDecision(msg *sieve.Message, d sieve.Decision) {
	attrs := []any{
		"queue_id", msg.QueueID, "binding", d.Binding, "reason", string(d.Reason),
		"from", msg.From, "rcpts", len(msg.To), "hook", "policy", "elapsed", d.Elapsed,
	}
	if d.Group != "" {
		attrs = append(attrs, "group", d.Group)
	}
	// The milter's decision line has the same split and trace fields.
	attrs = append(attrs, "split", d.SplitText(), "trace", d.TraceText())
	lvl := slog.LevelInfo
	if d.Err != nil {
		lvl = slog.LevelError
		attrs = append(attrs, "err", d.Err.Error())
	}
	s.log.Log(context.Background(), lvl, "policy decision", attrs...)
}

// oneLine makes text safe for one reply line: Postfix ends an attribute at
// a newline, so a script's reject text must not contain one.
func oneLine(s string) string {
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r == '\r' || r == '\n' || r == 0 }), " ")
}
