package config

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseExample(t *testing.T) {
	cfg, err := Load("../examples/vipmilter.conf")
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Warnings) != 0 {
		t.Errorf("example has warnings: %v", cfg.Warnings)
	}
	ex := cfg.Binding("Example")
	if ex == nil || cfg.MatchDomain("EXAMPLE.com") != ex {
		t.Fatalf("Match_Domain example.com does not find binding Example")
	}
	if a, _ := ex.Addr6(); a != netip.MustParseAddr("2001:db8::10") {
		t.Errorf("Example IPv6 = %v", a)
	}
	if ex.MaxOutboundConnections != 20 || cfg.Default() == nil {
		t.Errorf("Example MOC %d, default %v", ex.MaxOutboundConnections, cfg.Default())
	}
	g := cfg.Group("Pool")
	if g == nil || len(g.Members) != 2 || g.Members[0].Weight != 3 || g.Members[1].Weight != 1 || g.Selection != SelectSticky {
		t.Fatalf("group Pool decoded wrong: %+v", g)
	}
	if !filepath.IsAbs(cfg.SieveScript) || filepath.Base(cfg.SieveScript) != "policy.sieve" {
		t.Errorf("Sieve_Script = %q, want absolute path to policy.sieve", cfg.SieveScript)
	}
}

func TestParseValues(t *testing.T) {
	src := `
# Momentum's stanza, pasted unchanged
Binding Example {
  Bind_Address = 10.0.0.1
  Match_Domain = Example.COM
}
bind_prefix = 24
EHLO_HOSTNAME = "out.example.net"
Max_Outbound_Connections = 5
Metrics_Listen = 127.0.0.1:9100
Max_Body_Bytes = 64K
Max_Header_Bytes = 64KiB
Max_Connections = 100
Milter_Idle_Timeout = 10m
Milter_Packet_Timeout = 45
On_Policy_Error = TEMPFAIL
Keep_Header_On_Delivery = yes
Interface = eth0
Binding_Group "G" {
  selection = round_robin
  Suspend_Delivery = true
  Interface = veth1
  Binding "m1" { Bind_Address = 10.0.0.2/28  Weight = 7 }
  Binding "m2" { Bind_Address = "2001:db8::2"  Suspend_Delivery = false  EHLO_Hostname = __message__  Match_Domain = m2.example. }
}
`
	cfg, err := Parse("t.conf", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	ex, m1, m2 := cfg.Binding("Example"), cfg.Binding("m1"), cfg.Binding("m2")
	checks := []struct {
		what      string
		got, want any
	}{
		{"Example prefix from Bind_Prefix", ex.Addresses[0], netip.MustParsePrefix("10.0.0.1/24")},
		{"Match_Domain lower-cased", ex.MatchDomains[0], "example.com"},
		{"EHLO inherited from file", ex.EHLOHostname, "out.example.net"},
		{"MOC inherited from file", m1.MaxOutboundConnections, 5},
		{"explicit /len wins", m1.Addresses[0], netip.MustParsePrefix("10.0.0.2/28")},
		{"weight", m1.Weight, 7},
		{"suspend inherited from group", m1.SuspendDelivery, true},
		{"binding overrides group", m2.SuspendDelivery, false},
		{"interface inherited from group", m2.Interface, "veth1"},
		{"interface inherited from file", ex.Interface, "eth0"},
		{"v6 default prefix", m2.Addresses[0].Bits(), 128},
		{"trailing dot dropped", m2.MatchDomains[0], "m2.example"},
		{"__message__ kept", m2.EHLOHostname, EHLOMessage},
		{"selection", cfg.Group("G").Selection, SelectRoundRobin},
		{"max body", cfg.MaxBodyBytes, int64(64 << 10)},
		{"max header", cfg.MaxHeaderBytes, int64(64 << 10)},
		{"max connections", cfg.MaxConnections, 100},
		{"idle timeout", cfg.IdleTimeout, 10 * time.Minute},
		{"packet timeout in seconds", cfg.PacketTimeout, 45 * time.Second},
		{"policy error", cfg.OnPolicyError, PolicyErrorTempfail},
		{"keep header", cfg.KeepHeader, true},
		{"default listen", cfg.MilterListen.String(), DefaultMilterListen},
		{"no warnings (one Match_Domain)", len(cfg.Warnings), 0},
		{"no default binding", cfg.Default() == nil, true},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.what, c.got, c.want)
		}
	}
}

// TestParseAccepts: values that reach MTA configuration are accepted in
// every form their syntax allows, and stored in canonical form.
func TestParseAccepts(t *testing.T) {
	cases := []struct {
		keyword, value string
		get            func(*Binding) string
		want           string
	}{
		{"EHLO_Hostname", "mta1.Example.com", func(b *Binding) string { return b.EHLOHostname }, "mta1.Example.com"},
		{"EHLO_Hostname", "[192.0.2.1]", func(b *Binding) string { return b.EHLOHostname }, "[192.0.2.1]"},
		{"EHLO_Hostname", "[IPv6:2001:DB8:0::1]", func(b *Binding) string { return b.EHLOHostname }, "[IPv6:2001:db8::1]"},
		{"EHLO_Hostname", "[ipv6:::ffff:192.0.2.1]", func(b *Binding) string { return b.EHLOHostname }, "[IPv6:::ffff:192.0.2.1]"},
		{"EHLO_Hostname", "__HOSTNAME__", func(b *Binding) string { return b.EHLOHostname }, EHLOHostname},
		{"EHLO_Hostname", "mta.Müller.example", func(b *Binding) string { return b.EHLOHostname }, "mta.xn--mller-kva.example"},
		{"Relay", "smarthost.example", func(b *Binding) string { return b.Relay }, "smarthost.example"},
		{"Relay", "smarthost.example:submission", func(b *Binding) string { return b.Relay }, "smarthost.example:submission"},
		{"Relay", "[smarthost.example]:587", func(b *Binding) string { return b.Relay }, "[smarthost.example]:587"},
		{"Relay", "[192.0.2.25]", func(b *Binding) string { return b.Relay }, "[192.0.2.25]"},
		{"Relay", "[ipv6:2001:db8::25]:25", func(b *Binding) string { return b.Relay }, "[ipv6:2001:db8::25]:25"},
		{"Relay", "[2001:db8::25]", func(b *Binding) string { return b.Relay }, "[2001:db8::25]"},
		{"Match_Domain", "müller.example", func(b *Binding) string { return b.MatchDomains[0] }, "xn--mller-kva.example"},
		{"Match_Domain", "XN--MLLER-KVA.Example.", func(b *Binding) string { return b.MatchDomains[0] }, "xn--mller-kva.example"},
		{"Match_Domain", "Example.COM.", func(b *Binding) string { return b.MatchDomains[0] }, "example.com"},
	}
	for _, c := range cases {
		t.Run(c.keyword+"="+c.value, func(t *testing.T) {
			src := `Binding "A" { Bind_Address = 10.0.0.1 Interface = eth0 ` + c.keyword + ` = "` + c.value + `" }`
			cfg, err := Parse("t.conf", []byte(src))
			if err != nil {
				t.Fatal(err)
			}
			if got := c.get(cfg.Binding("A")); got != c.want {
				t.Errorf("got %q, want %q", got, c.want)
			}
		})
	}
}

// TestMatchDomainSpellings: U-labels and A-labels, letter case and a
// trailing dot name the same domain, on both sides of the lookup.
func TestMatchDomainSpellings(t *testing.T) {
	for _, written := range []string{"müller.example", "xn--mller-kva.example", "MÜLLER.example."} {
		cfg, err := Parse("t.conf", []byte(`Binding "A" { Bind_Address = 10.0.0.1 Match_Domain = "`+written+`" Match_Domain = Example.COM }`))
		if err != nil {
			t.Fatal(err)
		}
		a := cfg.Binding("A")
		for _, lookup := range []string{"müller.example", "xn--mller-kva.example", "Müller.Example.", "XN--MLLER-KVA.EXAMPLE", "u@müller.example", "u@xn--mller-kva.example.", "Example.COM.", "example.com", "u@Example.COM."} {
			if cfg.MatchDomain(lookup) != a {
				t.Errorf("Match_Domain %q: MatchDomain(%q) does not find binding A", written, lookup)
			}
		}
		for _, other := range []string{"muller.example", "example.com.example", "xn--mller-kva.example.com", "", "müller.example@other.example", "u@"} {
			if b := cfg.MatchDomain(other); b != nil {
				t.Errorf("Match_Domain %q: MatchDomain(%q) = %q, want none", written, other, b.Name)
			}
		}
	}
}

// TestDefaultsAsWritten: writing a keyword with the default that the
// reference documents decodes to the same Config as leaving it out, so
// docs/config.md tells the truth about the decoder.
func TestDefaultsAsWritten(t *testing.T) {
	// The slot a keyword is written in is the first its scopes allow;
	// stanza positions do not move, since each slot comes after the
	// stanza's own position.
	const base = `Binding_Group "G" { Binding "m" { Bind_Address = 10.0.0.1 Bind_Address = 2001:db8::1 Interface = eth0 %s } %s }
%s
`
	parse := func(global, group, binding string) *Config {
		t.Helper()
		cfg, err := Parse("t.conf", fmt.Appendf(nil, base, binding, group, global))
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	want := parse("", "", "")
	tested := 0
	for _, k := range keywords {
		if k.Default == "" {
			continue
		}
		tested++
		line := k.Name + ` = "` + k.Default + `"`
		var got *Config
		switch {
		case k.Scopes&inGlobal != 0:
			got = parse(line, "", "")
		case k.Scopes&inGroup != 0:
			got = parse("", line, "")
		default:
			got = parse("", "", line)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: writing the documented default %q changes the decoded Config", k.Name, k.Default)
		}
	}
	if tested < 10 {
		t.Fatalf("only %d keywords have a default", tested)
	}
	// The daemon limits' defaults live here, not in the packages using them.
	for _, name := range []string{"Max_Header_Bytes", "Max_Connections", "Milter_Idle_Timeout", "Milter_Packet_Timeout"} {
		if lookupKeyword(name).Default == "" {
			t.Errorf("%s has no documented default", name)
		}
	}
	for _, c := range []struct{ got, want any }{
		{want.MaxHeaderBytes, int64(DefaultMaxHeaderBytes)},
		{want.MaxConnections, DefaultMaxConnections},
		{want.IdleTimeout, DefaultMilterIdleTimeout},
		{want.PacketTimeout, DefaultMilterPacketTimeout},
	} {
		if c.got != c.want {
			t.Errorf("unwritten limit decodes to %v, want the default %v", c.got, c.want)
		}
	}
}

func TestParseWarnings(t *testing.T) {
	cases := []struct {
		name, src, want string
		noIface         bool // leave out the file-level Interface the other cases get
	}{
		{"no interface", `Binding "A" { Bind_Address = 10.0.0.1 }  Binding "default" { }`, `t.conf:1:1: Interface: binding "A" has no Interface`, true},
		{"loopback needs no interface", `Binding "A" { Bind_Address = 127.0.0.6 } Binding "B" { Bind_Address = ::1 }`, "", true},
		{"interface from group", `Binding_Group "G" { Interface = eth1 Binding "A" { Bind_Address = 10.0.0.1 } } Binding "B" { Bind_Address = 10.0.0.2 }`, `t.conf:1:80: Interface: binding "B" has no Interface`, true},
		{"message without domain", `Binding "A" { Bind_Address = 10.0.0.1 EHLO_Hostname = __message__ }`, "t.conf:1:1: EHLO_Hostname: binding \"A\": __message__", false},
		{"message with two domains", "Binding \"A\" {\n Bind_Address = 10.0.0.1\n EHLO_Hostname = __MESSAGE__\n Match_Domain = a.example\n Match_Domain = b.example }", "has 2 Match_Domain values", false},
		{"shared address", `Binding "A" { Bind_Address = 10.0.0.1 } Binding "B" { Bind_Address = 10.0.0.1 }`, `t.conf:1:70: Bind_Address: 10.0.0.1 is also the address of binding "A"`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := c.src
			if !c.noIface {
				src += " Interface = eth0"
			}
			cfg, err := Parse("t.conf", []byte(src))
			if err != nil {
				t.Fatal(err)
			}
			if c.want == "" {
				if len(cfg.Warnings) != 0 {
					t.Fatalf("warnings %v, want none", cfg.Warnings)
				}
				return
			}
			if len(cfg.Warnings) != 1 || !strings.Contains(cfg.Warnings[0].Error(), c.want) {
				t.Fatalf("warnings %v, want one containing %q", cfg.Warnings, c.want)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	script := filepath.Join(t.TempDir(), "p.sieve")
	if err := os.WriteFile(script, []byte("keep;\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	b := func(body string) string { return `Binding "A" { Bind_Address = 10.0.0.1 ` + body + " }" }
	cases := []struct {
		name, src string
		want      string // substring of the single error, including file:line:col
	}{
		// syntax
		{"unterminated string", `Binding_Header = "X-B`, `t.conf:1:18: Binding_Header: unterminated quoted string`},
		// characters no value may hold, wherever they are
		{"CR in quoted value", "Binding \"A\" {\n Bind_Address = 10.0.0.1\n EHLO_Hostname = \"a.example\r-o\rsmtp_bind_address=192.0.2.99\" }", `t.conf:3:28: EHLO_Hostname: control character U+000D is not allowed`},
		{"NUL in bare value", "Binding_Header = X-B\x00inding", `t.conf:1:21: Binding_Header: control character U+0000 is not allowed`},
		{"tab in quoted value", "Binding_Header = \"X\tB\"", `t.conf:1:20: Binding_Header: control character U+0009`},
		{"C1 control", "Binding_Header = \"X\u0085B\"", `t.conf:1:20: Binding_Header: control character U+0085`},
		{"DEL in label", "Binding \"A\x7f\" { }", `t.conf:1:11: Binding: control character U+007F`},
		{"malformed UTF-8", "Binding_Header = X\xffB", `t.conf:1:19: Binding_Header: malformed UTF-8`},
		{"control in keyword", "Bind\x01 = 1", `t.conf:1:5: control character U+0001`},
		{"escaped CR", "Binding_Header = \"X\\\rB\"", `t.conf:1:21: Binding_Header: control character U+000D`},
		{"unclosed stanza", "Binding \"A\" {\n Bind_Address = 10.0.0.1\n", `t.conf:1:13: Binding: "{" is never closed`},
		{"stray close", "}", `t.conf:1:1: unexpected "}"`},
		{"missing value", "Binding_Header =\n}", `t.conf:2:1: Binding_Header: expected a value`},
		{"missing equals", "Binding_Header X-B", `t.conf:1:16: Binding_Header: expected "=" before "X-B"`},
		{"label without brace", `Binding "A" Bind_Address = 1`, `t.conf:1:13: Binding "A": expected "{"`},
		{"too deep", `Binding_Group "G" { Binding "A" { Binding "B" { } } }`, `t.conf:1:35: Binding: stanzas nest at most two deep`},
		{"a forgotten brace names the open stanzas", "Binding \"N\" {\n  Bind_Address = 192.0.2.1\nBinding_Group \"P\" {\n  Binding \"P1\" { Bind_Address = 192.0.2.2 }\n}\n}\n",
			`t.conf:4:3: Binding: stanzas nest at most two deep (Binding_Group > Binding), and this one is inside Binding "N" (line 1) > Binding_Group "P" (line 3): is a "}" missing?`},
		// keywords
		{"unknown keyword suggests", "Bind_Adress = 10.0.0.1", `t.conf:1:1: Bind_Adress: unknown keyword; did you mean Bind_Address?`},
		{"unknown keyword far", "Frobnicate = 1", `t.conf:1:1: Frobnicate: unknown keyword`},
		{"unknown in binding", b("Max_Outbound_Conections = 3"), `t.conf:1:39: Max_Outbound_Conections: unknown keyword; did you mean Max_Outbound_Connections?`},
		{"wrong scope", b("Milter_Listen = inet:127.0.0.1:1"), `Milter_Listen: not allowed in a Binding (allowed in: file)`},
		{"selection outside group", "Selection = random", `t.conf:1:1: Selection: not allowed in the file's global settings`},
		{"setting as stanza", `Bind_Prefix { }`, `t.conf:1:1: Bind_Prefix: is a setting`},
		{"stanza as setting", `Binding = A`, `t.conf:1:1: Binding: is a stanza`},
		{"set twice", "Binding_Header = X-A\nbinding_header = X-B", `t.conf:2:1: binding_header: set twice in the same the file's global settings (first at line 1)`},
		// names
		{"no name", `Binding { Bind_Address = 10.0.0.1 }`, `t.conf:1:1: Binding: needs a name`},
		{"injecting name", `Binding "a b$" { Bind_Address = 10.0.0.1 }`, `t.conf:1:9: Binding: name "a b$": use 1 to 64`},
		{"long name", `Binding "` + strings.Repeat("a", 65) + `" { Bind_Address = 10.0.0.1 }`, `use 1 to 64`},
		{"duplicate binding", "Binding \"A\" { Bind_Address = 10.0.0.1 }\nBinding \"A\" { Bind_Address = 10.0.0.2 }", `t.conf:2:9: Binding: name "A" is already declared at line 1`},
		{"names differ in case only", "Binding \"A\" { Bind_Address = 10.0.0.1 }\nBinding \"a\" { Bind_Address = 10.0.0.2 }", `name "a" is already declared at line 1`},
		{"group named like binding", "Binding \"A\" { Bind_Address = 10.0.0.1 }\nBinding_Group \"A\" { Binding \"B\" { Bind_Address = 10.0.0.2 } }", `t.conf:2:15: Binding_Group: name "A" is already declared`},
		{"empty group", `Binding_Group "G" { Selection = random }`, `t.conf:1:1: Binding_Group: group "G" has no members`},
		{"group named default", `Binding_Group "default" { Binding "B" { Bind_Address = 10.0.0.2 } }`, `"default" is reserved`},
		{"default in group", `Binding_Group "G" { Binding "default" { Bind_Address = 10.0.0.2 } }`, `must be declared outside any group`},
		{"group in group", `Binding_Group "G" { Binding_Group "H" { } }`, `Binding_Group: not allowed in a Binding_Group`},
		// addresses
		{"no address", `Binding "A" { Match_Domain = a.example }`, `t.conf:1:1: Binding: binding "A" has no Bind_Address`},
		{"bad address", `Binding "A" { Bind_Address = 10.0.0.300 }`, `t.conf:1:30: Bind_Address: "10.0.0.300": not an IPv4 or IPv6 address`},
		{"bad prefix", `Binding "A" { Bind_Address = 10.0.0.1/33 }`, `prefix length must be from 1 to 32`},
		{"non-numeric prefix", `Binding "A" { Bind_Address = 10.0.0.1/x }`, `prefix length "x" is not a number`},
		{"unspecified", `Binding "A" { Bind_Address = 0.0.0.0 }`, `unspecified or multicast`},
		{"multicast v6", `Binding "A" { Bind_Address = ff02::1 }`, `unspecified or multicast`},
		{"link-local v6", `Binding "A" { Bind_Address = fe80::1 }`, `link-local`},
		{"zone", `Binding "A" { Bind_Address = 2001:db8::1%eth0 }`, `zones are not allowed`},
		{"zone with injection", "Binding \"A\" { Bind_Address = \"2001:db8::1%x-o smtp_bind_address=192.0.2.99\" }", `t.conf:1:30: Bind_Address: "2001:db8::1%x-o smtp_bind_address=192.0.2.99": zones are not allowed`},
		{"two v4", "Binding \"A\" {\n Bind_Address = 10.0.0.1\n Bind_Address = 10.0.0.2 }", `t.conf:3:2: Bind_Address: a binding has at most one IPv4 address (the first is at line 2)`},
		{"bad Bind_Prefix", "Bind_Prefix = 0", `t.conf:1:15: Bind_Prefix: "0": want a whole number from 1 to 32`},
		{"bad Bind_Prefix6", "Bind_Prefix6 = 129", `Bind_Prefix6: "129": want a whole number from 1 to 128`},
		{"bad interface", "Interface = eth0:1", `Interface: "eth0:1": not a Linux interface name`},
		{"long interface", b("Interface = abcdefghijklmnop"), `not a Linux interface name`},
		// domains
		{"domain claimed twice", "Binding \"A\" { Bind_Address = 10.0.0.1 Match_Domain = x.example }\nBinding \"B\" { Bind_Address = 10.0.0.2 Match_Domain = X.Example }", `t.conf:2:54: Match_Domain: x.example is already claimed by binding "A" at line 1`},
		{"domain twice in binding", b("Match_Domain = x.example Match_Domain = x.example"), `is listed twice in this binding`},
		{"bad domain", b("Match_Domain = a..example"), `Match_Domain: "a..example": not a domain name`},
		{"U-label and A-label claimed twice", "Binding \"A\" { Bind_Address = 10.0.0.1 Match_Domain = müller.example }\nBinding \"B\" { Bind_Address = 10.0.0.2 Match_Domain = XN--MLLER-KVA.example. }", `t.conf:2:54: Match_Domain: müller.example (xn--mller-kva.example) is already claimed by binding "A" at line 1`},
		{"IDN listed twice in binding", b("Match_Domain = müller.example Match_Domain = xn--mller-kva.example"), `is listed twice in this binding`},
		{"invalid A-label", b("Match_Domain = xn--zz.example"), `Match_Domain: "xn--zz.example": not a domain name`},
		{"disallowed rune", b("Match_Domain = \"\u202eevil.example\""), `not a domain name`},
		{"domain with dollar", b("Match_Domain = $myorigin"), `not a domain name`},
		{"domain with comma", b("Match_Domain = a.example,b.example"), `not a domain name`},
		// host names and values
		{"bad EHLO", b("EHLO_Hostname = -bad-.example"), `EHLO_Hostname: "-bad-.example": not a valid host name`},
		{"EHLO with space", b(`EHLO_Hostname = "a b"`), `not a valid host name`},
		{"EHLO attack from issue 10", b("EHLO_Hostname = \"[IPv6:fe80::1%x\\r-o\\rsmtp_bind_address=192.0.2.99\\r-o\\rsmtp_bind_address_enforce=no\\r-o\\rx=]\""), `t.conf:1:55: EHLO_Hostname: "[IPv6:fe80::1%xr-orsmtp_bind_address=192.0.2.99r-orsmtp_bind_address_enforce=nor-orx=]": not an address literal`},
		{"EHLO attack with raw CRs", b("EHLO_Hostname = \"[IPv6:fe80::1%x\r-o\rsmtp_bind_address=192.0.2.99\r-o\rsmtp_bind_address_enforce=no\r-o\rx=]\""), `t.conf:1:71: EHLO_Hostname: control character U+000D is not allowed`},
		{"EHLO zone", b(`EHLO_Hostname = "[IPv6:fe80::1%eth0]"`), `not an address literal`},
		{"EHLO IPv6 without tag", b(`EHLO_Hostname = "[2001:db8::1]"`), `not an address literal`},
		{"EHLO IPv4 with IPv6 tag", b(`EHLO_Hostname = "[IPv6:192.0.2.1]"`), `not an address literal`},
		{"EHLO unclosed literal", b(`EHLO_Hostname = "[192.0.2.1"`), `not an address literal`},
		{"EHLO dollar", b(`EHLO_Hostname = $myhostname`), `not a valid host name`},
		{"EHLO braces", b(`EHLO_Hostname = "{a}"`), `not a valid host name`},
		{"EHLO comma", b(`EHLO_Hostname = a.example,b.example`), `not a valid host name`},
		{"bad MOC", b("Max_Outbound_Connections = many"), `Max_Outbound_Connections: "many": want a whole number from 0 to 10000`},
		{"negative SMOC", b("Server_Max_Outbound_Connections = -1"), `Server_Max_Outbound_Connections: "-1"`},
		{"bad bool", b("Suspend_Delivery = maybe"), `Suspend_Delivery: "maybe": want true or false`},
		{"weight outside group", b("Weight = 2"), `Weight: only applies to members of a Binding_Group`},
		{"weight range", `Binding_Group "G" { Binding "B" { Bind_Address = 10.0.0.2 Weight = 0 } }`, `Weight: "0": want a whole number from 1 to 1000`},
		{"bad selection", `Binding_Group "G" { Selection = lru Binding "B" { Bind_Address = 10.0.0.2 } }`, `Selection: "lru": want sticky, random or round_robin`},
		{"bad relay", b("Relay = \"[smarthost.example:587\""), `Relay: "[smarthost.example:587": missing ']'`},
		{"relay with comma", b("Relay = a.example,b.example"), `Relay: "a.example,b.example"`},
		{"relay zone", b(`Relay = "[fe80::1%eth0]:25"`), `Relay: "[fe80::1%eth0]:25": an address with a zone`},
		{"relay zone injection", b(`Relay = "[fe80::1%x-o]"`), `an address with a zone`},
		{"relay ipv6 tag on IPv4", b(`Relay = "[ipv6:192.0.2.1]"`), `[ipv6:...] needs an IPv6 address`},
		{"relay dollar", b(`Relay = "$relayhost"`), `Relay: "$relayhost": not a host name`},
		{"relay dollar in brackets", b(`Relay = "[$relayhost]"`), `not a host name or address inside [ ]`},
		{"relay braces", b(`Relay = "{a}"`), `not a host name`},
		{"relay junk after bracket", b(`Relay = "[a.example]x"`), `want [host]:port`},
		{"relay bad port", b(`Relay = "a.example:0"`), `port must be from 1 to 65535`},
		{"relay empty port", b(`Relay = "a.example:"`), `port must be a number or service name`},
		{"relay port with dollar", b(`Relay = "[a.example]:$x"`), `port must be a number or service name`},
		{"bad listen", "Milter_Listen = tcp:1.2.3.4:5", `Milter_Listen: "tcp:1.2.3.4:5": unknown socket type`},
		{"relative unix", "Milter_Listen = unix:milter.sock", `needs an absolute path`},
		{"unix path with dollar", "Milter_Listen = unix:/run/$x/milter.sock", `Milter_Listen: "unix:/run/$x/milter.sock": a unix socket needs an absolute path without spaces`},
		{"unix path with comma", "Milter_Listen = unix:/run/a,inet:1.2.3.4:5", `a unix socket needs an absolute path`},
		{"unix path with braces", "Milter_Listen = \"unix:/run/{a}\"", `a unix socket needs an absolute path`},
		{"unix path with space", "Milter_Listen = \"unix:/run/a b\"", `a unix socket needs an absolute path`},
		{"inet zone", "Milter_Listen = \"inet:[fe80::1%eth0]:8894\"", `an address with a zone cannot be written`},
		{"bad port", "Milter_Listen = inet:127.0.0.1:99999", `port must be a number from 1 to 65535`},
		{"bad header", "Binding_Header = X_Binding", `Binding_Header: "X_Binding": a header name`},
		{"standard header", "Binding_Header = From", `is a standard header`},
		{"missing script", "Sieve_Script = nope.sieve", `t.conf:1:16: Sieve_Script: cannot read the script`},
		{"bad on_policy_error", "On_Policy_Error = reject", `On_Policy_Error: "reject": want default or tempfail`},
		{"bad on_milter_down", "On_Milter_Down = reject", `want accept or tempfail`},
		{"bad body size", "Max_Body_Bytes = 2G", `Max_Body_Bytes: "2G": want a size`},
		{"header size below 1K", "Max_Header_Bytes = 100", `t.conf:1:20: Max_Header_Bytes: "100": want a size from 1K to 1G bytes`},
		{"header size negative", "Max_Header_Bytes = -1M", `Max_Header_Bytes: "-1M": want a size`},
		{"no connections", "Max_Connections = 0", `t.conf:1:19: Max_Connections: "0": want a whole number from 1 to 1000000`},
		{"idle timeout unit", "Milter_Idle_Timeout = 5x", `t.conf:1:23: Milter_Idle_Timeout: "5x": want a time from 1s to 1w`},
		{"idle timeout zero", "Milter_Idle_Timeout = 0s", `Milter_Idle_Timeout: "0s": want a time`},
		{"packet timeout too long", "\nMilter_Packet_Timeout = 2h", `t.conf:2:25: Milter_Packet_Timeout: "2h": want a time from 1s to 1h`},
		{"packet timeout Go syntax", "Milter_Packet_Timeout = 1m30s", `Milter_Packet_Timeout: "1m30s": want a time`},
		{"bad transport prefix", "Transport_Prefix = 1vip", `Transport_Prefix: "1vip"`},
		{"transport prefix with dollar", "Transport_Prefix = $vip", `Transport_Prefix: "$vip"`},
		{"binding named cleanup", `Binding "cleanup" { Bind_Address = 10.0.0.1 }`, `t.conf:1:9: Binding: name "cleanup" is reserved: vip_cleanup is a cleanup service`},
		{"binding named filtered", `Binding_Group "G" { Binding "filtered" { Bind_Address = 10.0.0.1 } }`, `t.conf:1:29: Binding: name "filtered" is reserved: vip_filtered is a cleanup service`},
		{"transport is stock smtp", "Transport_Prefix = s\nBinding \"mtp\" { Bind_Address = 10.0.0.1 }", `t.conf:2:9: Binding: name "mtp": its transport "smtp" (Transport_Prefix + name) is a stock Postfix service`},
		{"transport is default", "Transport_Prefix = de\nBinding_Group \"G\" { Binding \"fault\" { Bind_Address = 10.0.0.1 } }", `t.conf:2:29: Binding: name "fault": its transport "default"`},
		{"relative state dir", "State_Dir = state", `State_Dir: "state": want an absolute path`},
		{"bad metrics", "Metrics_Listen = 9100", `Metrics_Listen: "9100": want host:port`},
		{"script ok but value bad", "Sieve_Script = " + script + "\nOn_Policy_Error = x", `t.conf:2:19:`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse("t.conf", []byte(c.src))
			if err == nil {
				t.Fatalf("no error, got config with %d bindings", len(cfg.Bindings))
			}
			var list ErrorList
			if !errors.As(err, &list) {
				t.Fatalf("error is %T, want ErrorList: %v", err, err)
			}
			if len(list) != 1 {
				t.Errorf("got %d errors, want 1:\n%v", len(list), err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error\n  %v\nwant it to contain\n  %s", err, c.want)
			}
		})
	}
}

// TestParseAllErrorsAtOnce: an administrator fixing a file sees every
// problem in one run, not one per run.
func TestParseAllErrorsAtOnce(t *testing.T) {
	src := "Bind_Adress = 1\nBinding \"A\" { Bind_Address = x }\nBinding \"B\" { Weight = 2 }\n"
	_, err := Parse("t.conf", []byte(src))
	var list ErrorList
	if !errors.As(err, &list) || len(list) != 4 {
		t.Fatalf("want 4 errors, got %v", err)
	}
	for i, line := range []string{"t.conf:1:", "t.conf:2:", "t.conf:3:", "t.conf:3:"} {
		if !strings.HasPrefix(list[i].Error(), line) {
			t.Errorf("error %d = %q, want prefix %q", i, list[i], line)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load(filepath.Join(t.TempDir(), "none.conf"))
	if err == nil || !strings.Contains(err.Error(), "none.conf") {
		t.Fatalf("Load of a missing file: %v", err)
	}
}

// TestReferenceUpToDate keeps docs/config.md generated from the keyword
// table: run "go generate ./config" after changing keywords.go.
func TestReferenceUpToDate(t *testing.T) {
	got, err := os.ReadFile("../docs/config.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, Reference()) {
		t.Fatal("docs/config.md is stale: run go generate ./config")
	}
	for _, k := range keywords {
		if k.Doc == "" || k.Values == "" {
			t.Errorf("keyword %s has no documentation", k.Name)
		}
	}
}

func FuzzParse(f *testing.F) {
	seed, _ := os.ReadFile("../examples/vipmilter.conf")
	f.Add(seed)
	f.Add([]byte(`Binding "A" { Bind_Address = 10.0.0.1/24 Match_Domain = a.example EHLO_Hostname = __message__ }`))
	f.Add([]byte("Binding_Group \"G\" { Selection = random Binding \"m\" { Bind_Address = ::1 Weight = 3 } }\n# c\n"))
	f.Add([]byte(`Binding "A" { Bind_Address = 10.0.0.1 Relay = "[ipv6:2001:db8::1]:25" EHLO_Hostname = "[IPv6:2001:db8::2]" Match_Domain = "müller.example." }`))
	f.Add([]byte("Milter_Listen = unix:/var/spool/postfix/m.sock\nBinding \"A\" { Bind_Address = 10.0.0.1 EHLO_Hostname = \"[192.0.2.1]\" Relay = a.example:smtp }"))
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := Parse("f.conf", src)
		if err != nil {
			var list ErrorList
			if !errors.As(err, &list) || len(list) == 0 {
				t.Fatalf("error is not a non-empty ErrorList: %v", err)
			}
			for _, e := range list {
				if e.Pos.Line < 1 || e.Pos.Col < 1 || !strings.HasPrefix(e.Error(), "f.conf:") {
					t.Fatalf("error without a position: %q", e)
				}
			}
			return
		}
		// What decodes must be safe to hand to Postfix.
		for _, b := range cfg.Bindings {
			if !ValidName(b.Name) || cfg.Binding(b.Name) != b {
				t.Fatalf("binding %q not valid or not indexed", b.Name)
			}
			if len(b.Addresses) == 0 && b.Name != DefaultBindingName {
				t.Fatalf("binding %q without address", b.Name)
			}
			for _, d := range b.MatchDomains {
				if Domain(d) != d || cfg.MatchDomain(d) != b || cfg.MatchDomain(DomainUnicode(d)+".") != b {
					t.Fatalf("domain %q is not canonical or maps to the wrong binding", d)
				}
			}
			// Values written into MTA configuration: one word, taken
			// literally by Postfix and Sendmail.
			for what, v := range map[string]string{"name": b.Name, "EHLO": b.EHLOHostname, "relay": b.Relay, "domains": strings.Join(b.MatchDomains, "."), "transport": cfg.TransportPrefix + b.Name} {
				if strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r >= 0x7f || strings.ContainsRune("${},%\"'\\#;=", r) }) {
					t.Fatalf("binding %q: %s %q cannot be written into MTA configuration", b.Name, what, v)
				}
			}
			for _, a := range b.Addresses {
				if a.Addr().Zone() != "" {
					t.Fatalf("binding %q: address %s has a zone", b.Name, a)
				}
			}
		}
		if l := cfg.MilterListen.String(); strings.ContainsFunc(l, func(r rune) bool { return r <= ' ' || r >= 0x7f || strings.ContainsRune("${},", r) }) {
			t.Fatalf("Milter_Listen %q cannot be written into main.cf", l)
		}
		for _, g := range cfg.Groups {
			if len(g.Members) == 0 {
				t.Fatalf("group %q without members", g.Name)
			}
		}
	})
}
