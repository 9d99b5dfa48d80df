package postfix

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/vipmilter/vipmilter/config"
)

// PolicyHook is what the policy hook (config.HookPolicy, see
// policyd.ChooseHook) adds to a rendered plan: Postfix asks vipmilter's
// SMTPD policy service (Policy_Listen) at DATA, and at every RCPT too when
// the decision can depend on a recipient (Options.PolicyRecipients); the
// DATA answer PREPENDs the keyed binding header.
//
// With the policy hook the rest of the plan differs from the milter hook's
// as follows (the caller, Render, applies it):
//   - smtpd_milters does not get vipmilter's milter (smtpd mail is decided
//     by the policy service); non_smtpd_milters keeps it, because mail
//     submitted with sendmail (pickup) never passes smtpd and so never
//     reaches a policy service: the milter is its only hook.
//   - The stock cleanup (smtpd's) receives the PREPENDed header as an
//     ordinary header, so main.cf header_checks must route it as pickup's
//     cleanup does: the routing table (keyed header -> FILTER, every other
//     copy IGNORE) in front of the host's tables, or with a content_filter
//     the requeue table (keyed header kept, others IGNORE; routing happens
//     at re-injection). mime_header_checks and nested_header_checks are then
//     set explicitly to the strip table in front of the host's, since they
//     default to $header_checks and a header inside a MIME part or an
//     attached message must never route.
//   - milter_header_checks keeps routing the milter's header (pickup mail).
type PolicyHook struct {
	// Entry is the restriction vipmilter adds:
	// "check_policy_service { <address>, default_action=<action> }".
	// Record it (like the milter entry) so a later run removes exactly it.
	Entry string
	// Main are smtpd_data_restrictions (and smtpd_recipient_restrictions
	// with PolicyRecipients) with Entry first, then the host's restrictions
	// unchanged. First, because an
	// earlier permit (permit_mynetworks) ends a list and vipmilter would not
	// see the recipient or the message; the service always answers DUNNO at
	// RCPT and PREPEND (which does not end the list) at DATA, so the host's
	// restrictions decide exactly as before.
	Main []Param
	// Unset is smtpd_recipient_restrictions when an earlier run put Entry
	// there, this one does not (no PolicyRecipients), and nothing of the
	// host's is left in it.
	Unset []string
	// ServiceParams set smtpd_policy_service_policy_context on the smtpd
	// services named in daemonNames: the policy's vnd.vipmilter.daemon, as
	// milter_macro_daemon_name is for the milter.
	ServiceParams []ServiceParam
	// SMTPDMilter and NonSMTPDMilter say where vipmilter's milter goes:
	// not in smtpd_milters (the policy service decides smtpd mail), but in
	// non_smtpd_milters, because mail submitted with sendmail (pickup)
	// never passes smtpd and would otherwise never be placed.
	SMTPDMilter, NonSMTPDMilter bool
}

// PolicyService renders the policy hook for cfg. host is main.cf as
// "postconf -n" shows it (values unexpanded); prevEntry is the Entry an
// earlier run added ("" if none), removed from the host's lists together
// with the current one; daemonNames maps "name/type" of smtpd services to
// the service name reported to the policy (checked by Render). It does no
// I/O.
//
// default_action follows On_Milter_Down: with accept, a policy service
// that is down answers DUNNO, so mail flows without a binding header
// (Match_Domain still routes through sender_dependent_default_transport_maps),
// as with the milter down; with tempfail, DEFER_IF_PERMIT (4xx). The
// setting is per entry (Postfix ≥ 3.0), so the host's own policy services
// keep main.cf's smtpd_policy_service_default_action.
func PolicyService(cfg *config.Config, opts Options, host map[string]string, prevEntry string, daemonNames map[string]string) (*PolicyHook, error) {
	addr, err := policyAddress(cfg.PolicyListen, opts)
	if err != nil {
		return nil, err
	}
	h := &PolicyHook{Entry: policyEntry(addr, cfg), NonSMTPDMilter: true}
	for _, name := range []string{"smtpd_recipient_restrictions", "smtpd_data_restrictions"} {
		rest := withoutEntry(host[name], h.Entry, prevEntry)
		if name == "smtpd_recipient_restrictions" && !opts.PolicyRecipients {
			// Asked at DATA only: take back an earlier run's entry.
			v, set := host[name]
			switch {
			case !set || !(containsEntry(v, h.Entry) || containsEntry(v, prevEntry)):
			case rest != "":
				h.Main = append(h.Main, Param{name, rest})
			default:
				h.Unset = append(h.Unset, name)
			}
			continue
		}
		v := h.Entry
		if rest != "" {
			v += ", " + rest
		}
		h.Main = append(h.Main, Param{name, v})
	}
	for _, svc := range sortedKeys(daemonNames) {
		h.ServiceParams = append(h.ServiceParams, ServiceParam{svc, "smtpd_policy_service_policy_context", daemonNames[svc]})
	}
	return h, nil
}

// policyEntry is the restriction vipmilter adds for its policy service at addr.
func policyEntry(addr string, cfg *config.Config) string {
	action := "DUNNO"
	if cfg.OnMilterDown == config.MilterDownTempfail {
		action = "DEFER_IF_PERMIT"
	}
	return fmt.Sprintf("check_policy_service { %s, default_action=%s }", addr, action)
}

// policyAddress renders Policy_Listen as every smtpd service reaches it: a
// chrooted smtpd sees the queue directory as "/".
func policyAddress(listen config.Listen, opts Options) (string, error) {
	path := listen.Path()
	if path != "" && opts.SMTPDChrootMixed {
		return "", fmt.Errorf("Policy_Listen %q: some smtpd services in master.cf run chrooted and some not, so no unix socket path works for all of them; use inet:127.0.0.1:PORT", listen)
	}
	if path == "" || !opts.SMTPDChrooted {
		return listen.String(), nil
	}
	q := filepath.Clean(opts.QueueDir)
	rel, err := filepath.Rel(q, path)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		return "", fmt.Errorf("Policy_Listen %q: smtpd runs chrooted in %s (master.cf chroot column) and cannot reach a socket outside it; put the socket under %s (e.g. unix:%s) or use inet:127.0.0.1:PORT",
			listen, q, q, filepath.Join(q, "vipmilter", "policy.sock"))
	}
	return "unix:/" + rel, nil
}

// withoutEntry removes vipmilter's entries from a restriction list as
// postconf shows it, leaving the rest of the text as the host wrote it.
func withoutEntry(list string, entries ...string) string {
	for _, e := range entries {
		if e != "" {
			list = strings.ReplaceAll(list, e, "")
		}
	}
	// Separators left behind where an entry was.
	fields := strings.FieldsFunc(list, func(r rune) bool { return r == ',' })
	var kept []string
	for _, f := range fields {
		if f = strings.TrimSpace(f); f != "" {
			kept = append(kept, f)
		}
	}
	return strings.Join(kept, ", ")
}
