package sendmail

import (
	"fmt"

	"github.com/vipmilter/vipmilter/config"
)

// Limitations lists, one sentence each, what cfg asks for that Sendmail
// cannot do exactly; "vipmilter check" prints them for a Sendmail host
// (Sendmail_Socketmap set). It is pure: it reads nothing but cfg.
func Limitations(cfg *config.Config) []string {
	var out []string
	add := func(format string, args ...any) { out = append(out, fmt.Sprintf(format, args...)) }
	for _, b := range cfg.Bindings {
		addr, hasAddr := Family(b)
		switch {
		case !hasAddr:
			// Ordinary delivery: Sendmail's own EHLO name.
		case b.EHLOHostname == config.EHLOHostname || b.EHLOHostname == config.EHLOMessage:
			add("binding %q: EHLO_Hostname = %s cannot be honoured on Sendmail: it greets with the name %s resolves to (ClientPortOptions Modifiers=h), because Sendmail has one HeloName for all mail", b.Name, b.EHLOHostname, addr)
		default:
			add("binding %q: Sendmail greets with the name %s resolves to, not with EHLO_Hostname itself: make %s resolve to %s (PTR record, or the hosts file), or the EHLO name differs", b.Name, addr, addr, b.EHLOHostname)
		}
		if _, ok := b.Addr4(); ok {
			if a6, ok := b.Addr6(); ok {
				add("binding %q: Sendmail binds one address per message: its mail leaves over IPv4 from %s, never from %s; destinations reachable only over IPv6 need an IPv6-only binding", b.Name, addr, a6)
			}
		}
		if b.MaxOutboundConnections != config.DefaultMaxOutbound {
			add("binding %q: Max_Outbound_Connections = %d cannot be honoured: Sendmail has no per-destination connection limit", b.Name, b.MaxOutboundConnections)
		}
		if b.ServerMaxOutboundConnections > 0 {
			add("binding %q: Server_Max_Outbound_Connections = %d becomes the Runners of queue group %s: it limits queue runs only, not the delivery Sendmail attempts when it accepts a message (unless DeliveryMode is queue), and not at all with ForkEachJob=True", b.Name, b.ServerMaxOutboundConnections, QueueGroup(b))
		}
		if b.Relay != "" {
			add("binding %q: Relay = %s is not rendered for Sendmail; route with the site's SMART_HOST or mailertable (the source address still follows the binding)", b.Name, b.Relay)
		}
	}
	return out
}
