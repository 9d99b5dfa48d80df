package vip

import (
	"context"
	"log/slog"
	"os"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// testNS is a network namespace made for one test (testenv.NewTestNS,
// which skips or, under CI, fails without root): a veth pair eth0/eth1
// inside it, both up, so nothing the test does reaches the host's own
// interfaces.
type testNS struct {
	*testenv.NS
	name string
	ns   netns.NsHandle
}

// ip runs ip(8) with args, failing the test on error.
func ip(t *testing.T, args ...string) string {
	t.Helper()
	return testenv.MustRun(t, "ip", args...)
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	n := testenv.NewTestNS(t, "vipt")
	if err := n.Veth(context.Background(), "eth0", n, "eth1"); err != nil {
		t.Fatal(err)
	}
	h, err := n.Handle()
	if err != nil {
		t.Fatal(err)
	}
	return &testNS{NS: n, name: n.Name, ns: h}
}

// addrs lists the addresses on dev as "ip addr show" prints them.
func (n *testNS) addrs(t *testing.T, dev string) string {
	t.Helper()
	return n.MustIP(t, "addr", "show", "dev", dev)
}

// in runs f with the calling thread inside the namespace.
func (n *testNS) in(t *testing.T, f func()) {
	t.Helper()
	if err := n.Do(func() error { f(); return nil }); err != nil {
		t.Error(err)
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func newProv(t *testing.T, n *testNS, dir string, log *slog.Logger) *Provisioner {
	t.Helper()
	p, err := NewProvisioner(&n.ns, dir, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}
