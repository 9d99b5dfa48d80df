package vip

import (
	"context"

	"github.com/vipmilter/vipmilter/config"
)

// STUB: replaced by the owner of package vip.

// Presence tracks which addresses are configured on the host (netlink
// address events; needs no privilege) and implements sieve.Liveness.
type Presence struct{}

// NewPresence starts watching host addresses until ctx is done.
func NewPresence(ctx context.Context) (*Presence, error) { panic("unimplemented") }

// Live reports whether every address of b is configured on the host.
func (p *Presence) Live(b *config.Binding) bool { panic("unimplemented") }
