package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// Case is one sample message against the bundled examples/ binding file and
// the addresses it may leave from.
type Case struct {
	Name    string
	Binding string   // the binding the example file should choose
	Want    []string // acceptable source addresses (a group lists each member)
	// WantHelo is the EHLO name that must come with each Want address
	// (same index): a group member or list entry is identified by both.
	WantHelo []string
	// Sticky marks a sticky group: every case of the same Binding must
	// leave from one member.
	Sticky bool
	Msg    Message
}

// Source is one binding's source address and EHLO name.
type Source struct{ Addr, Helo string }

// The example binding file's sources (examples/vipmilter.conf).
var (
	SrcDefault     = Source{"192.0.2.1", "mta.example.net"}
	SrcExample     = Source{"192.0.2.10", "mta1.example.com"}
	SrcExample6    = Source{"2001:db8::10", "mta1.example.com"}
	SrcNewsletters = Source{"192.0.2.20", "news.example.org"}
	SrcPool1       = Source{"192.0.2.31", "pool1.example.net"}
	SrcPool2       = Source{"192.0.2.32", "pool2.example.net"}
)

// NewCase is a case of one message from from to to that must leave from one
// of srcs.
func NewCase(name, binding string, srcs []Source, from, to string, hdr ...string) Case {
	c := Case{Name: name, Binding: binding, Msg: Message{From: from, To: []string{to}, Subject: name, Headers: hdr}}
	c.SetSources(srcs...)
	return c
}

// SetSources sets Want and WantHelo from srcs.
func (c *Case) SetSources(srcs ...Source) {
	c.Want, c.WantHelo = nil, nil
	for _, s := range srcs {
		c.Want = append(c.Want, s.Addr)
		c.WantHelo = append(c.WantHelo, s.Helo)
	}
}

// Rcpt4 and Rcpt6 are address-literal recipients on the sink, so no DNS is needed.
const (
	Rcpt4 = "user@[" + SinkAddr4 + "]"
	Rcpt6 = "user@[IPv6:" + SinkAddr6 + "]"
)

// ExampleCases are the demo's messages for examples/vipmilter.conf and
// examples/policy.sieve. The policy's auth "marketing" case is covered by its
// List-Id case: the private smtpd offers no SASL.
func ExampleCases(run string) []Case {
	c := func(name, binding string, srcs []Source, from, to string, hdr ...string) Case {
		c := NewCase(name, binding, srcs, from, to, hdr...)
		c.Msg.Subject = run + " " + name
		return c
	}
	pool := []Source{SrcPool1, SrcPool2}
	split := []Source{SrcNewsletters, SrcExample}
	cases := []Case{
		c("match-domain example.com", "Example", []Source{SrcExample}, "news@example.com", Rcpt4),
		c("match-domain example.com IPv6", "Example", []Source{SrcExample6}, "news@example.com", Rcpt6),
		c("sieve List-Id", "Newsletters", []Source{SrcNewsletters}, "list@lists.example.net", Rcpt4, "List-Id: <weekly.lists.example.net>"),
		c("group bulk.example.org 1", "Pool", pool, "a@bulk.example.org", Rcpt4),
		c("group bulk.example.org 2", "Pool", pool, "b@bulk.example.org", Rcpt4),
		c("sieve comma list 1", "Newsletters,Example", split, "promo@campaign.test", Rcpt4, "X-Campaign: split"),
		c("sieve comma list 2", "Newsletters,Example", split, "promo@campaign.test", Rcpt4, "X-Campaign: split"),
		c("spoofed X-Binding header", "default", []Source{SrcDefault}, "someone@elsewhere.test", Rcpt4, "X-Binding: Newsletters"),
		c("unknown sender", "default", []Source{SrcDefault}, "someone@elsewhere.test", Rcpt4),
	}
	for i := range cases {
		cases[i].Sticky = cases[i].Binding == "Pool"
	}
	return cases
}

// CommaListCases are n messages the example policy sends through the list
// "Newsletters,Example" (header X-Campaign: split).
func CommaListCases(run string, n int) []Case {
	var cs []Case
	for i := range n {
		cs = append(cs, NewCase(fmt.Sprintf("%s comma list %d", run, i), "Newsletters,Example",
			[]Source{SrcNewsletters, SrcExample}, "promo@campaign.test", Rcpt4, "X-Campaign: split"))
	}
	return cs
}

// Outcome is what the sink saw for one case.
type Outcome struct {
	Case     Case
	Arrived  int
	Source   string
	Helo     string
	Leaked   string // a binding header that reached the sink
	Problems []string
}

// Check sends nothing: it matches the sink's dumps against the cases and
// reports, per case, what arrived and whether it is right. Sticky groups must
// keep one recipient domain on one member.
func Check(sinkDir, header string, cases []Case) ([]Outcome, error) {
	msgs, err := testenv.ReadDumps(sinkDir)
	if err != nil {
		return nil, err
	}
	var outs []Outcome
	groupSource := map[string]string{}
	for _, c := range cases {
		o := Outcome{Case: c}
		for _, m := range msgs {
			if m.Header.Get("Subject") != c.Msg.Subject {
				continue
			}
			o.Arrived++
			o.Source, o.Helo = m.ClientAddr, m.Helo
			if v := m.Header.Values(header); len(v) > 0 {
				o.Leaked = strings.Join(v, ",")
			}
		}
		switch {
		case o.Arrived == 0:
			o.Problems = append(o.Problems, "did not arrive")
		case o.Arrived > 1:
			o.Problems = append(o.Problems, fmt.Sprintf("arrived %d times", o.Arrived))
		}
		if o.Arrived > 0 {
			o.Problems = append(o.Problems, c.sourceProblems(o.Source, o.Helo)...)
		}
		if o.Leaked != "" {
			o.Problems = append(o.Problems, fmt.Sprintf("%s header reached the sink: %s", header, o.Leaked))
		}
		if c.Sticky && o.Arrived > 0 {
			if prev, ok := groupSource[c.Binding]; ok && prev != o.Source {
				o.Problems = append(o.Problems, fmt.Sprintf("sticky group %s used %s and %s for one domain", c.Binding, prev, o.Source))
			}
			groupSource[c.Binding] = o.Source
		}
		outs = append(outs, o)
	}
	return outs, nil
}

// sourceProblems says what is wrong with a message of c that left from addr
// with EHLO helo: the pair must be one of the case's (Want, WantHelo).
func (c Case) sourceProblems(addr, helo string) []string {
	if len(c.WantHelo) != len(c.Want) {
		return []string{fmt.Sprintf("case has %d addresses but %d EHLO names", len(c.Want), len(c.WantHelo))}
	}
	i := slices.Index(c.Want, addr)
	if i < 0 {
		return []string{fmt.Sprintf("left from %s, want %s", addr, strings.Join(c.Want, " or "))}
	}
	if helo != c.WantHelo[i] {
		return []string{fmt.Sprintf("left from %s with EHLO %q, want %q", addr, helo, c.WantHelo[i])}
	}
	return nil
}

// SendCases submits every case's message to the system's Postfix.
func (s *System) SendCases(ctx context.Context, cases []Case) error {
	for _, c := range cases {
		if err := Submit(ctx, s.Net.MTA, c.Msg); err != nil {
			return err
		}
	}
	return nil
}

// WaitArrived polls until every case's message is at the sink (or ctx ends).
func (s *System) WaitArrived(ctx context.Context, cases []Case) error {
	return testenv.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		msgs, err := testenv.ReadDumps(s.SinkDir)
		if err != nil {
			return false, err
		}
		seen := map[string]bool{}
		for _, m := range msgs {
			seen[m.Header.Get("Subject")] = true
		}
		for _, c := range cases {
			if !seen[c.Msg.Subject] {
				return false, nil
			}
		}
		return true, nil
	}, "all messages at the sink")
}
