package sieve

import (
	"context"

	"github.com/vipmilter/vipmilter/config"
)

// STUB: replaced by the owner of package sieve.

// Options tune a Policy.
type Options struct {
	Liveness Liveness // nil: every binding is live
}

// Policy is a loaded binding file plus its compiled script. It is safe for
// concurrent use; a reload builds a new Policy.
type Policy struct{ cfg *config.Config }

// New compiles cfg.SieveScript (if any) against cfg. A script that does not
// load is an error naming file, line and reason.
func New(cfg *config.Config, opts Options) (*Policy, error) { panic("unimplemented") }

// Config returns the binding file the policy was built from.
func (p *Policy) Config() *config.Config { return p.cfg }

// Needs reports which message stages the policy reads.
func (p *Policy) Needs() Needs { panic("unimplemented") }

// Decide places one message. It never fails: errors become a Decision
// with Reason ReasonPolicyError and Action per On_Policy_Error.
func (p *Policy) Decide(ctx context.Context, m *Message) Decision { panic("unimplemented") }
