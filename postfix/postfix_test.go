package postfix

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/testenv"
)

// testConfig loads a binding file that declares bindings, written out as
// text so the Config is one that config.Parse accepted, as Render expects.
func testConfig(bindings ...*config.Binding) *config.Config {
	var src strings.Builder
	for _, b := range bindings {
		fmt.Fprintf(&src, "Binding %q {\n", b.Name)
		for _, a := range b.Addresses {
			fmt.Fprintf(&src, "  Bind_Address = %s\n", a)
		}
		for _, d := range b.MatchDomains {
			fmt.Fprintf(&src, "  Match_Domain = %q\n", d)
		}
		if b.Relay != "" {
			fmt.Fprintf(&src, "  Relay = %q\n", b.Relay)
		}
		fmt.Fprintf(&src, "  EHLO_Hostname = %q\n  Max_Outbound_Connections = %d\n  Server_Max_Outbound_Connections = %d\n  Suspend_Delivery = %t\n}\n",
			b.EHLOHostname, b.MaxOutboundConnections, b.ServerMaxOutboundConnections, b.SuspendDelivery)
	}
	c, err := config.Parse("/etc/vipmilter/vipmilter.conf", []byte(src.String()))
	if err != nil {
		panic(fmt.Sprintf("test binding file does not load: %v\n%s", err, src.String()))
	}
	return c
}

func binding(name string, addrs ...string) *config.Binding {
	b := &config.Binding{Name: name, EHLOHostname: config.EHLOHostname, MaxOutboundConnections: 32}
	for _, a := range addrs {
		p := netip.MustParseAddr(a)
		b.Addresses = append(b.Addresses, netip.PrefixFrom(p, p.BitLen()))
	}
	return b
}

// needPostfix skips on a laptop without Postfix or root, and fails under CI
// (testenv.Require).
func needPostfix(t *testing.T) {
	t.Helper()
	testenv.Require(t, testenv.PostfixServer)
}

// privateDir writes a private Postfix config directory (testenv.Postfix),
// not started; extraMain holds main.cf lines.
func privateDir(t *testing.T, extraMain string) string {
	t.Helper()
	return testenv.NewTestPostfix(t, nil, "smtpd_banner = hello", extraMain).Dir
}

func apply(t *testing.T, dir string, cfg *config.Config, dry bool) (*Result, string) {
	t.Helper()
	return applyOpts(t, dir, cfg, ApplyOptions{DryRun: dry}, nil)
}

// applyWith applies cfg with the options of dir's state changed by opt.
func applyWith(t *testing.T, dir string, cfg *config.Config, opt func(*Options)) (*Result, string) {
	t.Helper()
	return applyOpts(t, dir, cfg, ApplyOptions{}, opt)
}

func applyOpts(t *testing.T, dir string, cfg *config.Config, ao ApplyOptions, opt func(*Options)) (*Result, string) {
	t.Helper()
	ctx := context.Background()
	st, err := ReadState(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	opts := st.Options()
	opts.Key = testKey
	if opt != nil {
		opt(&opts)
	}
	plan, err := Render(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	ao.Out = &out
	res, err := Apply(ctx, plan, st, ao)
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	return res, out.String()
}
