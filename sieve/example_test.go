package sieve

import (
	"context"
	"net/textproto"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

// exampleConfig loads examples/vipmilter.conf, the file README shows.
func exampleConfig(t *testing.T) *config.Config {
	t.Helper()
	cfg, err := config.Load("../examples/vipmilter.conf")
	if err != nil {
		t.Fatalf("examples/vipmilter.conf: %v", err)
	}
	return cfg
}

// TestExamplePolicy checks that examples/policy.sieve decides as its
// comments say.
func TestExamplePolicy(t *testing.T) {
	p := mustPolicy(t, exampleConfig(t), Options{})
	if n := p.Needs(); !n.Headers || n.Body || n.Size {
		t.Errorf("needs %+v, want headers only (exists \"List-Id\")", n)
	}
	tests := []struct {
		name       string
		m          Message
		wantBind   string
		wantGroup  string
		wantReason Reason
		wantLine   int // line of the deciding set; 0 when set in two places
	}{
		{"marketing login", Message{From: "a@example.com", To: []string{"r@d.example"}, Auth: "marketing"}, "Newsletters", "", ReasonScript, 0},
		{"mailing list", Message{From: "a@example.com", To: []string{"r@d.example"}, Header: textproto.MIMEHeader{"List-Id": {"<x.example>"}}}, "Newsletters", "", ReasonScript, 0},
		{"bulk sender", Message{From: "a@bulk.example.org", To: []string{"r@d.example"}}, "", "Pool", ReasonScript, 20},
		{"match_domain", Message{From: "a@Example.COM", To: []string{"r@d.example"}}, "Example", "", ReasonMatchDomain, 0},
		{"fallback", Message{From: "a@elsewhere.example", To: []string{"r@d.example"}}, "default", "", ReasonFallback, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := p.Decide(context.Background(), &tt.m)
			if (tt.wantBind != "" && d.Binding != tt.wantBind) || d.Group != tt.wantGroup || d.Reason != tt.wantReason {
				t.Errorf("got %s/%s/%s, want %s/%s/%s (%+v)", d.Binding, d.Group, d.Reason, tt.wantBind, tt.wantGroup, tt.wantReason, d.Trace)
			}
			if d.Trace[0].Line != tt.wantLine {
				t.Errorf("trace line %d, want %d", d.Trace[0].Line, tt.wantLine)
			}
			if tt.wantGroup == "Pool" && d.Binding != "Pool1" && d.Binding != "Pool2" {
				t.Errorf("pool member %q", d.Binding)
			}
		})
	}
}
