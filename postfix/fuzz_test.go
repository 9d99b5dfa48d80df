package postfix

import (
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

// FuzzRender: whatever the binding file says, when config accepts it,
// Render accepts it too, and the configuration it renders reads back, the
// way Postfix reads it, as exactly the entries intended for it: each
// binding's master.cf service has the expected fields and -o overrides
// with the binding's values, its header check is the first rule that
// matches its header, its sender map lines are its Match_Domain values,
// and no value can split a line or start another setting.
func FuzzRender(f *testing.F) {
	if seed, err := os.ReadFile("../examples/vipmilter.conf"); err == nil {
		f.Add(seed)
	}
	for _, s := range []string{
		`Binding "default" { Bind_Address = 192.0.2.1 Bind_Address = 2001:db8::1 EHLO_Hostname = "[IPv6:2001:db8::1]" }`,
		`Binding"default"{}`,
		`Binding "default" { EHLO_Hostname = out.example Relay = "[192.0.2.25]" Match_Domain = d.example }  Binding "a" { Bind_Address = 192.0.2.2 }`,
		`Binding "default" { Bind_Address = 192.0.2.1 }  Binding "a" { Bind_Address = 192.0.2.2 Relay = "[ipv6:2001:db8::25]:587" Match_Domain = müller.example }`,
		`Binding "a.b_c" { Bind_Address = 2001:db8::10 EHLO_Hostname = __message__ Match_Domain = Example.COM. Max_Outbound_Connections = 1 }`,
		"Transport_Prefix = out-\nBinding_Header = X-Out\nKeep_Header_On_Delivery = yes\n" +
			`Binding_Group "G" { Suspend_Delivery = yes Binding "m1" { Bind_Address = 192.0.2.3 Weight = 2 } Binding "m2" { Bind_Address = 192.0.2.4 Suspend_Delivery = no Relay = smarthost.example:submission } }`,
		`Binding "x" { Bind_Address = 192.0.2.5 EHLO_Hostname = "[IPv6:fe80::1%x` + "\r-o\rsmtp_bind_address=192.0.2.99\r-o\rx=]\" }",
		`Binding "x" { Bind_Address = "192.0.2.5" Relay = "[fe80::1%x -o smtp_bind_address=192.0.2.99]" }`,
		"Milter_Listen = unix:/var/spool/postfix/vipmilter/milter.sock\n" + `Binding "u" { Bind_Address = 192.0.2.6 Server_Max_Outbound_Connections = 7 EHLO_Hostname = "[192.0.2.6]" }`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, src []byte) {
		cfg, err := config.Parse("/etc/vipmilter/vipmilter.conf", src)
		if err != nil {
			return // config's own fuzz target checks its errors
		}
		plan, err := Render(cfg, Options{ConfigDir: "/etc/postfix", QueueDir: "/var/spool/postfix"})
		if err != nil {
			t.Fatalf("config accepted the file but Render refused it: %v\n%s", err, src)
		}
		checkRendered(t, cfg, plan)
	})
}

// checkRendered reads plan back and compares it with what cfg intends.
func checkRendered(t *testing.T, cfg *config.Config, plan *Plan) {
	t.Helper()
	for _, m := range plan.Main {
		if !postfixWord(m.Name) || hasControl(m.Value) {
			t.Fatalf("main.cf parameter %q = %q would not read back as one setting", m.Name, m.Value)
		}
	}
	for _, p := range plan.ServiceParams {
		if !postfixWord(p.Name) || !safeValue(p.Value) {
			t.Fatalf("master.cf override %s = %q would not read back as one setting", p.Key(), p.Value)
		}
	}
	services := map[string]Service{}
	for _, s := range plan.Services {
		if _, dup := services[s.Key()]; dup {
			t.Fatalf("service %s rendered twice", s.Key())
		}
		services[s.Key()] = s
	}
	tables := map[string]string{}
	for _, tb := range plan.Tables {
		tables[tb.Path] = tb.Content
	}
	rules := parseRegexpTable(t, tables["/etc/postfix/"+HeaderChecksFile])
	senders := parseHashTable(t, tables["/etc/postfix/"+SenderTransportFile])

	wantSenders := map[string]string{}
	for _, b := range cfg.Bindings {
		transport := cfg.TransportPrefix + b.Name
		target := transport + ":" + b.Relay
		// A default binding without an address of its own is Postfix's
		// ordinary delivery: no transport of its own.
		ordinary := b.Name == config.DefaultBindingName && len(b.Addresses) == 0
		if ordinary {
			target = "smtp:" + b.Relay
		}
		for _, d := range b.MatchDomains {
			wantSenders["@"+d] = target
		}

		// The binding's header is routed by the first rule matching it,
		// and that rule is the binding's.
		header := cfg.BindingHeader + ": " + b.Name
		if r := firstMatch(rules, header); r == nil || r.action != "FILTER "+target {
			t.Fatalf("header %q: first matching header check is %+v, want FILTER %s", header, r, target)
		}

		s, ok := services[transport+"/unix"]
		if ordinary {
			if ok {
				t.Fatalf("default binding without an address: service %s rendered", transport)
			}
			continue
		}
		if b.SuspendDelivery {
			if ok || !slices.Contains(plan.Suspended, transport) {
				t.Fatalf("suspended binding %q: service rendered %v, listed as suspended %v", b.Name, ok, plan.Suspended)
			}
			continue
		}
		if !ok {
			t.Fatalf("binding %q: no master.cf service %s", b.Name, transport)
		}
		fields, overrides := parseService(t, s.Line)
		if fields[0] != transport || fields[1] != "unix" || fields[7] != "smtp" {
			t.Fatalf("binding %q: service fields %q", b.Name, fields)
		}
		if maxproc := strconv.Itoa(b.ServerMaxOutboundConnections); b.ServerMaxOutboundConnections > 0 && fields[6] != maxproc || b.ServerMaxOutboundConnections == 0 && fields[6] != "-" {
			t.Fatalf("binding %q: maxproc %q, want %d", b.Name, fields[6], b.ServerMaxOutboundConnections)
		}
		want := intendedOverrides(b, transport)
		for name, v := range want {
			if overrides[name] != v {
				t.Fatalf("binding %q: -o %s=%q, want %q (line %q)", b.Name, name, overrides[name], v, s.Line)
			}
		}
		for _, name := range []string{"smtp_bind_address", "smtp_bind_address6", "smtp_helo_name"} {
			if _, intended := want[name]; !intended {
				if v, ok := overrides[name]; ok {
					t.Fatalf("binding %q: unintended -o %s=%s", b.Name, name, v)
				}
			}
		}
		limit := transport + "_destination_concurrency_limit"
		if got := mainValues(plan, limit); len(got) != 1 || got[0] != strconv.Itoa(b.MaxOutboundConnections) {
			t.Fatalf("binding %q: %s = %q, want %d", b.Name, limit, got, b.MaxOutboundConnections)
		}
	}

	// Mail Postfix makes itself leaves from the default binding's
	// addresses, and only from them.
	smtp := map[string]string{}
	for _, p := range plan.ServiceParams {
		if p.Service == "smtp/unix" {
			smtp[p.Name] = p.Value
		}
	}
	var wantSMTP map[string]string
	if d := cfg.Default(); d != nil && len(d.Addresses) > 0 {
		wantSMTP = intendedOverrides(d, "")
	} else if d != nil {
		// Only its EHLO name, if it has one, applies to ordinary delivery.
		wantSMTP = map[string]string{"smtp_helo_name": intendedOverrides(d, "")["smtp_helo_name"]}
	}
	for _, name := range []string{"smtp_bind_address", "smtp_bind_address6", "smtp_helo_name", "inet_protocols"} {
		if smtp[name] != wantSMTP[name] {
			t.Fatalf("stock smtp: %s = %q, want %q", name, smtp[name], wantSMTP[name])
		}
	}

	if len(senders) != len(wantSenders) {
		t.Fatalf("sender map has %d entries, want %d: %v", len(senders), len(wantSenders), senders)
	}
	for k, v := range wantSenders {
		if senders[k] != v {
			t.Fatalf("sender map %s -> %q, want %q", k, senders[k], v)
		}
	}
}

// intendedOverrides are the -o settings a binding's transport must carry,
// derived from the Config alone.
func intendedOverrides(b *config.Binding, transport string) map[string]string {
	o := map[string]string{"smtp_bind_address_enforce": "yes"}
	if transport != "" {
		o["syslog_name"] = "postfix/" + transport
	}
	var families []string
	if a, ok := b.Addr4(); ok {
		o["smtp_bind_address"] = a.String()
		families = append(families, "ipv4")
	}
	if a, ok := b.Addr6(); ok {
		o["smtp_bind_address6"] = a.String()
		families = append(families, "ipv6")
	}
	o["inet_protocols"] = strings.Join(families, ",")
	switch b.EHLOHostname {
	case config.EHLOHostname:
	case config.EHLOMessage:
		if len(b.MatchDomains) == 1 {
			o["smtp_helo_name"] = b.MatchDomains[0]
		}
	default:
		o["smtp_helo_name"] = b.EHLOHostname
	}
	return o
}

// isPostfixSpace is what master.cf, main.cf and table parsers split on.
func isPostfixSpace(r rune) bool {
	return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f'
}

func hasControl(s string) bool {
	return strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f })
}

var wordRE = regexp.MustCompile(`^[A-Za-z0-9_./+-]+$`)

func postfixWord(s string) bool { return wordRE.MatchString(s) }

// safeValue: a value Postfix takes as one word, literally.
func safeValue(s string) bool {
	return !hasControl(s) && !strings.ContainsAny(s, " ${}")
}

// parseService splits a master.cf entry as master(8) does and returns its
// eight fields and its "-o name=value" overrides, failing on anything else.
func parseService(t *testing.T, line string) ([]string, map[string]string) {
	t.Helper()
	f := strings.FieldsFunc(line, isPostfixSpace)
	if len(f) < 8 {
		t.Fatalf("master.cf entry %q has %d fields", line, len(f))
	}
	o := map[string]string{}
	for rest := f[8:]; len(rest) > 0; rest = rest[2:] {
		if len(rest) < 2 || rest[0] != "-o" {
			t.Fatalf("master.cf entry %q: %q is not an -o name=value pair", line, rest)
		}
		name, value, ok := strings.Cut(rest[1], "=")
		if !ok || !postfixWord(name) || !safeValue(value) {
			t.Fatalf("master.cf entry %q: bad override %q", line, rest[1])
		}
		if _, dup := o[name]; dup {
			t.Fatalf("master.cf entry %q: -o %s given twice", line, name)
		}
		o[name] = value
	}
	return f, o
}

type headerRule struct {
	re     *regexp.Regexp
	action string // "FILTER vip_x:relay", "IGNORE", ...
}

// parseRegexpTable reads a regexp_table(5) of "/pattern/flags action"
// lines. Postfix matches case-insensitively unless the flags toggle it
// with "i".
func parseRegexpTable(t *testing.T, content string) []headerRule {
	t.Helper()
	var rules []headerRule
	for _, line := range strings.Split(content, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		end := closingSlash(line)
		if end < 0 {
			t.Fatalf("header check %q is not /pattern/flags action", line)
		}
		flags, action, _ := strings.Cut(line[end+1:], " ")
		pattern := line[1:end]
		if !strings.Contains(flags, "i") {
			pattern = "(?i)" + pattern
		}
		re, err := regexp.Compile(pattern)
		if err != nil || hasControl(line) {
			t.Fatalf("header check %q: %v", line, err)
		}
		rules = append(rules, headerRule{re: re, action: strings.Join(strings.FieldsFunc(action, isPostfixSpace), " ")})
	}
	return rules
}

// closingSlash returns the index of the "/" that ends the pattern of
// "/pattern/...", skipping escaped characters, or -1.
func closingSlash(line string) int {
	if line == "" || line[0] != '/' {
		return -1
	}
	for i := 1; i < len(line); i++ {
		switch line[i] {
		case '\\':
			i++
		case '/':
			return i
		}
	}
	return -1
}

func firstMatch(rules []headerRule, header string) *headerRule {
	for i := range rules {
		if rules[i].re.MatchString(header) {
			return &rules[i]
		}
	}
	return nil
}

// parseHashTable reads a postmap(1) source: "key value" lines.
func parseHashTable(t *testing.T, content string) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, line := range strings.Split(content, "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		f := strings.FieldsFunc(line, isPostfixSpace)
		if len(f) != 2 {
			t.Fatalf("sender map line %q has %d fields, want 2", line, len(f))
		}
		if _, dup := m[f[0]]; dup {
			t.Fatalf("sender map key %q twice", f[0])
		}
		m[f[0]] = f[1]
	}
	return m
}

func mainValues(p *Plan, name string) []string {
	var v []string
	for _, m := range p.Main {
		if m.Name == name {
			v = append(v, m.Value)
		}
	}
	return v
}
