package vip

import (
	"bytes"
	"context"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
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

// eventually is testenv.Eventually: poll cond until it holds; the deadline
// only bounds a hung test, it is not a performance assertion.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testenv.Eventually(t, what, cond)
}

// syncBuffer is a bytes.Buffer the watcher's goroutine and the test can
// share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// canBind reports whether a TCP socket inside the namespace can bind a:
// the kernel's own answer that presence and provisioning must agree with.
func (n *testNS) canBind(t *testing.T, a netip.Addr) bool {
	t.Helper()
	ok := false
	n.in(t, func() {
		l, err := net.Listen("tcp", netip.AddrPortFrom(a, 0).String())
		if err == nil {
			l.Close()
			ok = true
		}
	})
	return ok
}

// sysctl sets a sysctl inside the namespace, e.g.
// "net/ipv6/ip_nonlocal_bind", "1".
func (n *testNS) sysctl(t *testing.T, key, value string) {
	t.Helper()
	if _, err := n.Run(context.Background(), "sh", "-c", "echo "+value+" > /proc/sys/"+key); err != nil {
		t.Fatalf("sysctl %s=%s: %v", key, value, err)
	}
}
