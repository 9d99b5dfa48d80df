package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sendmail"
	"github.com/vipmilter/vipmilter/vip"
)

const provisionHelp = `Put every binding address on the host, over netlink.

provision adds each Bind_Address to its interface (Interface, globally or
per binding) with the prefix length of Bind_Prefix / Bind_Prefix6 (default
/32 and /128) unless the address says "addr/len". An address already there
is left alone, so running it again changes nothing; so is an address a
local route already makes bindable (127.0.0.0/8 on lo, an AnyIP prefix
such as "ip -6 route add local 2001:db8:100::/64 dev lo"): it prints
"covered" and the route. IPv6 addresses are added without duplicate
address detection so Postfix can bind them at once.

It prints one line per address (added, present, covered, would add,
removed, forgotten, error) and a summary, and exits 1 if any declared
address could not be ensured (missing interface, address already on
another interface, no permission).

Ownership: the addresses it adds are recorded in State_Dir
(provisioned.json) and IPv4 ones carry the label IFACE:vip. --prune removes
addresses it added that the file no longer declares, and nothing else:
never the host's primary address or any address someone else configured
(an IPv4 address it added that now lacks the label was configured again by
hand: it is "forgotten", left alone and dropped from the record).

--dry-run changes nothing and prints the plan the real run would carry
out (would add, would remove, would forget). --watch stays running: it
re-adds a binding address that disappears (network manager restart, ip
addr flush, its local route removed), tells systemd when ready
(Type=notify) and re-reads the file on SIGHUP.

--hosts-file FILE (opt-in, e.g. /etc/hosts) also keeps a block of FILE
between "# BEGIN vipmilter" and "# END vipmilter" lines holding "ADDRESS
NAME" for every binding address whose EHLO_Hostname is a host name with
a dot: Sendmail greets with the name its bound address resolves to, so
this makes it greet with EHLO_Hostname. Lines outside the block are kept
byte for byte; the file is written only when the block changes, with its
mode and owner, atomically (a new file renamed over it) or, where FILE
cannot be replaced (a bind-mounted /etc/hosts), in place; the summary
says which. An address the host's own lines already map to another name
is an error line (the resolver answers with the first line, so Sendmail
would greet with that name), never overridden. --dry-run prints the
lines it would add and remove; --watch re-applies it on SIGHUP.

Needs CAP_NET_ADMIN (root, or vipmilter-provision.service), and write
access to FILE with --hosts-file (vipmilter-provision.service needs a
drop-in for /etc/hosts: see docs/provisioning.md).`

func cmdProvision(c *cli, args []string) error {
	fs := c.flags("provision")
	path := configFlag(fs)
	dry := fs.Bool("dry-run", false, "show what would change; change nothing")
	prune := fs.Bool("prune", false, "also remove addresses vipmilter added that the file no longer declares")
	watch := fs.Bool("watch", false, "stay running and re-add binding addresses that disappear")
	stateDir := fs.String("state-dir", "", "record owned addresses in `DIR` instead of the file's State_Dir")
	hostsFile := fs.String("hosts-file", "", "also keep a block in hosts `FILE` (e.g. /etc/hosts) mapping binding addresses to their EHLO names (for Sendmail)")
	newLog := logFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLog()
	if err != nil {
		return err
	}
	if *watch {
		c = c.logged(log) // a daemon: its result lines are log lines too
	}
	if fs.NArg() > 0 {
		return &exitError{2, fmt.Errorf("unexpected argument %q", fs.Arg(0))}
	}
	if *watch && *dry {
		return &exitError{2, errors.New("--watch and --dry-run exclude each other")}
	}
	cfg, err := loadConfig(*path)
	if err != nil {
		printErrors(c.stderr, err)
		return &exitError{1, errors.New("")}
	}
	if *stateDir != "" {
		cfg.StateDir = *stateDir
	}
	p, err := vip.NewProvisioner(nil, cfg.StateDir, log)
	if err != nil {
		return err
	}
	defer p.Close()
	o := provisionRun{dry: *dry, prune: *prune, hostsFile: *hostsFile}
	addrs, hosts, err := provisionOnce(c, p, cfg, o)
	if err != nil {
		return err
	}
	if !*watch {
		var failed []string
		if addrs {
			failed = append(failed, "some binding addresses could not be ensured")
		}
		if hosts {
			failed = append(failed, "the hosts file "+*hostsFile+" does not map each binding address to its EHLO name")
		}
		if len(failed) > 0 {
			return &exitError{1, errors.New(strings.Join(failed, "; ") + " (see the error lines above)")}
		}
		return nil
	}
	return provisionWatch(c, log, p, *path, cfg, o)
}

// provisionRun is what one pass of provision does besides the addresses.
type provisionRun struct {
	dry, prune bool
	hostsFile  string // "" = no hosts file
}

// provisionOnce prints one line per address and a summary, then the same
// for the hosts file; addrs is true when any declared address is not on
// the host, hosts when the hosts file could not hold every entry. A dry
// run prints the plan the real run would carry out.
func provisionOnce(c *cli, p *vip.Provisioner, cfg *config.Config, o provisionRun) (addrs, hosts bool, err error) {
	rs, err := p.Provision(vip.Wants(cfg), vip.Options{Prune: o.prune, DryRun: o.dry})
	if err != nil {
		return true, false, err
	}
	for _, r := range rs {
		fmt.Fprintln(c.stdout, r)
		addrs = addrs || r.Status == vip.Failed
	}
	fmt.Fprintln(c.stdout, vip.Summary(rs))
	if o.hostsFile == "" {
		return addrs, false, nil
	}
	// A hosts file that cannot be written is reported and fails the run,
	// but does not stop the addresses, which matter more, being kept.
	rep, err := vip.UpdateHosts(o.hostsFile, vip.HostsEntries(cfg, sendmail.ResolvedEHLO), o.dry)
	if err != nil {
		fmt.Fprintf(c.stdout, "error        %v\n", err)
		return addrs, true, nil
	}
	for _, r := range rep.Results {
		fmt.Fprintln(c.stdout, r)
	}
	fmt.Fprintln(c.stdout, rep.Summary())
	return addrs, rep.Failed(), nil
}

func provisionWatch(c *cli, log *slog.Logger, p *vip.Provisioner, path string, cfg *config.Config, o provisionRun) error {
	var mu sync.Mutex
	current := vip.Wants(cfg)
	wants := func() []vip.Want {
		mu.Lock()
		defer mu.Unlock()
		return current
	}
	return runDaemon(log, service{
		name: "provisioner",
		run: func(ctx context.Context, ready func()) error {
			return p.Watch(ctx, wants, func() {
				ready()
				log.Info("watching binding addresses", "addresses", len(wants()))
			})
		},
		reload: func() {
			next, err := loadConfig(path)
			if err != nil {
				logErrors(log, "reload failed; keeping the previous binding file", err)
				return
			}
			mu.Lock()
			current = vip.Wants(next)
			mu.Unlock()
			if _, _, err := provisionOnce(c, p, next, o); err != nil {
				log.Error("provisioning after reload", "err", err)
			}
			log.Info("binding file reloaded", "addresses", len(wants()))
		},
	})
}
