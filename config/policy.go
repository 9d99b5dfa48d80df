package config

import "strings"

// DefaultPolicyListen is where "vipmilter serve" answers Postfix's SMTPD
// policy requests when the policy hook is in use and Policy_Listen is not
// given.
const DefaultPolicyListen = "inet:127.0.0.1:8896"

// Hook is how Postfix asks vipmilter for a binding (see package policyd,
// ChooseHook, for the automatic choice).
type Hook string

const (
	HookAuto   Hook = "auto"   // the cheapest hook that sees what the policy reads
	HookNone   Hook = "none"   // Match_Domain only: Postfix's sender_dependent_default_transport_maps, no daemon asked
	HookPolicy Hook = "policy" // Postfix SMTPD policy delegation (check_policy_service) for smtpd mail
	HookMilter Hook = "milter" // the milter (smtpd_milters, non_smtpd_milters)
)

// Policy hook settings live on Config (PolicyListen, Hook); their setters
// are here so the keyword rows in keywords.go stay one line each.

func setPolicyListen(d *decoder, n *Node, _ *values) {
	l, err := ParseListen(n.Value)
	if err != nil {
		d.bad(n, "%v", err)
		return
	}
	d.cfg.PolicyListen = l
}

func setHook(d *decoder, n *Node, _ *values) {
	switch v := Hook(strings.ToLower(n.Value)); v {
	case HookAuto, HookMilter, HookPolicy:
		d.cfg.Hook = v
	default:
		d.bad(n, "%q: want auto, milter or policy", n.Value)
	}
}
