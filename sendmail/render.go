// Package sendmail is vipmilter's Sendmail side. It renders an m4 fragment
// and the text maps it reads from the binding file (Render, Apply), checks
// a site's sendmail.mc for rulesets the fragment cannot be combined with
// (CheckSite), says what the binding file asks for that Sendmail cannot do
// (Limitations), and serves the socketmap through which Sendmail learns,
// per queue id, the binding the milter decided (Store, SocketmapServer).
//
// The mechanism (docs/sendmail.md): at end of message the milter records
// queue id → binding; Sendmail's queuegroup ruleset, which runs for each
// recipient after the milter and before the queue file is written, asks the
// socketmap and sets the persistent macros {vip_binding}, {if_addr} and
// {daemon_flags} ("b": bind to {if_addr}), so every later queue run binds
// the same address without asking anyone.
package sendmail

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/vipmilter/vipmilter/config"
)

// Names of the files Render writes into the Sendmail configuration directory.
const (
	FragmentFile  = "vipmilter.m4"
	DomainsFile   = "vipmilter-domains"
	SuspendedFile = "vipmilter-suspended"
)

// DefaultQueueGroup is Sendmail's own queue group, used for mail that binds
// no address.
const DefaultQueueGroup = "mqueue"

// Options say where the site keeps things.
type Options struct {
	// ConfigDir is Sendmail's configuration directory (Debian: /etc/mail);
	// the fragment refers to the maps by absolute path inside it.
	ConfigDir string
	// QueueDir is Sendmail's QueueDirectory (Debian: /var/spool/mqueue);
	// each binding's queue group lives in a subdirectory of it.
	QueueDir string
}

// DefaultQueueDir is Debian's QueueDirectory.
const DefaultQueueDir = "/var/spool/mqueue"

// File is one rendered file: its absolute path and contents.
type File struct {
	Path string
	Data []byte
}

// Rulesets are the named rulesets the fragment defines. A site whose
// configuration already defines one of them cannot take the fragment as is
// (Sendmail would append our rules to theirs); CheckSite refuses it.
var Rulesets = []string{"queuegroup", "check_compat"}

// QueueGroup is binding b's Sendmail queue group: "vip_" and the name with
// every character other than letters, digits and '_' written as '_' (a
// queue group name is one ruleset token). Render refuses two bindings that
// map to the same group.
func QueueGroup(b *config.Binding) string {
	return "vip_" + groupUnsafe.ReplaceAllString(b.Name, "_")
}

var groupUnsafe = regexp.MustCompile(`[^A-Za-z0-9_]`)

// QueueDirs are the directories the queue groups need, which Sendmail does
// not create itself.
func QueueDirs(cfg *config.Config, o Options) []string {
	var dirs []string
	for _, b := range cfg.Bindings {
		dirs = append(dirs, filepath.Join(queueDir(o), QueueGroup(b)))
	}
	return dirs
}

func queueDir(o Options) string {
	if o.QueueDir == "" {
		return DefaultQueueDir
	}
	return o.QueueDir
}

// Render returns the fragment and its maps for cfg. Errors name the setting
// that cannot be rendered.
func Render(cfg *config.Config, o Options) ([]File, error) {
	if cfg.SendmailSocketmap.IsZero() {
		return nil, fmt.Errorf("%s: Sendmail_Socketmap is not set: Sendmail learns the milter's decisions through it; add e.g. Sendmail_Socketmap = \"inet:127.0.0.1:8895\" to the binding file", cfg.File)
	}
	if !filepath.IsAbs(o.ConfigDir) {
		return nil, fmt.Errorf("sendmail config dir %q: want an absolute path", o.ConfigDir)
	}
	groups := map[string]string{}
	for _, b := range cfg.Bindings {
		g := QueueGroup(b)
		if other, dup := groups[g]; dup {
			return nil, fmt.Errorf("%s:%d: bindings %q and %q both become Sendmail queue group %s; rename one (letters, digits and '_' are kept, other characters become '_')", cfg.File, b.Pos.Line, other, b.Name, g)
		}
		groups[g] = b.Name
	}
	dir := filepath.Clean(o.ConfigDir)
	domains, suspended := renderDomains(cfg), renderSuspended(cfg)
	frag := renderFragment(cfg, o, dir)
	return []File{
		{Path: filepath.Join(dir, FragmentFile), Data: []byte(frag)},
		{Path: filepath.Join(dir, DomainsFile), Data: []byte(domains)},
		{Path: filepath.Join(dir, SuspendedFile), Data: []byte(suspended)},
	}, nil
}

// SendmailSocket writes l in Sendmail's socket notation (milter S= and
// socket maps): "unix:/path", "inet:port@host", "inet6:port@host".
func SendmailSocket(l config.Listen) string {
	if p := l.Path(); p != "" {
		return "unix:" + p
	}
	host, port, _ := net.SplitHostPort(l.Address)
	if strings.Contains(host, ":") {
		return "inet6:" + port + "@" + host
	}
	return "inet:" + port + "@" + host
}

// header starts each map: text maps skip lines that start with '#'.
const header = "# Written by \"vipmilter sendmail\" from %s. Do not edit: the next run\n# overwrites it. %s\n"

func renderDomains(cfg *config.Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, header, cfg.File, "Match_Domain: sender domain -> QUEUEGROUP/BINDING/ADDRESS.")
	type row struct{ dom, val string }
	var rows []row
	for _, bd := range cfg.Bindings {
		v, _ := Answer(cfg, bd.Name)
		for _, d := range bd.MatchDomains {
			rows = append(rows, row{d, v})
		}
	}
	slices.SortFunc(rows, func(a, b row) int { return strings.Compare(a.dom, b.dom) })
	for _, r := range rows {
		fmt.Fprintf(&b, "%s\t%s\n", r.dom, r.val)
	}
	return b.String()
}

func renderSuspended(cfg *config.Config) string {
	var b strings.Builder
	fmt.Fprintf(&b, header, cfg.File, "Suspend_Delivery: binding -> binding; check_compat defers its mail.")
	for _, bd := range cfg.Bindings {
		if bd.SuspendDelivery {
			fmt.Fprintf(&b, "%s\t%s\n", bd.Name, bd.Name)
		}
	}
	return b.String()
}

// The fragment is read by m4 with the cf macros loaded, where '#' starts no
// comment: any word in it that names a macro (MAILER, include, define, and
// every binding name that happens to) would be expanded. So comments are
// dnl lines, and every line meant for sendmail.cf is quoted whole. Values
// that reach here are validated by config and hold no quote characters.
func m4q(s string) string { return "`" + s + "'" }

func renderFragment(cfg *config.Config, o Options, dir string) string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	// cf writes one line into sendmail.cf, quoted.
	cf := func(format string, args ...any) { w("%s\n", m4q(fmt.Sprintf(format, args...))) }
	// note writes a comment for the .mc reader only.
	note := func(text string) { w("dnl %s\n", text) }
	w("divert(-1)dnl\n")
	note("Written by vipmilter sendmail from " + cfg.File + ". Do not edit: the next run")
	note("overwrites it. Include it at the end of sendmail.mc, after the MAILER lines:")
	note("  include(`" + filepath.Join(dir, FragmentFile) + "')dnl")
	note("and rebuild sendmail.cf. It defines the rulesets " + strings.Join(Rulesets, " and ") + ".")
	w("ifdef(`_VIPMILTER_M4_', `errprint(`*** ERROR: vipmilter.m4 is included twice\n')m4exit(1)')dnl\n")
	w("define(`_VIPMILTER_M4_')dnl\n")

	note("The milter decides each message's binding.")
	flags := ""
	if cfg.OnMilterDown == config.MilterDownTempfail {
		flags = ", F=T"
	}
	w("INPUT_MAIL_FILTER(`vipmilter', `S=%s%s, T=C:10s;S:30s;R:60s;E:5m')dnl\n", SendmailSocket(cfg.MilterListen), flags)
	note("The milter records decisions under the queue id (macro i).")
	w("define(`confMILTER_MACROS_EOM', defn(`confMILTER_MACROS_EOM')`, i')dnl\n")
	note("Host status is per destination host, not per source address: one")
	note("binding's failures would hold back the others.")
	w("undefine(`confHOST_STATUS_DIRECTORY')dnl\n")
	note("EHLO: the name the bound address resolves to.")
	w("CLIENT_OPTIONS(`Family=inet, Modifiers=h')dnl\n")
	w("CLIENT_OPTIONS(`Family=inet6, Modifiers=h')dnl\n")
	note("One queue group per binding: Sendmail caches connections per host and")
	note("mailer, not per source address, and a queue group keeps each binding's")
	note("queue runs, and so its cached connections, apart from the others.")
	note("Runners = Server_Max_Outbound_Connections.")
	for _, bd := range cfg.Bindings {
		opts := "P=" + filepath.Join(queueDir(o), QueueGroup(bd))
		if bd.ServerMaxOutboundConnections > 0 {
			opts += fmt.Sprintf(", R=%d", bd.ServerMaxOutboundConnections)
		}
		w("QUEUE_GROUP(%s, %s)dnl\n", m4q(QueueGroup(bd)), m4q(opts))
	}

	w("LOCAL_CONFIG\n")
	cf("# vipmilter: queue id -> QUEUEGROUP/BINDING/ADDRESS, answered by vipmilter serve")
	cf("Kvipmilter socket -f -T<TMPF> %s", SendmailSocket(cfg.SendmailSocketmap))
	cf("Kvipdomain text -v1 -T<TMPF> %s", filepath.Join(dir, DomainsFile))
	cf("Kvipsuspend text -f -v1 -T<TMPF> %s", filepath.Join(dir, SuspendedFile))
	cf("Kvipmacro macro")
	cf("C{persistentMacros}{vip_binding} {vip_route}")

	fallback := "<NONE>"
	if v, ok := Answer(cfg, config.DefaultBindingName); ok {
		fallback = v
	}
	rule := func(lhs, rhs, comment string) { cf("R%s\t%s\t%s", lhs, rhs, comment) }
	w("LOCAL_RULESETS\n")
	cf("# Runs for each recipient, at RCPT and again after the end of message")
	cf("# reply of the milter; the last run decides what the queue file keeps.")
	cf("# vipmilter: the source address of each message")
	cf("Squeuegroup")
	rule("$*", "$: < $(vipmilter $&i $: <NOTFOUND> $) >", "ask vipmilter serve")
	rule("< $* <TMPF> >", "$: < <NOTFOUND> >", "socketmap down")
	rule("< $+ / $+ / $* >", "$: <G> < $1 / $2 / $3 >", "decided: bind, queue group")
	rule("< <NOTFOUND> >", "$: <N> < $&{vip_route} >", "else keep an earlier choice")
	rule("<N> < >", "$: <D> $&f", "else Match_Domain")
	rule("<D> $* @ $+", "$: <N> < $(vipdomain $2 $: <NOTFOUND> $) >", "")
	rule("<D> $*", "$: <N> < <NOTFOUND> >", "")
	rule("<N> < $* <TMPF> >", "$: <N> < <NOTFOUND> >", "")
	rule("<N> < <NOTFOUND> >", "$: <N> < "+fallback+" >", "else the default binding")
	rule("<$-> < $+ / $+ / $* >", "$: <$1> < $2 / $3 / $4 > $(vipmacro {vip_route} $@ $2 / $3 / $4 $) $(vipmacro {vip_binding} $@ $3 $)", "remember")
	rule("<$-> < $+ / $+ / $+ >", "$: <$1> < $2 > $(vipmacro {if_addr} $@ $4 $) $(vipmacro {daemon_flags} $@ b $)", "bind")
	rule("<$-> < $+ / $+ / >", "$: <$1> < $2 > $(vipmacro {daemon_flags} $@ $)", "no address")
	cf("# Only a decision picks a queue group: without one the recipient stays")
	cf("# unassigned, so Sendmail runs this again after the end of message.")
	rule("<G> < $+ >", "$# $1", "")
	rule("$*", "$@", "")
	cf("")
	cf("# vipmilter: Suspend_Delivery defers the mail of a binding, which stays queued")
	cf("Scheck_compat")
	rule("$*", "$: < $(vipsuspend $&{vip_binding} $: <OK> $) >", "")
	rule("< <OK> >", "$@ ok", "")
	rule("< $* <TMPF> >", "$#error $@ TEMPFAIL $: \"451 4.3.0 vipmilter suspend map unavailable\"", "")
	rule("< $+ >", "$#error $@ TEMPFAIL $: \"451 4.7.1 binding \" $1 \" suspended\"", "")
	w("divert(0)dnl\n")
	return b.String()
}
