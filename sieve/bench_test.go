package sieve

import (
	"bytes"
	"context"
	"fmt"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/config"
)

// benchPolicy builds n bindings b0..b(n-1), n rules alternating header and
// envelope-domain tests, and `domains` Match_Domain entries on the bindings.
func benchPolicy(b *testing.B, rules, domains int) *Policy {
	var f strings.Builder
	f.WriteString("On_Policy_Error = default\n" + `Binding "default" { Bind_Address = 10.0.0.1 }` + "\n")
	// At most 100 domains a binding: config checks a binding's list for
	// repeats pairwise, and setting up 100k on one binding takes minutes.
	nb := max(rules, 1, domains/100)
	match := make([][]string, nb)
	for i := range domains {
		match[i%nb] = append(match[i%nb], fmt.Sprintf("d%d.example", i))
	}
	for i := range nb {
		fmt.Fprintf(&f, "Binding \"b%d\" {\n  Bind_Address = 10.%d.%d.%d\n", i, 1+i/65536, i/256%256, i%256)
		for _, d := range match[i] {
			fmt.Fprintf(&f, "  Match_Domain = %s\n", d)
		}
		f.WriteString("}\n")
	}
	script := ""
	if rules > 0 {
		var s strings.Builder
		s.WriteString(`require ["envelope", "variables"];` + "\n")
		for i := range rules {
			if i%2 == 0 {
				fmt.Fprintf(&s, "if header :contains \"Subject\" \"kw%d\" { set \"binding\" \"b%d\"; }\n", i, i)
			} else {
				fmt.Fprintf(&s, "if envelope :domain :is \"from\" \"s%d.example\" { set \"binding\" \"b%d\"; }\n", i, i)
			}
		}
		script = s.String()
	}
	pol, err := New(loadConfig(b, f.String(), script), Options{})
	if err != nil {
		b.Fatal(err)
	}
	return pol
}

func BenchmarkDecideRules(b *testing.B) {
	for _, n := range []int{1, 50, 500} {
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			p := benchPolicy(b, n, 0)
			m := &Message{From: "x@nomatch.example", To: []string{"r@dest.example"},
				Header: textproto.MIMEHeader{"Subject": {"nothing to see"}}}
			b.ReportAllocs()
			for b.Loop() {
				d := p.Decide(context.Background(), m)
				if d.Binding != "default" {
					b.Fatalf("binding %s", d.Binding)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "decisions/s")
		})
	}
}

// BenchmarkMatchDomain compares the Match_Domain path with 10 and 100k
// domains; the ratio of the two ns/op is the figure that matters.
func BenchmarkMatchDomain(b *testing.B) {
	for _, n := range []int{10, 100000} {
		b.Run(fmt.Sprintf("domains=%d", n), func(b *testing.B) {
			p := benchPolicy(b, 0, n)
			msgs := make([]*Message, 8)
			for i := range msgs {
				msgs[i] = &Message{From: fmt.Sprintf("x@d%d.example", i*(n/8)), To: []string{"r@dest.example"}}
			}
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				d := p.Decide(context.Background(), msgs[i%len(msgs)])
				if d.Reason != ReasonMatchDomain {
					b.Fatalf("reason %s", d.Reason)
				}
				i++
			}
		})
	}
}

// bodyRecipientsScripts read the body and envelope "to", so a message with
// several recipients is placed again per distinct recipient: with a
// constant key the body test is evaluated once per message (bodyonce.go),
// with a variable key on every run, within MaxSplitBodyBytes.
var bodyRecipientsScripts = []struct{ name, script string }{
	{"constant_key", `require ["envelope", "variables", "body"];
if body :contains "never in the body" { set "binding" "C"; stop; }
if envelope :domain :is "to" "b.example" { set "binding" "B"; }
`},
	{"variable_key", `require ["envelope", "variables", "body"];
set "k" "never in the body";
if body :contains "${k}" { set "binding" "C"; stop; }
if envelope :domain :is "to" "b.example" { set "binding" "B"; }
`},
}

// bodyRecipientsMessage has a 1 MiB body and n recipients in distinct
// domains that the script all places alike (no split: every one is tried).
func bodyRecipientsMessage(n int) *Message {
	m := &Message{From: "s@x.example", Body: bytes.Repeat([]byte("0123456789abcdef\r\n"), (1<<20)/18)}
	for i := range n {
		m.To = append(m.To, fmt.Sprintf("r@d%d.example", i))
	}
	return m
}

// BenchmarkBodyRecipients compares one recipient with 50 for a policy that
// reads a 1 MiB body and envelope "to", side by side: each iteration
// decides both messages, so drift in the machine's load hits both alike.
// x_1rcpt is the 50-recipient decision's time over the one-recipient's
// (51x before body tests were evaluated once and re-runs bounded).
func BenchmarkBodyRecipients(b *testing.B) {
	for _, sc := range bodyRecipientsScripts {
		b.Run(sc.name, func(b *testing.B) {
			pol, err := New(testConfig(b, sc.script, true, config.PolicyErrorDefault), Options{})
			if err != nil {
				b.Fatal(err)
			}
			one, fifty := bodyRecipientsMessage(1), bodyRecipientsMessage(50)
			var t1, t50 time.Duration
			b.ReportAllocs()
			for b.Loop() {
				start := time.Now()
				if d := pol.Decide(context.Background(), one); d.Binding != "default" || d.Split || d.SplitUnknown {
					b.Fatalf("1 recipient: binding %s split %v/%v", d.Binding, d.Split, d.SplitUnknown)
				}
				mid := time.Now()
				// The variable key's re-runs stop at MaxSplitBodyBytes:
				// split unknown.
				if d := pol.Decide(context.Background(), fifty); d.Binding != "default" || d.Split || d.SplitUnknown != (sc.name == "variable_key") {
					b.Fatalf("50 recipients: binding %s split %v/%v", d.Binding, d.Split, d.SplitUnknown)
				}
				t1, t50 = t1+mid.Sub(start), t50+time.Since(mid)
			}
			b.ReportMetric(float64(t1.Nanoseconds())/float64(b.N), "ns/1rcpt")
			b.ReportMetric(float64(t50.Nanoseconds())/float64(b.N), "ns/50rcpt")
			b.ReportMetric(float64(t50)/float64(t1), "x_1rcpt")
		})
	}
}
