package sieve

import (
	"context"
	"fmt"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

// benchPolicy builds n bindings b0..b(n-1), n rules alternating header and
// envelope-domain tests, and `domains` Match_Domain entries on the bindings.
func benchPolicy(b *testing.B, rules, domains int) *Policy {
	var src strings.Builder
	src.WriteString("Binding \"default\" { }\n")
	nb := max(rules, 1)
	domainsOf := make([][]string, nb)
	for i := range domains {
		domainsOf[i%nb] = append(domainsOf[i%nb], fmt.Sprintf("d%d.example", i))
	}
	for i := range nb {
		n := i + 1
		fmt.Fprintf(&src, "Binding \"b%d\" { Bind_Address = 10.%d.%d.%d", i, n>>16&255, n>>8&255, n&255)
		for _, d := range domainsOf[i] {
			fmt.Fprintf(&src, " Match_Domain = %s", d)
		}
		src.WriteString(" }\n")
	}
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
		p := filepath.Join(b.TempDir(), "policy.sieve")
		if err := os.WriteFile(p, []byte(s.String()), 0o644); err != nil {
			b.Fatal(err)
		}
		fmt.Fprintf(&src, "Sieve_Script = %q\n", p)
	}
	cfg, err := config.Parse(filepath.Join(b.TempDir(), "vipmilter.conf"), []byte(src.String()))
	if err != nil {
		b.Fatal(err)
	}
	pol, err := New(cfg, Options{})
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
