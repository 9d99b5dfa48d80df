package config

import (
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Defaults for settings not written in the file. The decoder applies these
// constants and the keyword table's Default column is derived from them, so
// docs/config.md cannot drift from what the decoder does.
const (
	DefaultMilterListen      = "inet:127.0.0.1:8894"
	DefaultBindingHeader     = "X-Binding"
	DefaultOnPolicyError     = PolicyErrorDefault
	DefaultOnMilterDown      = MilterDownAccept
	DefaultMaxBodyBytes      = 1 << 20 // bytes
	DefaultBindPrefix4       = 32
	DefaultBindPrefix6       = 128
	DefaultTransportPrefix   = "vip_"
	DefaultKeepHeader        = false
	DefaultStateDir          = "/var/lib/vipmilter"
	DefaultHeaderKeyFile     = "binding-header.key" // next to the binding file
	DefaultEHLOHostname      = EHLOHostname
	DefaultMaxOutbound       = 32 // connections per destination domain
	DefaultServerMaxOutbound = 0  // Postfix's default_process_limit
	DefaultSuspendDelivery   = false
	DefaultWeight            = 1
	DefaultSelection         = SelectSticky

	// Daemon limits (Max_Header_Bytes, Max_Connections, Milter_Idle_Timeout,
	// Milter_Packet_Timeout); the milter, the policy service and the
	// socketmap take their zero-value defaults from here too.
	DefaultMaxHeaderBytes      = 256 << 10 // bytes of header kept per message
	DefaultMaxConnections      = 2048      // per listening socket
	DefaultMilterIdleTimeout   = time.Hour
	DefaultMilterPacketTimeout = 30 * time.Second
)

// setting is a value together with the node that set it, so inherited
// defaults still report the line they came from.
type setting[T any] struct {
	v   T
	set bool
}

func (s *setting[T]) put(v T) { s.v, s.set = v, true }

// values collects what one scope (file, group or binding) says.
type values struct {
	// Inherited by the bindings inside the scope.
	iface, ehlo, relay    setting[string]
	moc, smoc, pfx4, pfx6 setting[int]
	suspend               setting[bool]

	// Binding only.
	addrs       []addrAt
	addrWritten bool // a Bind_Address was written, valid or not
	domains     []strAt
	weight      setting[int]
	weightPos   Pos

	// Group only.
	selection setting[Selection]
}

type addrAt struct {
	addr   netip.Addr
	bits   int // -1: from Bind_Prefix
	pos    Pos
	keyPos Pos
}

type strAt struct {
	s   string
	pos Pos
}

type decoder struct {
	cfg      *Config
	errs     ErrorList
	firstPos map[string]Pos // "binding:name" / "group:name" / lower-cased -> first declaration
	domains  map[string]*Binding
	domPos   map[string]Pos
	addrs    map[netip.Addr]*Binding
}

func (d *decoder) errorf(pos Pos, keyword, format string, args ...any) {
	d.errs = append(d.errs, &Error{Pos: pos, Keyword: keyword, Msg: fmt.Sprintf(format, args...)})
}

func (d *decoder) warnf(pos Pos, keyword, format string, args ...any) {
	d.cfg.Warnings = append(d.cfg.Warnings, &Error{Pos: pos, Keyword: keyword, Msg: fmt.Sprintf(format, args...)})
}

func decode(name string, nodes []*Node) (*Config, error) {
	cfg := &Config{
		File:            name,
		MilterListen:    MustParseListen(DefaultMilterListen),
		BindingHeader:   DefaultBindingHeader,
		OnPolicyError:   DefaultOnPolicyError,
		OnMilterDown:    DefaultOnMilterDown,
		MaxBodyBytes:    DefaultMaxBodyBytes,
		MaxHeaderBytes:  DefaultMaxHeaderBytes,
		MaxConnections:  DefaultMaxConnections,
		IdleTimeout:     DefaultMilterIdleTimeout,
		PacketTimeout:   DefaultMilterPacketTimeout,
		TransportPrefix: DefaultTransportPrefix,
		KeepHeader:      DefaultKeepHeader,
		StateDir:        DefaultStateDir,
		HeaderKeyFile:   filepath.Join(filepath.Dir(name), DefaultHeaderKeyFile),
		PolicyListen:    MustParseListen(DefaultPolicyListen),
		Hook:            HookAuto,
	}
	d := &decoder{
		cfg:      cfg,
		firstPos: make(map[string]Pos),
		domains:  make(map[string]*Binding),
		domPos:   make(map[string]Pos),
		addrs:    make(map[netip.Addr]*Binding),
	}
	global := &values{}
	var stanzas []*Node
	d.settings(nodes, inGlobal, global, func(n *Node) { stanzas = append(stanzas, n) })
	for _, n := range stanzas {
		switch lookupKeyword(n.Name).Name {
		case "Binding":
			d.binding(n, nil, global, nil)
		case "Binding_Group":
			d.group(n, global)
		}
	}
	if len(d.errs) > 0 {
		return nil, d.errs
	}
	cfg.index()
	return cfg, nil
}

// settings applies the "Name = value" statements of one scope and hands
// stanzas to stanza, after checking each keyword is allowed there.
func (d *decoder) settings(nodes []*Node, where scope, v *values, stanza func(*Node)) {
	seen := make(map[*keyword]Pos)
	for _, n := range nodes {
		k := lookupKeyword(n.Name)
		if k == nil {
			if s := suggest(n.Name); s != "" {
				d.errorf(n.Pos, n.Name, "unknown keyword; did you mean %s?", s)
			} else {
				d.errorf(n.Pos, n.Name, "unknown keyword")
			}
			continue
		}
		if k.Scopes&where == 0 {
			d.errorf(n.Pos, n.Name, "not allowed in %s (allowed in: %s)", scopeName(where), k.Scopes)
			continue
		}
		if k.Stanza != n.Block {
			if k.Stanza {
				d.errorf(n.Pos, n.Name, `is a stanza: write %s "name" { ... }`, k.Name)
			} else {
				d.errorf(n.Pos, n.Name, "is a setting: write %s = value", k.Name)
			}
			continue
		}
		if k.Stanza {
			stanza(n)
			continue
		}
		if first, dup := seen[k]; dup && !k.Repeat {
			d.errorf(n.Pos, n.Name, "set twice in the same %s (first at line %d)", scopeName(where), first.Line)
			continue
		}
		seen[k] = n.Pos
		k.set(d, n, v)
	}
}

func scopeName(s scope) string {
	switch s {
	case inGlobal:
		return "the file's global settings"
	case inGroup:
		return "a Binding_Group"
	case inBinding:
		return "a Binding"
	}
	return s.String()
}

// declare records a binding or group name and reports collisions, including
// names that differ only in letter case: names are case-sensitive, as in
// Momentum, but "Pool" next to "pool" is almost always a typo that would
// silently route mail to the wrong address.
func (d *decoder) declare(n *Node) bool {
	name := n.Label
	if name == "" {
		d.errorf(n.Pos, n.Name, "needs a name: %s \"Name\" { ... }", n.Name)
		return false
	}
	if !ValidName(name) {
		d.errorf(n.LabelPos, n.Name, "name %q: use 1 to 64 of A-Z a-z 0-9 . _ - (anything else could inject into Postfix tables)", name)
		return false
	}
	key := strings.ToLower(name)
	if first, dup := d.firstPos[key]; dup {
		d.errorf(n.LabelPos, n.Name, "name %q is already declared at line %d (binding and group names must differ, also in more than letter case)", name, first.Line)
		return false
	}
	d.firstPos[key] = n.LabelPos
	return true
}

// The master.cf services `vipmilter postfix` adds besides the binding
// transports are named Transport_Prefix + these; no binding may take their
// names, so the renderer can rely on them being free.
const (
	CleanupServiceName  = "cleanup"  // pickup's cleanup: local submissions and postsuper -r
	FilteredServiceName = "filtered" // the content filter's re-injection cleanup
)

// stockServices are the master.cf services and transport names of a stock
// Postfix (Debian's master.cf) and "default", whose
// <name>_destination_concurrency_limit is a global parameter: a binding
// transport named like one of them would replace it.
var stockServices = map[string]bool{
	"default": true, "smtp": true, "smtpd": true, "submission": true, "submissions": true,
	"smtps": true, "628": true, "pickup": true, "cleanup": true, "qmgr": true, "oqmgr": true,
	"tlsmgr": true, "rewrite": true, "bounce": true, "defer": true, "trace": true,
	"verify": true, "flush": true, "proxymap": true, "proxywrite": true, "relay": true,
	"showq": true, "error": true, "retry": true, "discard": true, "local": true,
	"virtual": true, "lmtp": true, "anvil": true, "scache": true, "postlog": true,
	"maildrop": true, "uucp": true, "ifmail": true, "bsmtp": true,
	"scalemail-backend": true, "mailman": true, "postscreen": true, "dnsblog": true,
	"tlsproxy": true, "spawn": true, "pipe": true, "virtual-alias": true,
}

// checkTransport refuses a binding whose transport (Transport_Prefix and
// name) would be the name of another master.cf service.
func (d *decoder) checkTransport(n *Node) {
	t := d.cfg.TransportPrefix + n.Label
	switch {
	case n.Label == CleanupServiceName || n.Label == FilteredServiceName:
		d.errorf(n.LabelPos, n.Name, "name %q is reserved: %s is a cleanup service that vipmilter postfix renders", n.Label, t)
	case stockServices[t]:
		d.errorf(n.LabelPos, n.Name, "name %q: its transport %q (Transport_Prefix + name) is a stock Postfix service; rename the binding or change Transport_Prefix", n.Label, t)
	}
}

func (d *decoder) group(n *Node, global *values) {
	if !d.declare(n) {
		return
	}
	if n.Label == DefaultBindingName {
		d.errorf(n.LabelPos, n.Name, "%q is reserved for the fallback binding", DefaultBindingName)
		return
	}
	g := &Group{Name: n.Label, Selection: DefaultSelection, Pos: n.Pos}
	gv := &values{}
	var members []*Node
	d.settings(n.Children, inGroup, gv, func(c *Node) { members = append(members, c) })
	if gv.selection.set {
		g.Selection = gv.selection.v
	}
	for _, m := range members {
		d.binding(m, g, global, gv)
	}
	if len(members) == 0 && !hasStanza(n.Children) {
		d.errorf(n.Pos, n.Name, "group %q has no members (add Binding stanzas inside it)", n.Label)
	}
	d.cfg.Groups = append(d.cfg.Groups, g)
}

func (d *decoder) binding(n *Node, g *Group, global, gv *values) {
	if !d.declare(n) {
		return
	}
	if g != nil && n.Label == DefaultBindingName {
		d.errorf(n.LabelPos, n.Name, "the fallback binding %q must be declared outside any group", DefaultBindingName)
		return
	}
	d.checkTransport(n)
	bv := &values{}
	d.settings(n.Children, inBinding, bv, func(*Node) {})
	b := &Binding{Name: n.Label, Group: g, Pos: n.Pos}

	// Innermost scope wins: binding, then group, then file.
	scopes := []*values{bv}
	if gv != nil {
		scopes = append(scopes, gv)
	}
	scopes = append(scopes, global)
	str := func(get func(*values) setting[string], def string) string {
		for _, s := range scopes {
			if x := get(s); x.set {
				return x.v
			}
		}
		return def
	}
	num := func(get func(*values) setting[int], def int) int {
		for _, s := range scopes {
			if x := get(s); x.set {
				return x.v
			}
		}
		return def
	}
	b.Interface = str(func(v *values) setting[string] { return v.iface }, "")
	b.EHLOHostname = str(func(v *values) setting[string] { return v.ehlo }, DefaultEHLOHostname)
	b.Relay = str(func(v *values) setting[string] { return v.relay }, "")
	b.MaxOutboundConnections = num(func(v *values) setting[int] { return v.moc }, DefaultMaxOutbound)
	b.ServerMaxOutboundConnections = num(func(v *values) setting[int] { return v.smoc }, DefaultServerMaxOutbound)
	pfx4 := num(func(v *values) setting[int] { return v.pfx4 }, DefaultBindPrefix4)
	pfx6 := num(func(v *values) setting[int] { return v.pfx6 }, DefaultBindPrefix6)
	b.SuspendDelivery = DefaultSuspendDelivery
	for _, s := range scopes {
		if s.suspend.set {
			b.SuspendDelivery = s.suspend.v
			break
		}
	}
	b.Weight = DefaultWeight
	if bv.weight.set {
		if g == nil {
			d.errorf(bv.weightPos, "Weight", "only applies to members of a Binding_Group")
		}
		b.Weight = bv.weight.v
	}

	var first4, first6 Pos
	for _, a := range bv.addrs {
		first := &first4
		fam, bits := "IPv4", pfx4
		if a.addr.Is6() {
			first, fam, bits = &first6, "IPv6", pfx6
		}
		if first.Line != 0 {
			d.errorf(a.keyPos, "Bind_Address", "a binding has at most one %s address (the first is at line %d)", fam, first.Line)
			continue
		}
		*first = a.keyPos
		if a.bits >= 0 {
			bits = a.bits
		}
		b.Addresses = append(b.Addresses, netip.PrefixFrom(a.addr, bits))
		if other, dup := d.addrs[a.addr]; dup {
			d.warnf(a.pos, "Bind_Address", "%s is also the address of binding %q (line %d): both leave from the same address", a.addr, other.Name, other.Pos.Line)
		} else {
			d.addrs[a.addr] = b
		}
	}
	if len(b.Addresses) == 0 && !bv.addrWritten && b.Name != DefaultBindingName {
		d.errorf(n.Pos, n.Name, "binding %q has no Bind_Address (only the fallback binding %q may omit it)", b.Name, DefaultBindingName)
	}

	for _, dom := range bv.domains {
		if prev, dup := d.domains[dom.s]; dup {
			d.errorf(dom.pos, "Match_Domain", "%s is already claimed by binding %q at line %d", domainText(dom.s), prev.Name, d.domPos[dom.s].Line)
			continue
		}
		d.domains[dom.s], d.domPos[dom.s] = b, dom.pos
		b.MatchDomains = append(b.MatchDomains, dom.s)
	}

	if b.Interface == "" && slices.ContainsFunc(b.Addresses, func(p netip.Prefix) bool { return !p.Addr().IsLoopback() }) {
		// Loopback addresses are always bindable through lo's local route;
		// any other address may be too (an AnyIP route), which only the
		// provisioner can see, so this stays a warning.
		d.warnf(n.Pos, "Interface", "binding %q has no Interface (in the binding, its group or the file): vipmilter provision cannot add its address unless a local route already covers it", b.Name)
	}

	if b.EHLOHostname == EHLOMessage && len(b.MatchDomains) != 1 {
		d.warnf(n.Pos, "EHLO_Hostname", "binding %q: __message__ (the envelope sender's domain) cannot be honoured: Postfix sets the EHLO name per transport and this binding has %d Match_Domain values; it will greet with $myhostname (__hostname__) instead. Give it exactly one Match_Domain or a literal host name", b.Name, len(b.MatchDomains))
	}

	d.cfg.Bindings = append(d.cfg.Bindings, b)
	if g != nil {
		g.Members = append(g.Members, b)
	}
}

// hasStanza reports whether nodes hold any stanza, so that a group whose
// only member was rejected is not also reported as empty.
func hasStanza(nodes []*Node) bool {
	for _, n := range nodes {
		if n.Block {
			return true
		}
	}
	return false
}
