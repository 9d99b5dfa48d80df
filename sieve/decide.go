package sieve

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"time"

	"github.com/foxcpp/go-sieve/interp"

	"github.com/vipmilter/vipmilter/config"
)

// MaxSplitRecipients caps how many distinct recipients are placed again
// to detect a split decision; beyond it the cost would grow with the
// recipient list while the answer (split or not) is usually known.
const MaxSplitRecipients = 50

// MaxSplitBodyBytes bounds the body bytes the script may read again while
// split detection re-runs it per recipient: a script that tests the body
// with a key built from a variable reads the whole body on every run
// (about 19 ms per MiB here), so a 1 MiB body gets 4 re-runs, a 20 KiB
// body all of MaxSplitRecipients. Body tests with constant keys are
// evaluated once per message and cost nothing here (bodyOnce).
const MaxSplitBodyBytes = 4 << 20

// Reason says which rule decided.
type Reason string

const (
	ReasonScript      Reason = "script"       // the script set ${binding}
	ReasonMatchDomain Reason = "match_domain" // the sender's domain is a Match_Domain
	ReasonFallback    Reason = "fallback"     // nothing matched
	ReasonPolicyError Reason = "policy_error" // runtime error or unknown name; see On_Policy_Error
	ReasonReject      Reason = "reject"       // the script ran reject/ereject
)

// Action is what the milter must answer.
type Action int

const (
	Accept   Action = iota // add the binding header and accept
	Reject                 // 5xx with RejectText
	Tempfail               // 4xx (On_Policy_Error = tempfail)
)

// String is the action's name: "accept", "reject" or "tempfail".
func (a Action) String() string {
	switch a {
	case Reject:
		return "reject"
	case Tempfail:
		return "tempfail"
	default:
		return "accept"
	}
}

// Step is one line of the trace.
type Step struct {
	Rule   string `json:"rule"`           // "script", "match_domain", "group", "list", "fallback", "error", "recipients"
	Line   int    `json:"line,omitempty"` // script line, when known
	Detail string `json:"detail"`
}

// String is the step on one line: "rule (line N): detail", without the
// parts that are unknown.
func (s Step) String() string {
	var b strings.Builder
	s.writeTo(&b)
	return b.String()
}

func (s Step) writeTo(b *strings.Builder) {
	b.WriteString(s.Rule)
	if s.Line > 0 {
		b.WriteString(" (line ")
		b.WriteString(strconv.Itoa(s.Line))
		b.WriteByte(')')
	}
	if s.Detail != "" {
		b.WriteString(": ")
		b.WriteString(s.Detail)
	}
}

// Decision is the outcome for one message. Its JSON form (MarshalJSON) is
// what "vipmilter test --json" prints.
type Decision struct {
	// Binding is the chosen binding name. The fallback without a declared
	// "default" binding is reported as "default" too (config.DefaultBindingName).
	Binding    string
	Group      string // group the binding was picked from, if any
	Reason     Reason
	Action     Action
	RejectText string // reason given to reject/ereject
	Trace      []Step
	Err        error // the policy error, when Reason is ReasonPolicyError
	// Split is true when the recipients would have been placed on
	// different bindings (a different script result, or another member of
	// a sticky group for another recipient domain); the message leaves by
	// its first recipient's.
	Split bool
	// SplitUnknown is true when split detection stopped before placing
	// every recipient (MaxSplitRecipients distinct recipients, or
	// MaxSplitBodyBytes of body read again) without finding a split: Split
	// is then false for want of an answer, not because none would differ.
	// The decision itself (the first recipient's) is exact either way; the
	// trace's "recipients" step says where detection stopped.
	SplitUnknown bool
	// Unavailable counts group members passed over because their address
	// was not on the host.
	Unavailable int
	Elapsed     time.Duration
}

// TraceText is the trace on one log line, steps (Step.String) separated by
// "; ": the milter's and the policy service's decision lines.
func (d Decision) TraceText() string {
	var b strings.Builder
	for i, st := range d.Trace {
		if i > 0 {
			b.WriteString("; ")
		}
		st.writeTo(&b)
	}
	return b.String()
}

// SplitText is the decision's split on a log line: "true", "false", or
// "unknown" when split detection stopped early (SplitUnknown).
func (d Decision) SplitText() string {
	if d.SplitUnknown {
		return "unknown"
	}
	return strconv.FormatBool(d.Split)
}

// MarshalJSON gives a Decision as one object: binding, group, reason,
// action ("accept", "reject", "tempfail"), reject, split,
// split_unknown (only when true), unavailable, error (text) and trace;
// Elapsed is left out.
func (d Decision) MarshalJSON() ([]byte, error) {
	out := struct {
		Binding      string `json:"binding"`
		Group        string `json:"group,omitempty"`
		Reason       Reason `json:"reason"`
		Action       string `json:"action"`
		Reject       string `json:"reject,omitempty"`
		Split        bool   `json:"split"`
		SplitUnknown bool   `json:"split_unknown,omitempty"`
		Unavailable  int    `json:"unavailable,omitempty"`
		Error        string `json:"error,omitempty"`
		Trace        []Step `json:"trace"`
	}{d.Binding, d.Group, d.Reason, d.Action.String(), d.RejectText, d.Split, d.SplitUnknown, d.Unavailable, "", d.Trace}
	if d.Err != nil {
		out.Error = d.Err.Error()
	}
	return json.Marshal(out)
}

// outcome is what one script run says.
type outcome struct {
	value      string // ${binding} at the end, trimmed
	reject     bool
	rejectText string
}

// Decide places one message. It never fails: errors become a Decision
// with Reason ReasonPolicyError and Action per On_Policy_Error.
func (p *Policy) Decide(ctx context.Context, m *Message) Decision {
	start := time.Now()
	d := p.decide(ctx, m)
	d.Elapsed = time.Since(start)
	return d
}

func (p *Policy) decide(ctx context.Context, m *Message) (d Decision) {
	first := ""
	if len(m.To) > 0 {
		first = m.To[0]
	}
	var out outcome
	var body *bodyResults
	if len(p.bodyTests) > 0 {
		body = &bodyResults{}
	}
	if p.script != nil {
		var err error
		out, err = p.run(ctx, m, first, body)
		if err != nil {
			return p.policyError(d, fmt.Errorf("sieve script: %w", err))
		}
		if out.reject {
			d.Binding = ""
			d.Reason = ReasonReject
			d.Action = Reject
			d.RejectText = out.rejectText
			d.Trace = append(d.Trace, Step{Rule: "script", Detail: "reject: " + out.rejectText})
			return d
		}
	}
	if len(m.To) > 1 {
		// Recorded after the decision's own steps so the trace reads in
		// order.
		defer func() {
			if d.Reason == ReasonPolicyError {
				return
			}
			step, split, unknown := p.splitCheck(ctx, m, out.value, body)
			if split || unknown {
				d.Split, d.SplitUnknown = split, unknown
				d.Trace = append(d.Trace, step)
			}
		}()
	}
	switch {
	case out.value != "":
		d.Reason = ReasonScript
		d.Trace = append(d.Trace, Step{Rule: "script", Line: p.setLines[out.value], Detail: "binding = " + out.value})
		if err := p.resolve(out.value, m, &d); err != nil {
			return p.policyError(d, err)
		}
	default:
		if b := p.matchDomain(m.From); b != nil {
			d.Reason = ReasonMatchDomain
			// The trace shows the domain as the sender wrote it.
			d.Trace = append(d.Trace, Step{Rule: "match_domain", Detail: m.From[strings.LastIndexByte(m.From, '@')+1:] + " -> " + b.Name})
			if err := p.resolve(b.Name, m, &d); err != nil {
				return p.policyError(d, err)
			}
			return d
		}
		p.fallback(&d)
	}
	return d
}

// matchDomain is the binding whose Match_Domain is the envelope sender's
// domain, compared in canonical form (config.MatchDomain keys on
// config.Domain: case, trailing dot and U-labels do not matter), or nil.
func (p *Policy) matchDomain(from string) *config.Binding {
	if from == "" {
		return nil
	}
	return p.cfg.MatchDomain(from)
}

func (p *Policy) fallback(d *Decision) {
	d.Binding = config.DefaultBindingName
	d.Group = ""
	if d.Reason == "" {
		d.Reason = ReasonFallback
	}
	detail := "binding " + config.DefaultBindingName
	if p.cfg.Default() == nil {
		detail += " (not declared: Postfix delivers without a source binding)"
	}
	d.Trace = append(d.Trace, Step{Rule: "fallback", Detail: detail})
}

func (p *Policy) policyError(d Decision, err error) Decision {
	d.Err = err
	d.Reason = ReasonPolicyError
	d.Trace = append(d.Trace, Step{Rule: "error", Detail: err.Error()})
	if p.cfg.OnPolicyError == config.PolicyErrorTempfail {
		d.Action = Tempfail
		d.Binding = ""
		d.Group = ""
		return d
	}
	d.Action = Accept
	p.fallback(&d)
	return d
}

// splitCheck places every other distinct recipient as if it came first
// and reports the first one that would leave from another binding: the
// script is run again for it when the script can read envelope "to", and
// a sticky group picks its member by that recipient's domain. unknown is
// true when it stopped (MaxSplitRecipients, MaxSplitBodyBytes) before
// placing every recipient without finding one; step then says where.
func (p *Policy) splitCheck(ctx context.Context, m *Message, value string, body *bodyResults) (step Step, split, unknown bool) {
	// Only the script (when it reads "to") and sticky groups depend on
	// the recipient; anything else places every recipient alike.
	if !p.readsTo && !p.sticky(value, m.From) {
		return Step{}, false, false
	}
	// Re-runs that may read the whole body again are counted against
	// MaxSplitBodyBytes.
	runs := MaxSplitRecipients
	if p.readsTo && p.bodyEveryRun && len(m.Body) > 0 {
		runs = MaxSplitBodyBytes / len(m.Body)
	}
	want := p.placement(value, m.From, m.To[0])
	seen := map[string]struct{}{p.recipientKey(m.To[0]): {}}
	for i, rcpt := range m.To[1:] {
		k := p.recipientKey(rcpt)
		if _, ok := seen[k]; ok {
			continue
		}
		if len(seen) >= MaxSplitRecipients || (p.readsTo && len(seen)-1 >= runs) {
			why := fmt.Sprintf("MaxSplitRecipients, %d distinct recipients", MaxSplitRecipients)
			if len(seen) < MaxSplitRecipients {
				why = fmt.Sprintf("MaxSplitBodyBytes: %d runs of the script over a %d-byte body", runs, len(m.Body))
			}
			return Step{Rule: "recipients", Detail: fmt.Sprintf("split unknown: detection stopped at recipient %d of %d (%s); the first %d distinct recipients get %s, as the message does",
				i+2, len(m.To), why, len(seen), want)}, false, true
		}
		seen[k] = struct{}{}
		v := value
		if p.readsTo {
			out, err := p.run(ctx, m, rcpt, body)
			if err != nil || out.reject {
				continue
			}
			v = out.value
		}
		if got := p.placement(v, m.From, rcpt); got != want {
			return Step{Rule: "recipients", Detail: fmt.Sprintf("%s would get %s, not %s; the message leaves by its first recipient's", rcpt, got, want)}, true, false
		}
	}
	return Step{}, false, false
}

// recipientKey identifies the recipients split detection must place apart:
// each address when the script reads it, else each domain.
func (p *Policy) recipientKey(rcpt string) string {
	if p.readsTo {
		return strings.ToLower(envelopeAddress(rcpt))
	}
	return domainOf(rcpt)
}

// sticky reports whether value (a script result, "" for Match_Domain or
// the fallback) names a sticky group, alone or in a comma list.
func (p *Policy) sticky(value, from string) bool {
	if value == "" {
		if b := p.matchDomain(from); b != nil {
			value = b.Name
		}
	}
	for e := range strings.SplitSeq(value, ",") {
		if g := p.cfg.Group(strings.TrimSpace(e)); g != nil && g.Selection == config.SelectSticky {
			return true
		}
	}
	return false
}

// placement names where value sends a message whose first recipient is
// rcpt, without side effects: a binding, a sticky group's member for
// rcpt's domain, or the group or list itself where the pick is random.
func (p *Policy) placement(value, from, rcpt string) string {
	if value == "" {
		if b := p.matchDomain(from); b != nil {
			return b.Name
		}
		return config.DefaultBindingName + " (fallback)"
	}
	if strings.Contains(value, ",") {
		return "one of " + value
	}
	if b := p.cfg.Binding(value); b != nil {
		return b.Name
	}
	g := p.cfg.Group(value)
	if g == nil || len(g.Members) == 0 {
		return value + " (error)"
	}
	if g.Selection != config.SelectSticky {
		return "group " + g.Name
	}
	live, _, missing := p.candidates(g)
	if len(live) == 0 {
		if missing > 0 {
			return g.Name + " (error)"
		}
		live = g.Members
	}
	return rendezvous(live, domainOf(rcpt)).Name
}

// run executes the script once with to as envelope "to"; body holds the
// message's body test results across runs (nil: the script has none
// evaluated once).
func (p *Policy) run(ctx context.Context, m *Message, to string, body *bodyResults) (out outcome, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("script panicked: %v", r)
		}
	}()
	v := &view{m: m, to: to, p: p, ctx: ctx, body: body}
	rd := interp.NewRuntimeData(p.script, noRedirect{}, v, v)
	rd.Env = v
	if err := p.script.Execute(ctx, rd); err != nil {
		return out, err
	}
	if body != nil && body.err != nil {
		return out, body.err
	}
	for _, a := range rd.AppliedActions {
		switch a := a.(type) {
		case interp.ActionReject:
			return outcome{reject: true, rejectText: a.Reason}, nil
		case interp.ActionEReject:
			return outcome{reject: true, rejectText: a.Reason}, nil
		}
	}
	if p.flagBinding {
		out.value = strings.TrimSpace(flagBinding(rd))
	} else {
		out.value = strings.TrimSpace(rd.Variables["binding"])
	}
	return out, nil
}

// resolve turns a script value (binding, group or comma list) into a
// binding, filling d.Binding, d.Group and the trace.
func (p *Policy) resolve(value string, m *Message, d *Decision) error {
	name := value
	if strings.Contains(value, ",") {
		var entries []string
		for e := range strings.SplitSeq(value, ",") {
			if e = strings.TrimSpace(e); e != "" {
				entries = append(entries, e)
			}
		}
		if len(entries) == 0 {
			return fmt.Errorf("binding list %q is empty", value)
		}
		name = entries[rand.IntN(len(entries))]
		d.Trace = append(d.Trace, Step{Rule: "list", Detail: fmt.Sprintf("%s: picked %s", strings.Join(entries, ","), name)})
	}
	if b := p.cfg.Binding(name); b != nil {
		d.Binding = b.Name
		if b.Group != nil {
			d.Group = b.Group.Name
		}
		return nil
	}
	if g := p.cfg.Group(name); g != nil {
		if len(g.Members) == 0 {
			return fmt.Errorf("group %q has no members", name)
		}
		b, err := p.pick(g, m, d)
		if err != nil {
			return err
		}
		d.Binding = b.Name
		d.Group = g.Name
		return nil
	}
	return fmt.Errorf("binding %q: no such binding or group", name)
}
