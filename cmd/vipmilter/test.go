package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/vipmilter/vipmilter/sieve"
)

const testHelp = `Show which binding the policy gives one message, without sending anything.

test builds the envelope from the flags (--from, one --to per recipient in
RCPT order, --auth for a SASL login, --remote-ip, --remote-host, --helo,
--daemon, --queue-id) and, optionally, reads an RFC 5322 message from a file
(or from standard input with "-") for the header, size and body tests. It
then runs the same decision the milter runs and prints it like Pigeonhole's
sieve-test: the binding, the group it was picked from, the reason (script,
match_domain, fallback, policy_error, reject), the action the milter would
take (accept, reject, tempfail) and the trace of rules that decided.

Group picks are real: a random or round_robin group may answer differently
from one run to the next; a sticky group answers the same for the same first
recipient domain. Like the milter, test passes over group members whose
address is not on this host (it reads the host's addresses, as serve does);
--all-live treats every binding address as present, to try a policy on
another machine than the one that sends. --json prints one JSON object
instead, for scripts.

The message file is read the way the milter receives it: each header field,
folded or not, is given to the policy as the MTA would give it, so a rule
proven here decides alike in the milter.

Flags may come before or after MESSAGE. It needs no root and no network.
The exit status is 0 when a decision was printed (a reject too), 1 when
the binding file or the script has errors.`

// listFlag collects a repeated flag in order.
type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error { *l = append(*l, s); return nil }

func cmdTest(c *cli, args []string) error {
	fs := c.flags("test")
	path := configFlag(fs)
	var to listFlag
	m := &sieve.Message{}
	fs.StringVar(&m.From, "from", "", "envelope sender `ADDR` (\"\" for the null sender)")
	fs.Var(&to, "to", "envelope recipient `ADDR`; repeat in RCPT order")
	fs.StringVar(&m.Auth, "auth", "", "SASL login `USER` of the submitting client")
	fs.StringVar(&m.RemoteIP, "remote-ip", "127.0.0.1", "client `IP`")
	fs.StringVar(&m.RemoteHost, "remote-host", "localhost", "client `HOST` name")
	fs.StringVar(&m.Helo, "helo", "", "client HELO/EHLO `NAME`")
	fs.StringVar(&m.Daemon, "daemon", "", "Postfix daemon `NAME` ({daemon_name}); default: this host's name, which stock Postfix sends for every service ($myhostname) unless vipmilter postfix --daemon-name set one")
	fs.StringVar(&m.QueueID, "queue-id", "", "Postfix queue `ID`")
	asJSON := fs.Bool("json", false, "print one JSON object")
	allLive := fs.Bool("all-live", false, "treat every binding address as on the host (default: read the host's addresses, as serve does)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if m.Daemon == "" {
		// What the live milter and policy service see on a stock Postfix.
		m.Daemon, _ = os.Hostname()
	}
	files := fs.Args()
	if len(to) == 0 {
		return &exitError{code: 2, err: errors.New("at least one --to is required")}
	}
	if len(files) > 1 {
		return &exitError{code: 2, err: fmt.Errorf("at most one MESSAGE, got %d", len(files))}
	}
	m.To = to
	m.Phase = "during"

	cfg, err := loadConfig(*path)
	if err != nil {
		printErrors(c.stderr, err)
		return &exitError{code: 1, err: errors.New("")}
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	log := slog.New(slog.NewTextHandler(c.stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	var live sieve.Liveness
	if !*allLive {
		live = presence(ctx, log)
	}
	pol, err := sieve.New(cfg, sieve.Options{Liveness: live, Log: log, Version: currentVersion()})
	if err != nil {
		printErrors(c.stderr, err)
		return &exitError{code: 1, err: errors.New("")}
	}
	if len(files) == 1 {
		var raw []byte
		if files[0] == "-" {
			raw, err = io.ReadAll(c.stdin)
		} else {
			raw, err = os.ReadFile(files[0])
		}
		if err != nil {
			return &exitError{code: 1, err: fmt.Errorf("message: %w", err)}
		}
		if err := m.Parse(raw, pol.Needs().Body, cfg.MaxBodyBytes); err != nil {
			return &exitError{code: 1, err: fmt.Errorf("message %s: %w", files[0], err)}
		}
	}

	d := pol.Decide(ctx, m)
	if *asJSON {
		return json.NewEncoder(c.stdout).Encode(d)
	}
	printDecision(c.stdout, d)
	return nil
}

// printDecision writes d the way Pigeonhole's sieve-test reports.
func printDecision(w io.Writer, d sieve.Decision) {
	fmt.Fprintf(w, "binding: %s\n", d.Binding)
	if d.Group != "" {
		fmt.Fprintf(w, "group:   %s\n", d.Group)
	}
	fmt.Fprintf(w, "reason:  %s\n", d.Reason)
	fmt.Fprintf(w, "action:  %s\n", d.Action)
	if d.RejectText != "" {
		fmt.Fprintf(w, "reject:  %s\n", d.RejectText)
	}
	if d.Split {
		fmt.Fprintln(w, "split:   recipients would get different bindings")
	} else if d.SplitUnknown {
		fmt.Fprintln(w, "split:   unknown (detection stopped early; see the recipients step)")
	}
	if d.Err != nil {
		fmt.Fprintf(w, "error:   %s\n", d.Err)
	}
	fmt.Fprintln(w, "trace:")
	for _, s := range d.Trace {
		if s.Line > 0 {
			fmt.Fprintf(w, "  %s (line %d): %s\n", s.Rule, s.Line, s.Detail)
		} else {
			fmt.Fprintf(w, "  %s: %s\n", s.Rule, s.Detail)
		}
	}
}
