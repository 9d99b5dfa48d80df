package vip

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// testNS is a network namespace made for one test: a veth pair eth0/eth1
// inside it, both up, so nothing the test does reaches the host's own
// interfaces.
type testNS struct {
	name string
	ns   netns.NsHandle
	h    *netlink.Handle
}

// needRoot skips on a developer laptop and fails in CI (CI=true), where the
// namespace tests must run.
func needRoot(t *testing.T) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create network namespaces"
	} else if _, err := exec.LookPath("ip"); err != nil {
		why = "needs iproute2's ip command (apt-get install iproute2)"
	}
	if why == "" {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatalf("%s; CI must run these tests", why)
	}
	t.Skip(why)
}

func ip(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newTestNS(t *testing.T) *testNS {
	t.Helper()
	needRoot(t)
	b := make([]byte, 4)
	rand.Read(b)
	name := "vipt-" + hex.EncodeToString(b)
	ip(t, "netns", "add", name)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", name).Run() })
	ip(t, "-n", name, "link", "set", "lo", "up")
	ip(t, "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
	ip(t, "-n", name, "link", "set", "eth0", "up")
	ip(t, "-n", name, "link", "set", "eth1", "up")
	ns, err := netns.GetFromName(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return &testNS{name: name, ns: ns, h: h}
}

// addrs lists the addresses on dev as "ip -br addr" shows them.
func (n *testNS) addrs(t *testing.T, dev string) string {
	return ip(t, "-n", n.name, "addr", "show", "dev", dev)
}

// in runs f with the calling thread inside the namespace.
func (n *testNS) in(t *testing.T, f func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is left locked and dies with the goroutine, so it can
		// never run other goroutines in the test namespace.
		if err := netns.Set(n.ns); err != nil {
			t.Errorf("enter namespace: %v", err)
			return
		}
		f()
	}()
	<-done
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
	out, err := exec.Command("ip", "netns", "exec", n.name, "sh", "-c", "echo "+value+" > /proc/sys/"+key).CombinedOutput()
	if err != nil {
		t.Fatalf("sysctl %s=%s: %v\n%s", key, value, err, out)
	}
}
