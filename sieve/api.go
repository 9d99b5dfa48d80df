// Package sieve decides a binding for a message: it runs the configured
// Sieve script (go-sieve, RFC 5228 with variables, envelope, environment,
// body, relational, subaddress, reject), then applies Match_Domain, group
// selection and the fallback. It does no I/O: a Message view goes in, a
// Decision with a trace comes out; the milter and the CLI are thin adapters.
package sieve

// ---------------------------------------------------------------------
// CONTRACT shared with package milter and cmd/vipmilter. The helper that
// owns this package implements it; the names and meanings below are fixed.
// ---------------------------------------------------------------------

import (
	"net/textproto"
	"strings"
	"time"

	"github.com/vipmilter/vipmilter/config"
)

// Message is what the policy can see of one message. The milter fills it
// stage by stage; "vipmilter test" fills it from flags and a file.
type Message struct {
	From       string   // envelope sender without <>, "" for the null sender
	To         []string // envelope recipients in RCPT order, without <>
	Auth       string   // SASL login ({auth_authen}), "" if none
	RemoteIP   string   // client address
	RemoteHost string   // client host name as Postfix resolved it
	Helo       string   // client's HELO/EHLO argument
	QueueID    string   // Postfix queue id (macro i)
	Daemon     string   // Postfix {daemon_name}, e.g. "smtpd", "submission"
	Phase      string   // RFC 5183 "phase", normally "during"

	Header textproto.MIMEHeader // nil when the policy does not need headers
	Size   int                  // message size in bytes (headers + body) as far as known
	Body   []byte               // nil unless the policy needs the body; capped by Max_Body_Bytes
}

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

// Step is one line of the trace.
type Step struct {
	Rule   string `json:"rule"`           // "script", "match_domain", "group", "list", "fallback", "error", "recipients"
	Line   int    `json:"line,omitempty"` // script line, when known
	Detail string `json:"detail"`
}

// Decision is the outcome for one message.
type Decision struct {
	// Binding is the chosen binding name. The fallback without a declared
	// "default" binding is reported as "default" too (config.DefaultBindingName).
	Binding    string `json:"binding"`
	Group      string `json:"group,omitempty"` // group the binding was picked from, if any
	Reason     Reason `json:"reason"`
	Action     Action `json:"-"`
	RejectText string `json:"reject,omitempty"` // reason given to reject/ereject
	Trace      []Step `json:"trace"`
	Err        error  `json:"-"`               // the policy error, when Reason is ReasonPolicyError
	Split      bool   `json:"split,omitempty"` // recipients would have been given different bindings
	// Unavailable counts group members passed over because their address
	// was not on the host.
	Unavailable int           `json:"unavailable,omitempty"`
	Elapsed     time.Duration `json:"-"`
}

// Needs tells the milter which stages the policy reads, so it can opt out
// of the rest.
type Needs struct {
	Headers bool // the script tests headers (header, address, exists, ...)
	Body    bool // the script requires "body"
	Size    bool // the script uses the size test (the milter must count the message)
	Helo    bool // the script may read environment "vnd.vipmilter.helo" (the milter asks for HELO)
}

// Liveness reports whether a binding's addresses are on the host. The
// provisioning side (package vip) implements it; nil means "all live".
type Liveness interface {
	Live(b *config.Binding) bool
}

// AddHeader records one header field of the message as the MTA passed it
// (value possibly folded, with the leading space after the colon). Every
// source of a Message — the milter on Postfix or Sendmail, "vipmilter test"
// reading a file — calls it once per field, in order, so the policy sees
// one view built one way.
func (m *Message) AddHeader(name, value string) {
	if m.Header == nil {
		m.Header = make(textproto.MIMEHeader)
	}
	m.Header.Add(name, headerValue(value))
}

// headerValue unfolds a raw field value (RFC 5322 §2.2.3) and trims the
// white space around it.
func headerValue(v string) string {
	v = strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(v)
	return strings.TrimSpace(v)
}
