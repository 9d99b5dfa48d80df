package sendmail

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/vipmilter/vipmilter/config"
)

// HostsFileFix is the command that makes binding addresses resolve to their
// EHLO names; the notes below name it.
const HostsFileFix = "vipmilter provision --hosts-file /etc/hosts"

// ResolvedEHLO reports whether Sendmail can greet with name as the name a
// bound address resolves to. With ClientPortOptions Modifiers=h Sendmail
// (8.17 daemon.c, makeconnection and hostnamebyanyaddr) takes the address's
// name only if it is a name with a dot that does not read as an IPv4
// address; otherwise, and when the address resolves to no name, it greets
// with its own host name ($j). So a single-label name, an address literal,
// __hostname__ and __message__ never come from the address's name.
func ResolvedEHLO(name string) bool {
	if !config.ValidHostname(name) || !strings.Contains(name, ".") {
		return false
	}
	_, err := netip.ParseAddr(name)
	return err != nil
}

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
		case ResolvedEHLO(b.EHLOHostname):
			add("binding %q: Sendmail greets with the name %s resolves to, not with EHLO_Hostname itself: make %s resolve to %s (%s writes it into the hosts file, or publish a PTR record), else it greets with that other name, or with its own ($j) when there is none", b.Name, addr, addr, b.EHLOHostname, HostsFileFix)
		default:
			add("binding %q: EHLO_Hostname = %s cannot be honoured on Sendmail as such: it greets with the name %s resolves to (ClientPortOptions Modifiers=h), and with its own name ($j) only when that is no name with a dot, because Sendmail has one HeloName for all mail; give the binding a host name with a dot and run %s", b.Name, b.EHLOHostname, addr, HostsFileFix)
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
