package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/textproto"
	"os"
	"strings"

	"github.com/vipmilter/vipmilter/sieve"
)

const testHelp = `Show which binding the policy gives one message, without sending anything.

test builds the envelope from the flags (--from, one --to per recipient in
RCPT order, --auth for a SASL login, --remote-ip, --remote-host, --helo,
--daemon, --queue-id) and, optionally, reads an RFC 5322 message from a file
(or from standard input with "-") for the header, size and body tests. It
then runs the same decision the milter runs and prints it like Pigeonhole's
sieve-test: the binding, the group it was picked from, the reason (script,
match_domain, fallback, policy_error, reject), the action the milter would
take (accept, reject, tempfail) and the trace of rules that decided.

Group picks are real: a random or round_robin group may answer differently
from one run to the next; a sticky group answers the same for the same first
recipient domain. --json prints one JSON object instead, for scripts.

It needs no root and no network. The exit status is 0 when a decision was
printed (a reject too), 1 when the binding file or the script has errors.`

// listFlag collects a repeated flag in order.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

// testResult is the JSON form of a Decision.
type testResult struct {
	Binding string       `json:"binding"`
	Group   string       `json:"group,omitempty"`
	Reason  string       `json:"reason"`
	Action  string       `json:"action"`
	Reject  string       `json:"reject,omitempty"`
	Split   bool         `json:"split"`
	Error   string       `json:"error,omitempty"`
	Trace   []sieve.Step `json:"trace"`
}

func actionName(a sieve.Action) string {
	switch a {
	case sieve.Reject:
		return "reject"
	case sieve.Tempfail:
		return "tempfail"
	default:
		return "accept"
	}
}

func cmdTest(c *cli, args []string) error {
	fs := c.flags("test")
	path := configFlag(fs)
	var to listFlag
	m := &sieve.Message{}
	fs.StringVar(&m.From, "from", "", "envelope sender `ADDR` (\"\" for the null sender)")
	fs.Var(&to, "to", "envelope recipient `ADDR`; repeat in RCPT order")
	fs.StringVar(&m.Auth, "auth", "", "SASL login `USER` of the submitting client")
	fs.StringVar(&m.RemoteIP, "remote-ip", "127.0.0.1", "client `IP`")
	fs.StringVar(&m.RemoteHost, "remote-host", "localhost", "client `HOST` name")
	fs.StringVar(&m.Helo, "helo", "", "client HELO/EHLO `NAME`")
	fs.StringVar(&m.Daemon, "daemon", "smtpd", "Postfix daemon `NAME` ({daemon_name})")
	fs.StringVar(&m.QueueID, "queue-id", "", "Postfix queue `ID`")
	asJSON := fs.Bool("json", false, "print one JSON object")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if len(to) == 0 {
		return &exitError{code: 2, err: errors.New("at least one --to is required")}
	}
	if fs.NArg() > 1 {
		return &exitError{code: 2, err: fmt.Errorf("at most one MESSAGE, got %d", fs.NArg())}
	}
	m.To = to
	m.Phase = "during"

	cfg, pol, err := loadPolicy(*path)
	if err != nil {
		printErrors(c.stderr, err)
		return &exitError{code: 1, err: errors.New("")}
	}
	if fs.NArg() == 1 {
		var raw []byte
		if fs.Arg(0) == "-" {
			raw, err = io.ReadAll(c.stdin)
		} else {
			raw, err = os.ReadFile(fs.Arg(0))
		}
		if err != nil {
			return &exitError{code: 1, err: fmt.Errorf("message: %w", err)}
		}
		if err := fillMessage(m, raw, pol.Needs(), cfg.MaxBodyBytes); err != nil {
			return &exitError{code: 1, err: fmt.Errorf("message %s: %w", fs.Arg(0), err)}
		}
	}

	d := pol.Decide(context.Background(), m)
	r := testResult{Binding: d.Binding, Group: d.Group, Reason: string(d.Reason), Action: actionName(d.Action),
		Reject: d.RejectText, Split: d.Split, Trace: d.Trace}
	if d.Err != nil {
		r.Error = d.Err.Error()
	}
	if *asJSON {
		enc := json.NewEncoder(c.stdout)
		return enc.Encode(r)
	}
	w := c.stdout
	fmt.Fprintf(w, "binding: %s\n", r.Binding)
	if r.Group != "" {
		fmt.Fprintf(w, "group:   %s\n", r.Group)
	}
	fmt.Fprintf(w, "reason:  %s\n", r.Reason)
	fmt.Fprintf(w, "action:  %s\n", r.Action)
	if r.Reject != "" {
		fmt.Fprintf(w, "reject:  %s\n", r.Reject)
	}
	if r.Split {
		fmt.Fprintln(w, "split:   recipients would get different bindings")
	}
	if r.Error != "" {
		fmt.Fprintf(w, "error:   %s\n", r.Error)
	}
	fmt.Fprintln(w, "trace:")
	for _, s := range r.Trace {
		if s.Line > 0 {
			fmt.Fprintf(w, "  %s (line %d): %s\n", s.Rule, s.Line, s.Detail)
		} else {
			fmt.Fprintf(w, "  %s: %s\n", s.Rule, s.Detail)
		}
	}
	return nil
}

// fillMessage parses an RFC 5322 message into m as the milter would see
// it: headers always, the body only when the policy reads it.
func fillMessage(m *sieve.Message, raw []byte, needs sieve.Needs, maxBody int64) error {
	m.Size = len(raw)
	br := bufio.NewReader(bytes.NewReader(raw))
	h, err := textproto.NewReader(br).ReadMIMEHeader()
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("reading headers: %w", err)
	}
	m.Header = h
	if m.Header == nil {
		m.Header = textproto.MIMEHeader{}
	}
	if needs.Body {
		body, err := io.ReadAll(br)
		if err != nil {
			return fmt.Errorf("reading body: %w", err)
		}
		if maxBody > 0 && int64(len(body)) > maxBody {
			body = body[:maxBody]
		}
		m.Body = body
	}
	return nil
}
