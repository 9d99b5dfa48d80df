package vip

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// TestGroupLiveness: a group member whose address disappears from the host
// stops being picked; its share moves to the other members, and comes back
// with the address.
func TestGroupLiveness(t *testing.T) {
	n := newTestNS(t)
	ip(t, "-n", n.name, "addr", "add", "192.0.2.31/32", "dev", "eth0")
	ip(t, "-n", n.name, "addr", "add", "192.0.2.32/32", "dev", "eth0")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pres, err := newPresence(ctx, &n.ns, slog.New(slog.DiscardHandler), 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse("live.conf", []byte(`Binding_Group "Pool" {
  Binding "Pool1" { Bind_Address = 192.0.2.31 }
  Binding "Pool2" { Bind_Address = 192.0.2.32 }
}
Binding "Alone" { Bind_Address = 192.0.2.40  Match_Domain = alone.example }
`))
	if err != nil {
		t.Fatal(err)
	}
	if !pres.Live(cfg.Binding("Pool1")) || pres.Live(cfg.Binding("Alone")) {
		t.Fatalf("initial presence wrong: Pool1 %v, Alone %v", pres.Live(cfg.Binding("Pool1")), pres.Live(cfg.Binding("Alone")))
	}
	script := t.TempDir() + "/p.sieve"
	writeFile(t, script, `require "variables"; set "binding" "Pool";`)
	cfg.SieveScript = script
	pol, err := sieve.New(cfg, sieve.Options{Liveness: pres})
	if err != nil {
		t.Fatal(err)
	}
	share := func() map[string]int {
		got := map[string]int{}
		for i := range 200 {
			d := pol.Decide(ctx, &sieve.Message{From: "a@bulk.example", To: []string{fmt.Sprintf("r@d%d.example", i)}})
			got[d.Binding]++
		}
		return got
	}
	if s := share(); s["Pool1"] == 0 || s["Pool2"] == 0 {
		t.Fatalf("both members live, shares %v", s)
	}
	ip(t, "-n", n.name, "addr", "del", "192.0.2.31/32", "dev", "eth0")
	eventually(t, "presence to notice the deletion", func() bool { return !pres.Has(netip.MustParseAddr("192.0.2.31")) })
	if s := share(); s["Pool2"] != 200 {
		t.Errorf("Pool1's address is gone, shares %v; want all on Pool2", s)
	}
	ip(t, "-n", n.name, "addr", "add", "192.0.2.31/32", "dev", "eth0")
	eventually(t, "presence to notice the address again", func() bool { return pres.Live(cfg.Binding("Pool1")) })
	if s := share(); s["Pool1"] == 0 {
		t.Errorf("Pool1's address is back, shares %v", s)
	}
	if pres.changes.Load() < 2 {
		t.Errorf("presence counted %d changes, want at least 2", pres.changes.Load())
	}
}

// TestPresenceSeesAddressDisappear: presence follows deletions and
// additions, and re-lists the host's addresses when the kernel drops events
// (a tiny receive buffer and thousands of changes at once).
func TestPresenceSeesAddressDisappear(t *testing.T) {
	cases := []struct {
		name   string
		rcvbuf int
	}{
		{"events", 0},
		{"events lost", 1}, // the kernel's minimum: a batch overflows it
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := newTestNS(t)
			ip(t, "-n", n.name, "addr", "add", "192.0.2.31/32", "dev", "eth0")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			pres, err := newPresence(ctx, &n.ns, slog.New(slog.DiscardHandler), c.rcvbuf)
			if err != nil {
				t.Fatal(err)
			}
			a := netip.MustParseAddr("192.0.2.31")
			b := &config.Binding{Name: "B", Addresses: []netip.Prefix{netip.PrefixFrom(a, 32)}}
			if !pres.Live(b) {
				t.Fatal("address present at start, binding not live")
			}
			ip(t, "-n", n.name, "addr", "del", "192.0.2.31/32", "dev", "eth0")
			eventually(t, "presence to see the address disappear", func() bool { return !pres.Live(b) })

			// Thousands of changes at once, then the binding's address.
			batch := filepath.Join(t.TempDir(), "batch")
			var sb strings.Builder
			for i := range 2000 {
				fmt.Fprintf(&sb, "addr add 10.77.%d.%d/32 dev eth0\n", i/250, i%250+1)
			}
			sb.WriteString("addr add 192.0.2.31/32 dev eth0\n")
			writeFile(t, batch, sb.String())
			if c.rcvbuf != 0 {
				// Hold presence still while the batch runs: its queues
				// fill, the tiny socket buffer overflows and the kernel
				// drops events.
				pres.mu.Lock()
			}
			ip(t, "-n", n.name, "-batch", batch)
			if c.rcvbuf != 0 {
				pres.mu.Unlock()
			}
			eventually(t, "presence to see every address", func() bool {
				return pres.Live(b) && pres.Has(netip.MustParseAddr("10.77.7.250"))
			})
			if c.rcvbuf != 0 && pres.resyncs.Load() == 0 {
				t.Error("no resync: the kernel dropped no event, or presence did not notice")
			}
			t.Logf("changes %d, resyncs %d", pres.changes.Load(), pres.resyncs.Load())
		})
	}
}

// TestPresenceLocalRoutes: an address the kernel lets a socket bind
// because a local route covers it (127.0.0.0/8 on lo, an AnyIP prefix) is
// present; a truly missing one is not; and presence follows local routes
// as they come and go. Every answer is checked against a real bind() in the
// namespace.
func TestPresenceLocalRoutes(t *testing.T) {
	n := newTestNS(t)
	ip(t, "-n", n.name, "addr", "add", "192.0.2.31/32", "dev", "eth0")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs syncBuffer
	pres, err := newPresence(ctx, &n.ns, slog.New(slog.NewJSONHandler(&logs, nil)), 0)
	if err != nil {
		t.Fatal(err)
	}
	check := func(stage string, cases map[string]bool) {
		t.Helper()
		for s, want := range cases {
			a := netip.MustParseAddr(s)
			if bound := n.canBind(t, a); bound != want {
				t.Fatalf("%s: the kernel binds %s: %v; the test expects %v", stage, a, bound, want)
			}
			if !want {
				// Settled already: a missing address must not flicker.
				if pres.Has(a) {
					t.Errorf("%s: %s is present, but the kernel cannot bind it", stage, a)
				}
				continue
			}
			eventually(t, stage+": "+s+" present", func() bool { return pres.Has(a) })
		}
	}
	check("start", map[string]bool{
		"127.0.0.6":       true, // 127.0.0.0/8 on lo
		"127.0.0.8":       true,
		"192.0.2.31":      true, // on eth0
		"192.0.2.99":      false,
		"198.51.100.7":    false,
		"2001:db8:100::5": false,
	})
	group := &config.Binding{Name: "Loop", Addresses: []netip.Prefix{
		netip.MustParsePrefix("127.0.0.6/32"), netip.MustParsePrefix("127.0.0.7/32"), netip.MustParsePrefix("127.0.0.8/32"),
	}}
	if !pres.Live(group) {
		t.Error("a binding on 127.0.0.6-8 is not live")
	}

	// AnyIP: IPv4 binds through the route alone; IPv6 binds need
	// net.ipv6.ip_nonlocal_bind as well.
	ip(t, "-n", n.name, "route", "add", "local", "198.51.100.0/24", "dev", "lo")
	ip(t, "-n", n.name, "-6", "route", "add", "local", "2001:db8:100::/64", "dev", "lo")
	check("AnyIP routes, ip_nonlocal_bind=0", map[string]bool{
		"198.51.100.7":    true,
		"2001:db8:100::5": false,
		"2001:db8:200::5": false,
	})
	ip(t, "-n", n.name, "-6", "route", "del", "local", "2001:db8:100::/64", "dev", "lo")
	n.sysctl(t, "net/ipv6/ip_nonlocal_bind", "1")
	ip(t, "-n", n.name, "-6", "route", "add", "local", "2001:db8:100::/64", "dev", "lo")
	check("AnyIP routes, ip_nonlocal_bind=1", map[string]bool{
		"2001:db8:100::5": true,
		"198.51.100.7":    true,
	})
	// Binds anywhere now, but no reply to 2001:db8:200::5 reaches the host.
	if pres.Has(netip.MustParseAddr("2001:db8:200::5")) {
		t.Error("2001:db8:200::5 is present: no local route covers it")
	}

	ip(t, "-n", n.name, "route", "del", "local", "198.51.100.0/24", "dev", "lo")
	ip(t, "-n", n.name, "-6", "route", "del", "local", "2001:db8:100::/64", "dev", "lo")
	for _, s := range []string{"198.51.100.7", "2001:db8:100::5"} {
		a := netip.MustParseAddr(s)
		eventually(t, s+" missing after its local route went", func() bool { return !pres.Has(a) })
	}
	if !n.canBind(t, netip.MustParseAddr("192.0.2.31")) || n.canBind(t, netip.MustParseAddr("198.51.100.7")) {
		t.Fatal("the kernel disagrees after the routes went")
	}
	if !pres.Has(netip.MustParseAddr("127.0.0.6")) {
		t.Error("127.0.0.6 missing though 127.0.0.0/8 is still on lo")
	}
	// Route changes logged, through the logger given, one JSON object a
	// line: two prefixes in and out, and the IPv6 one again.
	if c := pres.changes.Load(); c < 6 {
		t.Errorf("presence counted %d changes, want at least 6", c)
	}
	out := logs.String()
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if !json.Valid([]byte(l)) {
			t.Errorf("not a JSON line: %s", l)
		}
	}
	for _, w := range []string{`"msg":"local route changed","prefix":"198.51.100.0/24","present":true`, `"prefix":"2001:db8:100::/64","present":false`} {
		if !strings.Contains(out, w) {
			t.Errorf("log lacks %s:\n%s", w, out)
		}
	}
}
