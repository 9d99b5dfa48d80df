package vip

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// eventually polls cond until it holds or a generous deadline passes. The
// deadline only bounds a hung test; it is not a performance assertion.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWatchReaddsDeletedAddress(t *testing.T) {
	n := newTestNS(t)
	p := newProv(t, n, t.TempDir(), slog.New(slog.DiscardHandler))
	ws := []Want{want("Example", "eth0", "192.0.2.10/32"), want("Example", "eth0", "2001:db8::10/128")}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- p.Watch(ctx, &n.ns, func() []Want { return ws }, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatal(err)
	}
	has := func(s string) func() bool {
		return func() bool { return strings.Contains(n.addrs(t, "eth0"), s) }
	}
	eventually(t, "first pass", has("192.0.2.10/32"))
	for _, a := range []string{"192.0.2.10/32", "2001:db8::10/128"} {
		ip(t, "-n", n.name, "addr", "del", a, "dev", "eth0")
		eventually(t, a+" re-added after ip addr del", has(a))
	}
	ip(t, "-n", n.name, "addr", "flush", "dev", "eth0")
	eventually(t, "re-added after ip addr flush", func() bool { return has("192.0.2.10/32")() && has("2001:db8::10/128")() })
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("watch returned %v", err)
	}
}
