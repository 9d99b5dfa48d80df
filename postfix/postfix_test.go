package postfix

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/testenv"
)

func testConfig(bindings ...*config.Binding) *config.Config {
	c := &config.Config{
		File: "/etc/vipmilter/vipmilter.conf", MilterListen: config.MustParseListen("inet:127.0.0.1:8894"),
		BindingHeader: "X-Binding", OnMilterDown: config.MilterDownAccept, TransportPrefix: "vip_",
		Bindings: bindings,
	}
	c.Index()
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
	ctx := context.Background()
	st, err := ReadState(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	plan, err := Render(cfg, st.Options())
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	res, err := Apply(ctx, plan, st, ApplyOptions{DryRun: dry, Out: &out})
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	return res, out.String()
}
