package vip

import (
	"net/netip"
	"strings"
	"testing"
)

func TestCheckRoutes(t *testing.T) {
	n := newTestNS(t)
	// eth0 has a default route (IPv4 and IPv6) through a neighbour on its
	// link; eth1 has none.
	ip(t, "-n", n.name, "addr", "add", "10.99.0.1/24", "dev", "eth0")
	ip(t, "-n", n.name, "addr", "add", "2001:db8:99::1/64", "dev", "eth0", "nodad")
	ip(t, "-n", n.name, "route", "add", "default", "via", "10.99.0.254", "dev", "eth0")
	ip(t, "-n", n.name, "-6", "route", "add", "default", "via", "2001:db8:99::254", "dev", "eth0")
	p := newProv(t, n, t.TempDir(), nil)
	ws := []Want{
		want("Good", "eth0", "192.0.2.10/32"),
		want("Good6", "eth0", "2001:db8::10/128"),
		want("WrongIf", "eth1", "192.0.2.20/32"),
		want("Missing", "eth0", "192.0.2.30/32"),
		want("Loop", "eth0", "127.0.0.6/32"),
		want("Any6", "eth0", "2001:db8:100::5/128"),
		want("Any6NoBind", "eth0", "2001:db8:200::5/128"),
	}
	// AnyIP: 2001:db8:100::/64 binds (ip_nonlocal_bind=1); 2001:db8:200::/64
	// has a local route too, but is checked after the sysctl is back to 0.
	n.sysctl(t, "net/ipv6/ip_nonlocal_bind", "1")
	ip(t, "-n", n.name, "-6", "route", "add", "local", "2001:db8:100::/64", "dev", "lo")
	if _, err := p.Provision(ws[:3], Options{}); err != nil {
		t.Fatal(err)
	}
	rs := p.CheckRoutes(ws, DefaultProbes)
	cases := []struct {
		binding, err, via string
	}{
		{"Good", "", "via 10.99.0.254 dev eth0"},
		{"Good6", "", "via 2001:db8:99::254 dev eth0"},
		{"WrongIf", "route leaves via eth0, not the binding's interface eth1", ""},
		{"Missing", "not configured on this host", ""},
		{"Loop", "a loopback address: mail from it cannot leave this host", ""},
		{"Any6", "", "via 2001:db8:99::254 dev eth0"},
	}
	for i, c := range cases {
		r := rs[i]
		if r.Binding != c.binding {
			t.Fatalf("result %d is %s, want %s", i, r.Binding, c.binding)
		}
		switch {
		case c.err == "" && r.Err != nil:
			t.Errorf("%s: unexpected error %v", c.binding, r.Err)
		case c.err != "" && (r.Err == nil || !strings.Contains(r.Err.Error(), c.err)):
			t.Errorf("%s: error %v, want %q", c.binding, r.Err, c.err)
		case c.via != "" && !strings.Contains(r.String(), c.via):
			t.Errorf("%s: %s, want %q", c.binding, r, c.via)
		}
	}

	if len(rs) != len(ws) {
		t.Fatalf("%d results for %d addresses", len(rs), len(ws))
	}
	if r := rs[len(ws)-1]; r.Err == nil || !strings.Contains(r.Err.Error(), "not configured on this host") {
		t.Errorf("Any6NoBind (no local route): %v", r)
	}
	ip(t, "-n", n.name, "-6", "route", "add", "local", "2001:db8:200::/64", "dev", "lo")
	n.sysctl(t, "net/ipv6/ip_nonlocal_bind", "0")
	rs = p.CheckRoutes(ws[len(ws)-1:], DefaultProbes)
	if r := rs[0]; r.Err == nil || !strings.Contains(r.Err.Error(), "ip_nonlocal_bind=1") {
		t.Errorf("Any6NoBind (local route, ip_nonlocal_bind=0): %v", r)
	}

	// Without a default route the binding cannot deliver at all.
	ip(t, "-n", n.name, "route", "del", "default")
	rs = p.CheckRoutes(ws[:1], []netip.Addr{netip.MustParseAddr("198.51.100.1")})
	if rs[0].Err == nil || !strings.Contains(rs[0].Err.Error(), "no route") {
		t.Errorf("without a default route: %v", rs[0])
	}
}
