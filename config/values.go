package config

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// This file turns the text of each setting into its typed value; every
// failure names the value's own position.

var (
	nameRE      = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)
	headerRE    = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9-]{0,63}$`)
	prefixRE    = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_-]{0,31}$`)
	hostLabelRE = regexp.MustCompile(`^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$`)
	serviceRE   = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9-]{0,31}$`)
)

// ValidName reports whether s may be a binding or group name: the
// characters allowed cannot break a regexp table line, a master.cf service
// name or a main.cf parameter name.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// ValidHostname reports whether s is a DNS host name (letters, digits and
// hyphens in dot-separated labels, at most 253 characters).
func ValidHostname(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for _, l := range strings.Split(s, ".") {
		if !hostLabelRE.MatchString(l) {
			return false
		}
	}
	return true
}

func (d *decoder) bad(n *Node, format string, args ...any) {
	d.errorf(n.ValuePos, n.Name, format, args...)
}

// boolValue reads a boolean (true/yes/on/1, false/no/off/0), reporting
// any other word.
func (d *decoder) boolValue(n *Node) (v, ok bool) {
	switch strings.ToLower(n.Value) {
	case "true", "yes", "on", "1":
		return true, true
	case "false", "no", "off", "0":
		return false, true
	}
	d.bad(n, "%q: want true or false", n.Value)
	return false, false
}

// absPath reads an absolute path, cleaned, reporting a relative one.
func (d *decoder) absPath(n *Node) (string, bool) {
	if !filepath.IsAbs(n.Value) {
		d.bad(n, "%q: want an absolute path", n.Value)
		return "", false
	}
	return filepath.Clean(n.Value), true
}

// oneOf reads one of the words allowed (in any letter case), reporting
// any other with why appended to the list of choices.
func oneOf[T ~string](d *decoder, n *Node, why string, allowed ...T) (T, bool) {
	v := T(strings.ToLower(n.Value))
	if slices.Contains(allowed, v) {
		return v, true
	}
	words := make([]string, len(allowed))
	for i, a := range allowed {
		words[i] = string(a)
	}
	d.bad(n, "%q: want %s or %s%s", n.Value, strings.Join(words[:len(words)-1], ", "), words[len(words)-1], why)
	return "", false
}

func (d *decoder) intIn(n *Node, lo, hi int) (int, bool) {
	v, err := strconv.Atoi(n.Value)
	if err != nil || v < lo || v > hi {
		d.bad(n, "%q: want a whole number from %d to %d", n.Value, lo, hi)
		return 0, false
	}
	return v, true
}

func setMilterListen(d *decoder, n *Node, _ *values) {
	l, err := ParseListen(n.Value)
	if err != nil {
		d.bad(n, "%v", err)
		return
	}
	d.cfg.MilterListen = l
}

func setSieveScript(d *decoder, n *Node, _ *values) {
	if n.Value == "" {
		d.cfg.SieveScript = ""
		return
	}
	path := n.Value
	if !filepath.IsAbs(path) {
		path = filepath.Join(filepath.Dir(d.cfg.File), path)
	}
	if _, err := os.Stat(path); err != nil {
		d.bad(n, "cannot read the script: %v", err)
		return
	}
	d.cfg.SieveScript = path
}

// reservedHeaders are header fields a client legitimately sends: the MTA
// strips every copy of Binding_Header that lacks the key, so one of these
// would destroy mail content.
var reservedHeaders = map[string]bool{
	"from": true, "to": true, "cc": true, "bcc": true, "subject": true, "date": true,
	"message-id": true, "received": true, "return-path": true, "sender": true,
	"reply-to": true, "in-reply-to": true, "references": true, "mime-version": true,
	"dkim-signature": true, "arc-seal": true, "arc-message-signature": true,
	"arc-authentication-results": true, "authentication-results": true,
	"delivered-to": true, "keywords": true, "comments": true, "x-original-to": true,
}

func setBindingHeader(d *decoder, n *Node, _ *values) {
	if !headerRE.MatchString(n.Value) {
		d.bad(n, "%q: a header name of letters, digits and '-', starting with a letter, at most 64", n.Value)
		return
	}
	l := strings.ToLower(n.Value)
	if reservedHeaders[l] || strings.HasPrefix(l, "content-") || strings.HasPrefix(l, "resent-") || strings.HasPrefix(l, "list-") {
		d.bad(n, "%q is a standard header that clients send; the MTA strips client copies of the binding header, so pick a private one such as X-Binding", n.Value)
		return
	}
	d.cfg.BindingHeader = n.Value
}

func setOnPolicyError(d *decoder, n *Node, _ *values) {
	if v, ok := oneOf(d, n, "", PolicyErrorDefault, PolicyErrorTempfail); ok {
		d.cfg.OnPolicyError = v
	}
}

func setOnMilterDown(d *decoder, n *Node, _ *values) {
	if v, ok := oneOf(d, n, " (reject would refuse all mail while the milter is down)", MilterDownAccept, MilterDownTempfail); ok {
		d.cfg.OnMilterDown = v
	}
}

func setMaxBodyBytes(d *decoder, n *Node, _ *values) {
	if v, ok := d.size(n, 1, 1<<30); ok {
		d.cfg.MaxBodyBytes = v
	}
}

func setMaxHeaderBytes(d *decoder, n *Node, _ *values) {
	if v, ok := d.size(n, 1<<10, 1<<30); ok {
		d.cfg.MaxHeaderBytes = v
	}
}

// size reads a byte count with an optional binary suffix K, M or G (a
// trailing "B" or "iB" is allowed: 64K, 64KB, 64KiB), from lo to hi bytes.
func (d *decoder) size(n *Node, lo, hi int64) (int64, bool) {
	s := strings.ToUpper(strings.TrimSpace(n.Value))
	mult := int64(1)
	s = strings.TrimSuffix(strings.TrimSuffix(s, "B"), "I")
	switch {
	case strings.HasSuffix(s, "K"):
		mult, s = 1<<10, s[:len(s)-1]
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, s[:len(s)-1]
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, s[:len(s)-1]
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 || v > hi/mult || v*mult < lo {
		d.bad(n, "%q: want a size from %s to %s bytes (suffixes K, M, G)", n.Value, sizeText(lo), sizeText(hi))
		return 0, false
	}
	return v * mult, true
}

// sizeText writes a byte count the way Max_Body_Bytes reads it: with the
// largest binary suffix that divides it exactly.
func sizeText(n int64) string {
	for _, u := range []struct {
		suffix string
		size   int64
	}{{"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10}} {
		if n >= u.size && n%u.size == 0 {
			return strconv.FormatInt(n/u.size, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10)
}

func setMaxConnections(d *decoder, n *Node, _ *values) {
	if v, ok := d.intIn(n, 1, 1000000); ok {
		d.cfg.MaxConnections = v
	}
}

func setMilterIdleTimeout(d *decoder, n *Node, _ *values) {
	if v, ok := d.duration(n, time.Second, 7*24*time.Hour); ok {
		d.cfg.IdleTimeout = v
	}
}

func setMilterPacketTimeout(d *decoder, n *Node, _ *values) {
	if v, ok := d.duration(n, time.Second, time.Hour); ok {
		d.cfg.PacketTimeout = v
	}
}

// timeUnits are Postfix's time units (postconf(5) "Time units"), largest
// first for durationText.
var timeUnits = []struct {
	suffix string
	d      time.Duration
}{{"w", 7 * 24 * time.Hour}, {"d", 24 * time.Hour}, {"h", time.Hour}, {"m", time.Minute}, {"s", time.Second}}

// duration reads a time the way main.cf writes one: a whole number with
// one unit s, m, h, d or w (seconds when none), from lo to hi.
func (d *decoder) duration(n *Node, lo, hi time.Duration) (time.Duration, bool) {
	s := strings.ToLower(strings.TrimSpace(n.Value))
	unit := time.Second
	for _, u := range timeUnits {
		if strings.HasSuffix(s, u.suffix) {
			unit, s = u.d, s[:len(s)-1]
			break
		}
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 || v > int64(hi/unit) || time.Duration(v)*unit < lo {
		d.bad(n, "%q: want a time from %s to %s (a whole number with unit s, m, h, d or w, as in main.cf; seconds when none)", n.Value, durationText(lo), durationText(hi))
		return 0, false
	}
	return time.Duration(v) * unit, true
}

// durationText writes a time the way duration reads it: in the largest
// unit that divides it exactly.
func durationText(t time.Duration) string {
	for _, u := range timeUnits {
		if t >= u.d && t%u.d == 0 {
			return strconv.FormatInt(int64(t/u.d), 10) + u.suffix
		}
	}
	return strconv.FormatInt(int64(t/time.Second), 10) + "s"
}

func setInterface(d *decoder, n *Node, v *values) {
	// Linux interface names: at most 15 bytes, no '/', ':' or white space.
	s := n.Value
	if s == "" || len(s) > 15 || s == "." || s == ".." || strings.ContainsAny(s, "/: \t") {
		d.bad(n, "%q: not a Linux interface name (1 to 15 characters, no '/', ':' or spaces)", s)
		return
	}
	v.iface.put(s)
}

// setInt returns the setter of an inherited whole-number setting kept in
// the field that field picks, accepting lo to hi.
func setInt(lo, hi int, field func(*values) *setting[int]) func(*decoder, *Node, *values) {
	return func(d *decoder, n *Node, v *values) {
		if x, ok := d.intIn(n, lo, hi); ok {
			field(v).put(x)
		}
	}
}

func setTransportPrefix(d *decoder, n *Node, _ *values) {
	if !prefixRE.MatchString(n.Value) {
		d.bad(n, "%q: start with a letter, then letters, digits, '_' or '-', at most 32", n.Value)
		return
	}
	d.cfg.TransportPrefix = n.Value
}

func setKeepHeader(d *decoder, n *Node, _ *values) {
	if b, ok := d.boolValue(n); ok {
		d.cfg.KeepHeader = b
	}
}

func setMetricsListen(d *decoder, n *Node, _ *values) {
	host, port, err := net.SplitHostPort(n.Value)
	if err != nil {
		d.bad(n, "%q: want host:port", n.Value)
		return
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		d.bad(n, "%q: port must be a number from 1 to 65535", n.Value)
		return
	}
	if _, err := netip.ParseAddr(host); host != "" && err != nil && !ValidHostname(host) {
		d.bad(n, "%q: host must be an IP address or host name", n.Value)
		return
	}
	d.cfg.MetricsListen = n.Value
}

func setStateDir(d *decoder, n *Node, _ *values) {
	if p, ok := d.absPath(n); ok {
		d.cfg.StateDir = p
	}
}

// setHeaderKeyFile takes a path relative to the binding file's directory,
// as Sieve_Script does, so a key always belongs to its binding file.
func setHeaderKeyFile(d *decoder, n *Node, _ *values) {
	if n.Value == "" {
		d.bad(n, "want a file name")
		return
	}
	p := n.Value
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(d.cfg.File), p)
	}
	d.cfg.HeaderKeyFile = filepath.Clean(p)
}

func setSelection(d *decoder, n *Node, v *values) {
	switch s := strings.ToLower(n.Value); s {
	case "sticky", "random", "round_robin":
		v.selection.put(Selection(s))
	case "round-robin", "roundrobin":
		v.selection.put(SelectRoundRobin)
	default:
		d.bad(n, "%q: want sticky, random or round_robin", n.Value)
	}
}

func setBindAddress(d *decoder, n *Node, v *values) {
	v.addrWritten = true
	s, bits := n.Value, -1
	if a, l, ok := strings.Cut(s, "/"); ok {
		x, err := strconv.Atoi(l)
		if err != nil {
			d.bad(n, "%q: prefix length %q is not a number", s, l)
			return
		}
		s, bits = a, x
	}
	addr, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		d.bad(n, "%q: not an IPv4 or IPv6 address", n.Value)
		return
	case addr.Zone() != "":
		d.bad(n, "%q: zones are not allowed", n.Value)
		return
	case addr.Is4In6():
		d.bad(n, "%q: write IPv4-mapped addresses as plain IPv4", n.Value)
		return
	case addr.IsUnspecified() || addr.IsMulticast() || addr == netip.IPv4Unspecified():
		d.bad(n, "%q: an unspecified or multicast address cannot be a source address", n.Value)
		return
	case addr.Is6() && addr.IsLinkLocalUnicast():
		d.bad(n, "%q: a link-local address cannot reach other networks", n.Value)
		return
	case addr.Is4() && addr.As4()[0] == 255:
		d.bad(n, "%q: a broadcast address cannot be a source address", n.Value)
		return
	}
	if bits >= 0 && (bits < 1 || bits > addr.BitLen()) {
		d.bad(n, "%q: prefix length must be from 1 to %d", n.Value, addr.BitLen())
		return
	}
	v.addrs = append(v.addrs, addrAt{addr: addr, bits: bits, pos: n.ValuePos, keyPos: n.Pos})
}

func setEHLO(d *decoder, n *Node, v *values) {
	switch s := n.Value; {
	case strings.EqualFold(s, EHLOHostname):
		v.ehlo.put(EHLOHostname)
	case strings.EqualFold(s, EHLOMessage):
		v.ehlo.put(EHLOMessage)
	case strings.HasPrefix(s, "["):
		lit, ok := addressLiteral(s)
		if !ok {
			d.bad(n, "%q: not an address literal (want [192.0.2.1] or [IPv6:2001:db8::1], RFC 5321 §4.1.3, without a zone)", s)
			return
		}
		v.ehlo.put(lit)
	case ValidHostname(s):
		v.ehlo.put(s)
	default:
		// An internationalized name greets in its A-label form (RFC 6531
		// §3.7.1: EHLO carries no U-labels).
		if a, ok := canonicalDomain(s); ok && strings.ContainsFunc(s, func(r rune) bool { return r >= utf8.RuneSelf }) {
			v.ehlo.put(a)
			return
		}
		d.bad(n, "%q: not a valid host name (want __hostname__, __message__, a name like mta1.example.com or an address literal like [192.0.2.1])", s)
	}
}

// addressLiteral checks an RFC 5321 §4.1.3 address literal, "[IPv4]" or
// "[IPv6:addr]", and returns it in canonical form. IPv6 zones are refused:
// they are not part of the SMTP syntax, and netip accepts any text there.
func addressLiteral(s string) (string, bool) {
	if len(s) < 2 || s[0] != '[' || s[len(s)-1] != ']' {
		return "", false
	}
	in, tagged := s[1:len(s)-1], false
	if len(in) > 5 && strings.EqualFold(in[:5], "IPv6:") {
		in, tagged = in[5:], true
	}
	a, err := netip.ParseAddr(in)
	if err != nil || a.Zone() != "" || a.Is6() != tagged {
		return "", false
	}
	if tagged {
		return "[IPv6:" + a.String() + "]", true
	}
	return "[" + a.String() + "]", true
}

func setSuspend(d *decoder, n *Node, v *values) {
	if b, ok := d.boolValue(n); ok {
		v.suspend.put(b)
	}
}

func setMatchDomain(d *decoder, n *Node, v *values) {
	dom, ok := canonicalDomain(n.Value)
	if !ok {
		d.bad(n, "%q: not a domain name", n.Value)
		return
	}
	for _, prev := range v.domains {
		if prev.s == dom {
			d.bad(n, "%q is listed twice in this binding (first at line %d)", n.Value, prev.pos.Line)
			return
		}
	}
	v.domains = append(v.domains, strAt{s: dom, pos: n.ValuePos})
}

func setWeight(d *decoder, n *Node, v *values) {
	if x, ok := d.intIn(n, 1, 1000); ok {
		v.weight.put(x)
		v.weightPos = n.Pos
	}
}

func setRelay(d *decoder, n *Node, v *values) {
	if err := checkRelay(n.Value); err != "" {
		d.bad(n, "%q: %s", n.Value, err)
		return
	}
	v.relay.put(n.Value)
}

// checkRelay accepts the next-hop forms Postfix's smtp client understands
// (smtp(8), transport(5)): host, host:port, [host], [host]:port, [addr],
// [ipv6:addr] and those with :port. Hosts are LDH host names and addresses
// have no zone, so the value can stand in a table's right-hand side and
// after "FILTER transport:" without being split or expanded.
func checkRelay(s string) string {
	host, port := s, ""
	if strings.HasPrefix(s, "[") {
		end := strings.Index(s, "]")
		if end < 0 {
			return "missing ']'"
		}
		host, port = s[1:end], s[end+1:]
		if port != "" && !strings.HasPrefix(port, ":") {
			return "want [host]:port"
		}
		port = strings.TrimPrefix(port, ":")
		lit, tagged := host, false
		if len(lit) > 5 && strings.EqualFold(lit[:5], "ipv6:") {
			lit, tagged = lit[5:], true
		}
		if a, err := netip.ParseAddr(lit); err == nil {
			if a.Zone() != "" {
				return "an address with a zone cannot be written into Postfix's configuration"
			}
			if tagged && !a.Is6() {
				return "[ipv6:...] needs an IPv6 address"
			}
		} else if tagged || !ValidHostname(host) {
			return "not a host name or address inside [ ]"
		}
	} else {
		if h, p, ok := strings.Cut(s, ":"); ok {
			host, port = h, p
		}
		if !ValidHostname(host) {
			if _, err := netip.ParseAddr(host); err != nil {
				return "not a host name (write IP addresses as [addr])"
			}
		}
	}
	if port != "" || strings.HasSuffix(s, ":") {
		if !serviceRE.MatchString(port) {
			return "port must be a number or service name"
		}
		if p, err := strconv.Atoi(port); err == nil && (p < 1 || p > 65535) {
			return "port must be from 1 to 65535"
		}
	}
	return ""
}
