package main

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/vip"
)

// checkRoutes prints, for every binding address, the route the kernel would
// use from it to the probe of its family; it sends nothing. probe is a
// comma list; "" means vip.DefaultProbes.
func checkRoutes(c *cli, cfg *config.Config, probe string) error {
	probes := vip.DefaultProbes
	if probe != "" {
		probes = nil
		for _, s := range strings.Split(probe, ",") {
			a, err := netip.ParseAddr(strings.TrimSpace(s))
			if err != nil {
				return fmt.Errorf("--probe %q: not an IP address", s)
			}
			probes = append(probes, a)
		}
		// A family without a probe of its own uses the default one.
		for _, d := range vip.DefaultProbes {
			has := false
			for _, p := range probes {
				has = has || p.Is4() == d.Is4()
			}
			if !has {
				probes = append(probes, d)
			}
		}
	}
	fmt.Fprintln(c.stdout, "routes:")
	p, err := vip.NewProvisioner(nil, cfg.StateDir, nil)
	if err != nil {
		return err
	}
	defer p.Close()
	bad := 0
	for _, r := range p.CheckRoutes(vip.Wants(cfg), probes) {
		fmt.Fprintf(c.stdout, "  %s\n", r)
		if r.Err != nil {
			bad++
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d binding address(es) cannot deliver", bad)
	}
	return nil
}
