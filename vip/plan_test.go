package vip

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// testHost is a reading of a host with lo (1), eth0 (2) and eth1 (3):
// 127.0.0.1/8 on lo, 10.0.0.1 on eth0 without vipmilter's label,
// 192.0.2.10 on eth0 with it, 192.0.2.20 on eth1 with it, and the local
// routes the kernel keeps for those plus AnyIP prefixes 198.51.100.0/24
// and 2001:db8:100::/64 on lo.
func testHost(nonlocal6 bool) *host {
	hs := &host{
		addrs: map[netip.Addr][]hostAddr{
			netip.MustParseAddr("127.0.0.1"):  {{link: 1, bits: 8, label: "lo"}},
			netip.MustParseAddr("10.0.0.1"):   {{link: 2, bits: 24, label: "eth0"}},
			netip.MustParseAddr("192.0.2.10"): {{link: 2, bits: 32, label: "eth0:vip"}},
			netip.MustParseAddr("192.0.2.11"): {{link: 2, bits: 32, label: "eth0"}},
			netip.MustParseAddr("192.0.2.20"): {{link: 3, bits: 32, label: "eth1:vip"}},
		},
		links:     map[string]int{"lo": 1, "eth0": 2, "eth1": 3},
		names:     map[int]string{1: "lo", 2: "eth0", 3: "eth1"},
		local:     newLocalRoutes(),
		nonlocal6: nonlocal6,
	}
	for _, r := range []struct {
		p    string
		link int
	}{
		{"127.0.0.0/8", 1}, {"127.0.0.1/32", 1}, {"10.0.0.1/32", 2}, {"192.0.2.10/32", 2},
		{"192.0.2.11/32", 2}, {"192.0.2.20/32", 3}, {"198.51.100.0/24", 1}, {"2001:db8:100::/64", 1},
	} {
		hs.local.add(localRoute{netip.MustParsePrefix(r.p), r.link})
	}
	return hs
}

// TestPlanEnsure: the decision for one wanted address, from a reading of
// the host, with and without the prune steps that free an address.
func TestPlanEnsure(t *testing.T) {
	cases := []struct {
		name      string
		want      Want
		nonlocal6 bool
		removed   []addrLink
		status    Status
		detail    string // in Note or Err
	}{
		{"on its interface", want("A", "eth0", "192.0.2.10/32"), false, nil, Present, ""},
		{"missing", want("A", "eth0", "192.0.2.30/32"), false, nil, Added, ""},
		{"loopback net", want("A", "eth0", "127.0.0.6/32"), false, nil, Covered, "local route 127.0.0.0/8 dev lo"},
		{"IPv4 AnyIP", want("A", "eth0", "198.51.100.7/32"), false, nil, Covered, "198.51.100.0/24"},
		{"IPv6 AnyIP, nonlocal bind", want("A", "eth0", "2001:db8:100::5/128"), true, nil, Covered, "2001:db8:100::/64"},
		{"IPv6 AnyIP, no nonlocal bind", want("A", "eth0", "2001:db8:100::5/128"), false, nil, Added, "ip_nonlocal_bind=1"},
		{"IPv6 outside the prefix", want("A", "eth0", "2001:db8:200::5/128"), true, nil, Added, ""},
		{"covered needs no interface", want("A", "", "127.0.0.7/32"), false, nil, Covered, "127.0.0.0/8"},
		{"missing needs an interface", want("A", "", "192.0.2.30/32"), false, nil, Failed, "no interface"},
		{"unknown interface", want("A", "eth9", "192.0.2.30/32"), false, nil, Failed, `interface "eth9" does not exist`},
		{"on another interface", want("A", "eth0", "192.0.2.20/32"), false, nil, Failed, "already configured on interface eth1"},
		{"moving from a pruned interface", want("A", "eth0", "192.0.2.20/32"), false, []addrLink{{netip.MustParseAddr("192.0.2.20"), 3}}, Added, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			removed := map[addrLink]bool{}
			for _, r := range c.removed {
				removed[r] = true
			}
			s := planEnsure(c.want, testHost(c.nonlocal6), removed)
			detail := s.Note
			if s.Err != nil {
				detail += s.Err.Error()
			}
			if s.Status != c.status || !strings.Contains(detail, c.detail) {
				t.Errorf("got %s %q, want %s %q", s.Status, detail, c.status, c.detail)
			}
			if (s.op == opAdd) != (c.status == Added) {
				t.Errorf("op %v for status %s", s.op, s.Status)
			}
		})
	}
}

// TestPlanPrune: the decision for each record entry the file no longer
// declares, and what it frees for the ensure steps.
func TestPlanPrune(t *testing.T) {
	owned := []owned{
		{netip.MustParsePrefix("192.0.2.10/32"), "eth0"}, // still declared
		{netip.MustParsePrefix("192.0.2.11/32"), "eth0"}, // label gone: re-configured by hand
		{netip.MustParsePrefix("192.0.2.20/32"), "eth1"}, // moves to eth0
		{netip.MustParsePrefix("192.0.2.12/32"), "eth0"}, // already gone
		{netip.MustParsePrefix("192.0.2.13/32"), "eth7"}, // interface gone
	}
	wants := []Want{want("Keep", "eth0", "192.0.2.10/32"), want("Move", "eth0", "192.0.2.20/32")}
	pl := planProvision(wants, owned, testHost(false), true)
	var got []string
	for _, s := range pl.prune {
		line := s.Prefix.String() + "=" + string(s.Status)
		if s.silent {
			line = s.Prefix.String() + "=silent"
		}
		if !s.forget {
			line += "(kept in record)"
		}
		got = append(got, line)
	}
	if g, w := strings.Join(got, " "), "192.0.2.11/32=forgotten 192.0.2.20/32=removed 192.0.2.12/32=silent 192.0.2.13/32=silent"; g != w {
		t.Errorf("prune steps %s\nwant %s", g, w)
	}
	if g := statuses(pl.results(would)); g != "192.0.2.10=present 192.0.2.20=would add 192.0.2.11=would forget 192.0.2.20=would remove" {
		t.Errorf("dry run lines %s", g)
	}
	// Without --prune the record is not consulted and the move fails.
	pl = planProvision(wants, owned, testHost(false), false)
	if len(pl.prune) != 0 || pl.ensure[1].Status != Failed {
		t.Errorf("without prune: %d prune steps, move %s", len(pl.prune), pl.ensure[1].Status)
	}
}

// TestLocalRoutes: adding and removing routes, and which one covers an
// address, including a host route shared by two interfaces.
func TestLocalRoutes(t *testing.T) {
	l := newLocalRoutes()
	p8, host := netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("192.0.2.10/32")
	steps := []struct {
		do      string
		r       localRoute
		changed bool
	}{
		{"add", localRoute{p8, 1}, true},
		{"add", localRoute{p8, 1}, false},
		{"add", localRoute{host, 2}, true},
		{"add", localRoute{host, 3}, false}, // the same address on eth1 too
		{"remove", localRoute{host, 2}, false},
	}
	for _, s := range steps {
		var changed bool
		if s.do == "add" {
			changed = l.add(s.r)
		} else {
			changed = l.remove(s.r)
		}
		if changed != s.changed {
			t.Errorf("%s %v: changed %v, want %v", s.do, s.r, changed, s.changed)
		}
	}
	cover := []struct {
		addr     string
		wideOnly bool
		want     string
	}{
		{"127.0.0.6", false, "127.0.0.0/8"},
		{"192.0.2.10", false, "192.0.2.10/32"},
		{"192.0.2.10", true, ""},
		{"192.0.2.11", false, ""},
		{"::1", false, ""},
	}
	for _, c := range cover {
		r, ok := l.covering(netip.MustParseAddr(c.addr), c.wideOnly)
		got := ""
		if ok {
			got = r.Prefix.String()
		}
		if got != c.want {
			t.Errorf("covering(%s, %v) = %q, want %q", c.addr, c.wideOnly, got, c.want)
		}
	}
	if !l.remove(localRoute{host, 3}) || !l.remove(localRoute{p8, 1}) {
		t.Error("removing the last route of a prefix did not report it gone")
	}
	if _, ok := l.covering(netip.MustParseAddr("127.0.0.6"), false); ok || len(l.wide) != 0 {
		t.Errorf("routes left after removing all: %v %v", l.links, l.wide)
	}
}

// TestLocalRouteOf: only routes of type local in the local table count.
func TestLocalRouteOf(t *testing.T) {
	cidr := func(s string) *net.IPNet {
		_, n, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	cases := []struct {
		name string
		r    netlink.Route
		want string // "" when not a local route
	}{
		{"loopback net", netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL, Dst: cidr("127.0.0.0/8")}, "127.0.0.0/8"},
		{"AnyIP IPv6", netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL, Dst: cidr("2001:db8:100::/64")}, "2001:db8:100::/64"},
		{"all of IPv6", netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL, Family: netlink.FAMILY_V6}, "::/0"},
		{"broadcast", netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_BROADCAST, Dst: cidr("10.0.0.255/32")}, ""},
		{"main table", netlink.Route{Table: unix.RT_TABLE_MAIN, Type: unix.RTN_LOCAL, Dst: cidr("198.51.100.0/24")}, ""},
	}
	for _, c := range cases {
		r, ok := localRouteOf(c.r)
		got := ""
		if ok {
			got = r.Prefix.String()
		}
		if got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
}
