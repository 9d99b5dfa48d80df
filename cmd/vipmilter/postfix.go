package main

import (
	"context"
	"fmt"
	"strings"

	"github.com/vipmilter/vipmilter/postfix"
)

const postfixHelp = `
Render the Postfix side of the binding file and apply it to a Postfix config
directory with Postfix's own tools (postconf -e/-M/-P/-X, postmap): one smtp
transport per binding in master.cf, milter_header_checks routing the binding
header to it, egress stripping of the header, Match_Domain sender maps, the
milter settings, and a cleanup for pickup that keeps requeued mail on its
binding. Only what differs is changed: a second run prints "no changes".
Ends with "postfix check", then reloads a running Postfix (tables are read
once per process). --dry-run prints the diff and changes nothing.
A suspended binding's transport is left out of master.cf so its mail defers
("mail transport unavailable") and no "postqueue -f" releases it.
See docs/postfix.md.`

func cmdPostfix(c *cli, args []string) error {
	fs := c.flags("postfix")
	cfgPath := configFlag(fs)
	dir := fs.String("config-dir", "/etc/postfix", "Postfix config `DIR`")
	dry := fs.Bool("dry-run", false, "print the changes as a diff; change nothing")
	noReload := fs.Bool("no-reload", false, "do not reload a running Postfix (say that a reload is needed)")
	allowLocal := fs.Bool("allow-local-domains", false, "apply even though this Postfix delivers some domains itself (their inbound mail would be routed out by SMTP)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &exitError{2, fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		return &exitError{1, err}
	}
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
	plan, err := postfix.Render(cfg, opts)
	if err != nil {
		return &exitError{1, err}
	}
	_, err = postfix.Apply(ctx, plan, st, postfix.ApplyOptions{DryRun: *dry, NoReload: *noReload, Out: c.stdout})
	return err
}
