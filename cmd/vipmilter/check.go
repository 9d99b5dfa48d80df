package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/policyd"
	"github.com/vipmilter/vipmilter/sendmail"
	"github.com/vipmilter/vipmilter/sieve"
)

const checkHelp = `Check the binding file and its Sieve policy without starting anything.

check loads the binding file and compiles the Sieve script it names, and
prints every error it finds (file:line:column: reason), exiting with status 1.
When both load, it prints the warnings, then a summary: every binding with its
addresses, EHLO name, limits, suspension, Match_Domain values and group; every
group with its selection method and members; the number of Match_Domain
entries; the script and which message parts it reads (headers, body, size),
which tells you what the milter has to collect; and the hook (none, policy or
milter) with the reason it was chosen, which is what "vipmilter postfix"
renders and "vipmilter serve" answers on.

With --routes it also asks the kernel, for every binding address, whether the
address is on the host and which route mail to --probe would take from it
(default 198.51.100.1 and 2001:db8:ffff::1, documentation addresses: it is a
route lookup, nothing is sent). A binding whose address has no route, or
whose route leaves by another interface than its Interface, is reported.

When --postfix-dir (default /etc/postfix) holds a Postfix configuration, it
says whether "vipmilter postfix" must be run again: a binding the milter
would choose but Postfix does not route waits in the hold queue until then.

When Sendmail_Socketmap is set, it also prints, one "sendmail:" line each,
what the file asks for that Sendmail cannot honour exactly (EHLO names,
per-destination limits, dual-stack bindings, Relay), and refuses (exit 1,
naming file and line) a sendmail.mc or sendmail.cf in --sendmail-dir
(default /etc/mail) that defines what the fragment needs (the queuegroup or
check_compat ruleset, HeloName, a host status directory, …).

Run it after every edit, before reloading the milter.`

func cmdCheck(c *cli, args []string) error {
	fs := c.flags("check")
	path := configFlag(fs)
	routes := fs.Bool("routes", false, "also check that every binding address is on the host and routable")
	pfDir := postfixDirFlag(fs)
	smDir := fs.String("sendmail-dir", "/etc/mail", "Sendmail config `DIR` whose sendmail.mc (and sendmail.cf) check reads for what the fragment cannot be combined with, when Sendmail_Socketmap is set")
	probe := fs.String("probe", "", "destination `ADDR[,ADDR]` (one per family) whose route --routes looks up; nothing is sent (default 198.51.100.1,2001:db8:ffff::1)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg, pol, err := loadPolicy(*path)
	if err != nil {
		printErrors(c.stderr, err)
		return &exitError{code: 1, err: errors.New("")}
	}
	for _, w := range cfg.Warnings {
		fmt.Fprintf(c.stdout, "warning: %v\n", w)
	}
	if !cfg.SendmailSocketmap.IsZero() {
		for _, l := range sendmail.Limitations(cfg) {
			fmt.Fprintf(c.stdout, "sendmail: %s\n", l)
		}
		conflicts, _, _, err := sendmail.CheckDir(*smDir)
		if err != nil {
			return &exitError{code: 1, err: err}
		}
		if len(conflicts) > 0 {
			for _, e := range conflicts {
				fmt.Fprintf(c.stderr, "error: %v\n", e)
			}
			return &exitError{code: 1, err: fmt.Errorf("%s: the site's Sendmail configuration cannot take vipmilter.m4 as it is", *smDir)}
		}
	}
	hook, why, err := policyd.ChooseHook(cfg, pol.Needs())
	if err != nil {
		printErrors(c.stderr, err)
		return &exitError{code: 1, err: errors.New("")}
	}
	switch stale, err := postfixSide(cfg, pol, *pfDir); {
	case err != nil:
		fmt.Fprintf(c.stdout, "warning: cannot tell whether the Postfix side is current: %v\n", err)
	case stale != "":
		fmt.Fprintf(c.stdout, "warning: postfix: %s\n", stale)
	}
	summarize(c.stdout, cfg, pol)
	fmt.Fprintf(c.stdout, "hook: %s (%s)\n", hook, why)
	if cfg.SendmailSocketmap.IsZero() {
		fmt.Fprintf(c.stdout, "  \"vipmilter postfix\" renders %s\n", hookRendering(hook))
	}
	if *routes {
		if err := checkRoutes(c, cfg, *probe); err != nil {
			return &exitError{code: 1, err: err}
		}
	}
	return nil
}

// hookRendering says in one phrase what "vipmilter postfix" renders for hook.
func hookRendering(hook config.Hook) string {
	switch hook {
	case config.HookNone:
		return "no milter and no policy service: sender_dependent_default_transport_maps routes Match_Domain"
	case config.HookPolicy:
		return "check_policy_service first in smtpd_recipient_restrictions and smtpd_data_restrictions, vipmilter's milter in non_smtpd_milters only (mail from sendmail)"
	}
	return "vipmilter's milter in smtpd_milters and non_smtpd_milters"
}

// loadPolicy loads the binding file and compiles its script.
func loadPolicy(path string) (*config.Config, *sieve.Policy, error) {
	cfg, err := loadConfig(path)
	if err != nil {
		return nil, nil, err
	}
	pol, err := sieve.New(cfg, sieve.Options{})
	if err != nil {
		return cfg, nil, err
	}
	return cfg, pol, nil
}

// printErrors prints one error a line, unfolding a config.ErrorList.
func printErrors(w io.Writer, err error) {
	for _, e := range unfold(err) {
		fmt.Fprintf(w, "error: %v\n", e)
	}
}

// unfold returns the errors of a config.ErrorList, else err alone.
func unfold(err error) []error {
	var list config.ErrorList
	if errors.As(err, &list) {
		out := make([]error, len(list))
		for i, e := range list {
			out[i] = e
		}
		return out
	}
	return []error{err}
}

func summarize(w io.Writer, cfg *config.Config, pol *sieve.Policy) {
	fmt.Fprintf(w, "%s: OK\n", cfg.File)
	fmt.Fprintf(w, "bindings: %d\n", len(cfg.Bindings))
	domains := 0
	for _, b := range cfg.Bindings {
		domains += len(b.MatchDomains)
		addrs := make([]string, len(b.Addresses))
		for i, a := range b.Addresses {
			addrs[i] = a.String()
		}
		fmt.Fprintf(w, "  %s: addresses %s; ehlo %s; max_outbound_connections %d", b.Name, strings.Join(addrs, " "), b.EHLOHostname, b.MaxOutboundConnections)
		if b.ServerMaxOutboundConnections > 0 {
			fmt.Fprintf(w, "; server_max_outbound_connections %d", b.ServerMaxOutboundConnections)
		}
		if b.SuspendDelivery {
			fmt.Fprint(w, "; SUSPENDED")
		}
		if len(b.MatchDomains) > 0 {
			fmt.Fprintf(w, "; domains %s", strings.Join(b.MatchDomains, " "))
		}
		if b.Group != nil {
			fmt.Fprintf(w, "; group %s weight %d", b.Group.Name, b.Weight)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "groups: %d\n", len(cfg.Groups))
	for _, g := range cfg.Groups {
		names := make([]string, len(g.Members))
		for i, m := range g.Members {
			names[i] = m.Name
		}
		fmt.Fprintf(w, "  %s: selection %s; members %s\n", g.Name, g.Selection, strings.Join(names, " "))
	}
	fmt.Fprintf(w, "match_domain entries: %d\n", domains)
	if cfg.SieveScript == "" {
		fmt.Fprintln(w, "script: none (Match_Domain, then the default binding)")
		return
	}
	n := pol.Needs()
	fmt.Fprintf(w, "script: %s (reads headers: %v, body: %v, size: %v)\n", cfg.SieveScript, n.Headers, n.Body, n.Size)
}
