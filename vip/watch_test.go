package vip

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestProvisionWatchReaddsDeletedAddress(t *testing.T) {
	n := newTestNS(t)
	p := newProv(t, n, t.TempDir(), slog.New(slog.DiscardHandler))
	ws := []Want{want("Example", "eth0", "192.0.2.10/32"), want("Example", "eth0", "2001:db8::10/128")}
	stop := startWatch(t, p, ws)
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
	stop()
}

// TestProvisionWatchSurvivesFlush: "ip addr flush" of thousands of binding
// addresses, with an event buffer so small that the kernel drops events:
// the watcher subscribes again and puts every address back.
func TestProvisionWatchSurvivesFlush(t *testing.T) {
	n := newTestNS(t)
	var logs syncBuffer
	p := newProv(t, n, t.TempDir(), slog.New(slog.NewTextHandler(&logs, nil)))
	p.rcvbuf = 1 // the kernel's minimum
	var ws []Want
	for i := range 2000 {
		ws = append(ws, want(fmt.Sprintf("b%d", i), "eth0", fmt.Sprintf("10.77.%d.%d/32", i/250, i%250+1)))
	}
	stop := startWatch(t, p, ws)
	count := func() int { return strings.Count(n.addrs(t, "eth0"), "inet 10.77.") }
	if c := count(); c != len(ws) {
		t.Fatalf("after the first pass %d addresses, want %d", c, len(ws))
	}
	ip(t, "-n", n.name, "addr", "flush", "dev", "eth0")
	eventually(t, "every address back after the flush", func() bool { return count() == len(ws) })
	stop()
	if !strings.Contains(logs.String(), "disappeared; added it again") {
		t.Errorf("no log line says an address was re-added:\n%.2000s", logs.String())
	}
	t.Logf("events lost and resubscribed: %v", strings.Contains(logs.String(), "address events lost"))
}

// TestProvisionWatchLocalRouteRemoved: a binding address covered by a
// local route is left alone; when the route goes, the watcher adds the
// address to its interface.
func TestProvisionWatchLocalRouteRemoved(t *testing.T) {
	n := newTestNS(t)
	ip(t, "-n", n.name, "route", "add", "local", "198.51.100.0/24", "dev", "lo")
	p := newProv(t, n, t.TempDir(), slog.New(slog.DiscardHandler))
	ws := []Want{want("Any", "eth0", "198.51.100.7/32")}
	stop := startWatch(t, p, ws)
	if strings.Contains(n.addrs(t, "eth0"), "198.51.100.7") {
		t.Fatal("a covered address was added")
	}
	ip(t, "-n", n.name, "route", "del", "local", "198.51.100.0/24", "dev", "lo")
	eventually(t, "the address added once its local route went", func() bool {
		return strings.Contains(n.addrs(t, "eth0"), "198.51.100.7/32")
	})
	stop()
}

// startWatch runs p.Watch on ws and returns once its first pass has run;
// stop ends it and fails the test if Watch returned an error.
func startWatch(t *testing.T, p *Provisioner, ws []Want) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ready := make(chan struct{})
	errc := make(chan error, 1)
	go func() { errc <- p.Watch(ctx, func() []Want { return ws }, func() { close(ready) }) }()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatal(err)
	}
	return func() {
		t.Helper()
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("watch returned %v", err)
		}
	}
}
