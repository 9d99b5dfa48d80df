package vip

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
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
	pres, err := newPresence(ctx, &n.ns, slog.New(slog.DiscardHandler))
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
	if pres.Changes.Load() < 2 {
		t.Errorf("presence counted %d changes, want at least 2", pres.Changes.Load())
	}
}
