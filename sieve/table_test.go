package sieve_test

import (
	"context"
	"testing"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/messagetable"
	"github.com/vipmilter/vipmilter/sieve"
)

// TestMessageTable runs every row of the shared table through the policy,
// each message built with Message.Parse (AddHeader per field) as the
// milter and "vipmilter test" build it. cmd/vipmilter runs the same rows
// through "vipmilter test" and checks both agree.
func TestMessageTable(t *testing.T) {
	for _, row := range messagetable.Rows {
		t.Run(row.Name, func(t *testing.T) {
			path, err := row.WriteFiles(t.TempDir(), "")
			if err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Load(path)
			if err != nil {
				t.Fatalf("binding file: %v", err)
			}
			p, err := sieve.New(cfg, sieve.Options{})
			if err != nil {
				t.Fatalf("policy: %v", err)
			}
			for i, want := range row.Messages {
				d := place(t, p, cfg, want)
				if d.Binding != want.Binding || d.Split != want.Split {
					t.Errorf("message %d: binding %q split %v, want %q split %v\ntrace %+v", i+1, d.Binding, d.Split, want.Binding, want.Split, d.Trace)
				}
			}
		})
	}
}

// place decides one table message with a fresh Message, as the milter
// does for each message of a session.
func place(t *testing.T, p *sieve.Policy, cfg *config.Config, tm messagetable.Message) sieve.Decision {
	t.Helper()
	e := tm.Envelope
	m := &sieve.Message{From: e.From, To: e.To, Helo: e.Helo, RemoteIP: e.ClientAddr, RemoteHost: e.ClientName, Auth: e.Auth, Phase: "during"}
	if err := m.Parse([]byte(tm.Raw), p.Needs().Body, cfg.MaxBodyBytes); err != nil {
		t.Fatalf("message: %v", err)
	}
	return p.Decide(context.Background(), m)
}
