package sieve

import (
	"strings"
	"testing"
)

// TestDecisionText: the trace and split as the milter's and the policy
// service's decision lines show them.
func TestDecisionText(t *testing.T) {
	for _, c := range []struct {
		name       string
		d          Decision
		trace, spl string
	}{
		{"no trace", Decision{}, "", "false"},
		{"script line", Decision{Trace: []Step{{Rule: "script", Line: 3, Detail: "binding = News"}}}, "script (line 3): binding = News", "false"},
		{"steps, no line, no detail", Decision{Split: true, Trace: []Step{{Rule: "match_domain", Detail: "news.test"}, {Rule: "fallback"}}}, "match_domain: news.test; fallback", "true"},
		{"split unknown", Decision{SplitUnknown: true, Trace: []Step{{Rule: "recipients", Detail: "stopped"}}}, "recipients: stopped", "unknown"},
	} {
		if got := c.d.TraceText(); got != c.trace {
			t.Errorf("%s: TraceText = %q, want %q", c.name, got, c.trace)
		}
		if got := c.d.SplitText(); got != c.spl {
			t.Errorf("%s: SplitText = %q, want %q", c.name, got, c.spl)
		}
		if len(c.d.Trace) > 0 && !strings.HasPrefix(c.trace, c.d.Trace[0].String()) {
			t.Errorf("%s: Step.String = %q, not the start of %q", c.name, c.d.Trace[0].String(), c.trace)
		}
	}
}
