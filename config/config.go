// Package config reads the vipmilter binding file: a Momentum-style file of
// global settings, Binding stanzas and Binding_Group stanzas. It parses the
// file into a generic tree of nodes that remember their file, line and
// column, then decodes that tree into the typed Config below, so that every
// mistake can be reported as "file:line:column: keyword: problem".
//
// This file holds the typed result and its lookups; parse.go, decode.go and
// errors.go hold the reading.
package config

import (
	"net/netip"
	"strings"
	"time"
)

// DefaultPath is where serve, check, test, postfix and provision look for the
// binding file when neither -c nor VIPMILTER_CONFIG is given.
const DefaultPath = "/etc/vipmilter/vipmilter.conf"

// DefaultBindingName is the name of the binding used as the fallback.
// When no binding of that name is declared, the fallback is Postfix's
// ordinary delivery and the milter still writes "default" so that Postfix
// can tell a decided message from one that never saw the milter.
const DefaultBindingName = "default"

// Special EHLO_Hostname values, as in Momentum.
const (
	EHLOHostname = "__hostname__" // the local host name (Postfix's $myhostname)
	EHLOMessage  = "__message__"  // the domain of the envelope sender
)

// PolicyErrorAction says what happens when the policy cannot place a message.
type PolicyErrorAction string

const (
	PolicyErrorDefault  PolicyErrorAction = "default"  // deliver via the fallback, log an error
	PolicyErrorTempfail PolicyErrorAction = "tempfail" // answer 4xx so the client retries
)

// MilterDownAction is rendered as Postfix's milter_default_action.
type MilterDownAction string

const (
	MilterDownAccept   MilterDownAction = "accept"
	MilterDownTempfail MilterDownAction = "tempfail"
)

// Selection is how a Binding_Group picks one member.
type Selection string

const (
	SelectSticky     Selection = "sticky"      // rendezvous hash of the first recipient's domain, weighted
	SelectRandom     Selection = "random"      // weighted random
	SelectRoundRobin Selection = "round_robin" // in turn
)

// Pos is a place in a binding file.
type Pos struct {
	File string
	Line int
	Col  int
}

// Config is a decoded binding file. It is immutable once Load returns:
// a reload builds a new Config and swaps it in whole.
type Config struct {
	File string // absolute path of the binding file

	MilterListen    Listen            // where the milter listens; default DefaultMilterListen
	SieveScript     string            // absolute path, "" when no script is configured
	BindingHeader   string            // header the milter writes, default "X-Binding"
	OnPolicyError   PolicyErrorAction // default "default"
	OnMilterDown    MilterDownAction  // default "accept"
	MaxBodyBytes    int64             // body bytes the policy may see, default 1 MiB
	TransportPrefix string            // master.cf service name prefix, default "vip_"
	KeepHeader      bool              // Keep_Header_On_Delivery, default false
	MetricsListen   string            // "host:port" for Prometheus metrics, "" = off
	StateDir        string            // provisioner state, default "/var/lib/vipmilter"
	HeaderKeyFile   string            // Binding_Header_Key: the per-install header secret, default DefaultHeaderKeyFile
	// SendmailSocketmap is where serve answers Sendmail's socketmap
	// (queue id → binding); zero when Sendmail is not used.
	SendmailSocketmap Listen
	PolicyListen      Listen // Policy_Listen: the SMTPD policy service socket, default DefaultPolicyListen
	Hook              Hook   // Hook: auto (default), milter or policy

	// Daemon limits. MaxHeaderBytes caps the header bytes (names and
	// values) the milter keeps per message for the policy
	// (Max_Header_Bytes); MaxConnections caps open connections on each
	// listening socket: the milter's, the policy service's and the
	// socketmap's (Max_Connections); IdleTimeout is how long the milter
	// waits for the MTA's next command (Milter_Idle_Timeout), PacketTimeout
	// how long the rest of a packet may take once its first byte came
	// (Milter_Packet_Timeout).
	MaxHeaderBytes int64
	MaxConnections int
	IdleTimeout    time.Duration
	PacketTimeout  time.Duration

	// Bindings holds every binding in file order, group members included.
	Bindings []*Binding
	// Groups holds every group in file order.
	Groups []*Group

	// Warnings are things the file asks for that cannot be honoured exactly
	// (for example EHLO_Hostname = __message__ on a binding whose sender
	// domains are not known). check prints them; serve logs them.
	Warnings []*Error

	bindings map[string]*Binding
	groups   map[string]*Group
	domains  map[string]*Binding // canonical Match_Domain (see Domain) -> binding
}

// Binding is one source identity: a set of addresses (at most one per
// family is used by Postfix), an EHLO name and delivery limits.
type Binding struct {
	Name  string
	Group *Group // nil for a top-level binding

	// Addresses are the Bind_Address values, each with its prefix length
	// (from "addr/len", else Bind_Prefix, else /32 or /128).
	Addresses []netip.Prefix
	Interface string // effective interface: per-binding Interface, else the global one, "" = unset

	EHLOHostname string // EHLOHostname, EHLOMessage or a literal host name; default EHLOHostname

	MaxOutboundConnections       int // per destination domain; default 32
	ServerMaxOutboundConnections int // total for the binding (transport maxproc); 0 = Postfix default
	SuspendDelivery              bool
	MatchDomains                 []string // canonical form (see Domain): lower case, A-labels, no trailing dot
	Weight                       int      // group selection weight, default 1
	Relay                        string   // Postfix next hop for this binding ("" = recipient domain)

	Pos Pos
}

// Group is a named pool of bindings; naming the group in the policy picks
// one live member.
type Group struct {
	Name      string
	Selection Selection
	Members   []*Binding
	Pos       Pos
}

// Binding returns the binding called name (case-sensitive), or nil.
func (c *Config) Binding(name string) *Binding { return c.bindings[name] }

// Group returns the group called name (case-sensitive), or nil.
func (c *Config) Group(name string) *Group { return c.groups[name] }

// Default returns the binding named "default", or nil when none is declared.
func (c *Config) Default() *Binding { return c.bindings[DefaultBindingName] }

// MatchDomain returns the binding whose Match_Domain is domain, or nil.
// domain is a mail domain in any spelling of it: letter case, U-labels or
// A-labels and a trailing dot do not matter ("Müller.Example." finds
// Match_Domain = xn--mller-kva.example); both sides are compared in their
// canonical form, Domain. An address ("u@müller.example") stands for its
// domain.
func (c *Config) MatchDomain(domain string) *Binding {
	if i := strings.LastIndexByte(domain, '@'); i >= 0 {
		domain = domain[i+1:]
	}
	return c.domains[Domain(domain)]
}

// Addr4 returns the binding's IPv4 address, if any.
func (b *Binding) Addr4() (netip.Addr, bool) {
	for _, p := range b.Addresses {
		if p.Addr().Is4() {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// Addr6 returns the binding's IPv6 address, if any.
func (b *Binding) Addr6() (netip.Addr, bool) {
	for _, p := range b.Addresses {
		if p.Addr().Is6() {
			return p.Addr(), true
		}
	}
	return netip.Addr{}, false
}

// index builds the lookup maps; decode calls it once the lists are final.
func (c *Config) index() {
	c.bindings = make(map[string]*Binding, len(c.Bindings))
	c.groups = make(map[string]*Group, len(c.Groups))
	c.domains = make(map[string]*Binding)
	for _, b := range c.Bindings {
		c.bindings[b.Name] = b
		for _, d := range b.MatchDomains {
			c.domains[d] = b
		}
	}
	for _, g := range c.Groups {
		c.groups[g.Name] = g
	}
}
