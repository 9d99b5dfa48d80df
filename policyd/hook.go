package policyd

import (
	"fmt"
	"strings"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// ChooseHook says how Postfix must ask for this binding file and policy:
//
//   - config.HookNone: no script, so only Match_Domain places mail, and
//     Postfix's sender_dependent_default_transport_maps does that itself
//     (on every path, requeue included); nothing is asked per message.
//   - config.HookPolicy: the script reads only what an SMTPD policy
//     request carries at DATA (envelope sender and recipients, SASL login,
//     client address and name, HELO, queue id, service name), so
//     check_policy_service decides mail that passes smtpd; mail submitted
//     with sendmail (pickup) never passes smtpd and still needs the
//     milter in non_smtpd_milters.
//   - config.HookMilter: the script tests headers, the body or the size
//     (the real size is known only at end of message, where Postfix cannot
//     PREPEND a header), or Hook = milter forces it.
//
// reason is one sentence for "vipmilter check". err is set when Hook =
// policy is forced for a script that reads what no policy request
// carries: it would be decided on data it never sees.
func ChooseHook(cfg *config.Config, needs sieve.Needs) (hook config.Hook, reason string, err error) {
	var reads []string
	if needs.Headers {
		reads = append(reads, "headers")
	}
	if needs.Body {
		reads = append(reads, "the body")
	}
	if needs.Size {
		reads = append(reads, "the message size")
	}
	asked := "asked once per message, at DATA"
	if needs.Recipients {
		why := "the script may read envelope \"to\""
		for _, g := range cfg.Groups {
			if g.Selection == config.SelectSticky {
				why = fmt.Sprintf("Binding_Group %q is sticky: it picks its member by the recipient's domain", g.Name)
				break
			}
		}
		asked = "asked at every RCPT and at DATA, since a recipient can change the decision (" + why + ")"
	}
	switch cfg.Hook {
	case config.HookMilter:
		return config.HookMilter, "Hook = milter forces the milter", nil
	case config.HookPolicy:
		if len(reads) > 0 {
			return "", "", fmt.Errorf("%s: Hook = policy, but the Sieve script reads %s, which Postfix does not send to a policy service; use Hook = auto or milter", cfg.File, strings.Join(reads, ", "))
		}
		return config.HookPolicy, "Hook = policy forces the SMTPD policy service, " + asked + " (mail from sendmail still passes the milter)", nil
	}
	switch {
	case len(reads) > 0:
		return config.HookMilter, "the Sieve script reads " + strings.Join(reads, ", ") + ": only the milter sees them", nil
	case cfg.SieveScript == "":
		return config.HookNone, "no Sieve script: Match_Domain alone, which Postfix's sender_dependent_default_transport_maps applies without asking vipmilter", nil
	}
	return config.HookPolicy, "the Sieve script reads only the envelope and the connection: the SMTPD policy service decides mail from smtpd, " + asked + " (mail from sendmail still passes the milter)", nil
}
