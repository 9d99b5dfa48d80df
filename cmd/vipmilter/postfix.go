package main

import (
	"context"
	"errors"
	"fmt"
	iofs "io/fs"
	"maps"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/policyd"
	"github.com/vipmilter/vipmilter/postfix"
)

const postfixHelp = `
Render the Postfix side of the binding file and apply it to a Postfix config
directory: one smtp transport per binding in master.cf, tables that route only
a binding header carrying the per-install key (Binding_Header_Key, created
here when missing) and strip every other copy on entry and every copy on
egress, Match_Domain sender maps, and cleanups that keep requeued and
content-filtered mail on its binding. The hook follows the binding file and
its script, as "vipmilter check" prints it: none (Match_Domain only: no
milter, no policy service), policy (check_policy_service first in
smtpd_data_restrictions, and in smtpd_recipient_restrictions when a
recipient can change the decision; the milter in non_smtpd_milters only)
or milter (after the host's own milters); entries of an earlier hook are
removed. The host's own checks, milters and maps are kept, never replaced.
Everything is staged and checked ("postfix check" on the staged copy) before
anything is switched in: on failure nothing changed. Only what differs is
changed: a second run prints "no changes". A running Postfix is reloaded.
--dry-run stages and checks too, and switches nothing.
A suspended binding's transport is left out of master.cf so its mail defers
("mail transport unavailable") and no "postqueue -f" releases it.
See docs/postfix.md.`

func cmdPostfix(c *cli, args []string) error {
	fs := c.flags("postfix")
	cfgPath := configFlag(fs)
	dir := fs.String("config-dir", "/etc/postfix", "Postfix config `DIR`")
	dry := fs.Bool("dry-run", false, "print the changes as a diff; change nothing")
	noReload := fs.Bool("no-reload", false, "do not reload a running Postfix (say that a reload is needed)")
	daemonNames := daemonNameFlag{}
	fs.Var(daemonNames, "daemon-name", "set milter_macro_daemon_name on an smtpd service, `SERVICE/TYPE=NAME` (e.g. submission/inet=submission), so the policy's vnd.vipmilter.daemon tells services apart; repeatable")
	allowLocal := fs.Bool("allow-local-domains", false, "apply even though this Postfix delivers some domains itself (their inbound mail would be routed out by SMTP)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &exitError{2, fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	cfg, pol, err := loadPolicy(*cfgPath)
	if err != nil {
		return &exitError{1, err}
	}
	// The same choice "vipmilter serve" makes, from the same compiled policy.
	hook, why, err := policyd.ChooseHook(cfg, pol.Needs())
	if err != nil {
		return &exitError{1, err}
	}
	fmt.Fprintf(c.stdout, "hook: %s (%s)\n", hook, why)
	ctx := context.Background()
	st, err := postfix.ReadState(ctx, *dir)
	if err != nil {
		return err
	}
	if len(st.LocalDomains) > 0 {
		msg := fmt.Sprintf("%s delivers mail locally (%s): the milter tags inbound mail too and FILTER would send it out by SMTP; run vipmilter on a send-only Postfix instance, or pass --allow-local-domains if no client ever submits mail for these domains through this instance", *dir, strings.Join(st.LocalDomains, "; "))
		if !*allowLocal {
			return &exitError{1, fmt.Errorf("%s", msg)}
		}
		fmt.Fprintf(c.stderr, "warning: %s\n", msg)
	}
	opts := st.Options()
	opts.LocalDelivery = len(st.LocalDomains) > 0
	opts.DaemonNames = daemonNames
	opts.Hook = hook
	opts.PolicyRecipients = pol.Needs().Recipients
	// The key's group lets the unprivileged milter read it (systemd/vipmilter.sysusers).
	gid := -1
	if g, err := user.LookupGroup("vipmilter"); err == nil {
		gid, _ = strconv.Atoi(g.Gid)
	} else if _, err := os.Stat(cfg.HeaderKeyFile); errors.Is(err, iofs.ErrNotExist) {
		fmt.Fprintf(c.stderr, "warning: group vipmilter does not exist (systemd-sysusers creates it): %s will be readable by its owner only, and a milter running as user vipmilter cannot read it; create the group, then chgrp vipmilter %s\n", cfg.HeaderKeyFile, cfg.HeaderKeyFile)
	}
	if *dry {
		// A dry run creates nothing: a missing key is shown as zeros.
		if opts.Key, err = config.ReadHeaderKey(cfg.HeaderKeyFile); errors.Is(err, iofs.ErrNotExist) {
			fmt.Fprintf(c.stdout, "(dry run: %s does not exist; the real run creates it)\n", cfg.HeaderKeyFile)
			opts.Key, err = strings.Repeat("0", config.HeaderKeyLen), nil
		}
	} else {
		opts.Key, err = config.EnsureHeaderKey(cfg.HeaderKeyFile, gid)
	}
	if err != nil {
		return &exitError{1, err}
	}
	plan, err := postfix.Render(cfg, opts)
	if err != nil {
		return &exitError{1, err}
	}
	_, err = postfix.Apply(ctx, plan, st, postfix.ApplyOptions{DryRun: *dry, NoReload: *noReload, Out: c.stdout})
	return err
}

// daemonNameFlag collects --daemon-name SERVICE/TYPE=NAME, one per service.
type daemonNameFlag map[string]string

func (d daemonNameFlag) Set(v string) error {
	svc, name, ok := strings.Cut(v, "=")
	if !ok || strings.Count(svc, "/") != 1 {
		return fmt.Errorf("want SERVICE/TYPE=NAME, e.g. submission/inet=submission")
	}
	d[svc] = name
	return nil
}

func (d daemonNameFlag) String() string {
	var out []string
	for _, svc := range slices.Sorted(maps.Keys(d)) {
		out = append(out, svc+"="+d[svc])
	}
	return strings.Join(out, ",")
}
