package testenv

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// NS is a network namespace made by the test ("ip netns add"), with lo up.
// Everything configured in it goes with it when it is closed, so a test
// never touches the host's interfaces. A nil *NS stands for the host
// namespace in Command, Run, Listening and WaitListen (a private Postfix or
// a sink on loopback addresses).
type NS struct {
	Name   string // the name under /var/run/netns
	handle netns.NsHandle
	nl     *netlink.Handle
}

// NewNS creates a namespace named prefix plus a random suffix, so
// concurrent tests never share one, and brings its lo up.
func NewNS(ctx context.Context, prefix string) (*NS, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("namespace name: %w", err)
	}
	n := &NS{Name: prefix + "-" + hex.EncodeToString(b[:]), handle: netns.None()}
	if _, err := Run(ctx, "ip", "netns", "add", n.Name); err != nil {
		return nil, err
	}
	if _, err := n.IP(ctx, "link", "set", "lo", "up"); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// NewTestNS is NewNS for a test: it checks the Namespaces prerequisites
// and deletes the namespace when the test ends.
func NewTestNS(t testing.TB, prefix string) *NS {
	t.Helper()
	Require(t, Namespaces)
	n, err := NewNS(context.Background(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	CloseAtEnd(t, n)
	return n
}

// IP runs "ip -n NAME args..." and returns its output.
func (n *NS) IP(ctx context.Context, args ...string) (string, error) {
	return Run(ctx, "ip", append([]string{"-n", n.Name}, args...)...)
}

// MustIP is IP failing the test on error.
func (n *NS) MustIP(t testing.TB, args ...string) string {
	t.Helper()
	out, err := n.IP(context.Background(), args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// Command returns a command that runs name inside the namespace. "ip netns
// exec" execs it, so the command's process is name itself and can be
// signalled directly.
func (n *NS) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	if n == nil {
		return exec.CommandContext(ctx, name, args...)
	}
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", n.Name, name}, args...)...)
}

// Run runs name inside the namespace and returns its combined output.
func (n *NS) Run(ctx context.Context, name string, args ...string) (string, error) {
	return output(n.Command(ctx, name, args...))
}

// Veth creates a veth pair, name in n and peerName in peer (which may be n
// itself), and brings both ends up. Creating it inside n, not in the host
// namespace, keeps concurrent tests from colliding on names.
func (n *NS) Veth(ctx context.Context, name string, peer *NS, peerName string) error {
	if _, err := n.IP(ctx, "link", "add", name, "type", "veth", "peer", "name", peerName, "netns", peer.Name); err != nil {
		return err
	}
	if _, err := n.IP(ctx, "link", "set", name, "up"); err != nil {
		return err
	}
	_, err := peer.IP(ctx, "link", "set", peerName, "up")
	return err
}

// AddAddr puts addr (with its prefix length) on dev; IPv6 addresses skip
// duplicate address detection so they are usable at once. An address
// already there is replaced, not an error.
func (n *NS) AddAddr(ctx context.Context, dev string, addr netip.Prefix) error {
	args := []string{"addr", "replace", addr.String(), "dev", dev}
	if addr.Addr().Is6() {
		args = append(args, "nodad")
	}
	_, err := n.IP(ctx, args...)
	return err
}

// Addrs lists dev's addresses as "ip addr show" prints them.
func (n *NS) Addrs(ctx context.Context, dev string) (string, error) {
	return n.IP(ctx, "addr", "show", "dev", dev)
}

// Handle is a handle on the namespace for netns/netlink calls; it is closed
// with the namespace.
func (n *NS) Handle() (netns.NsHandle, error) {
	if !n.handle.IsOpen() {
		h, err := netns.GetFromName(n.Name)
		if err != nil {
			return netns.None(), fmt.Errorf("namespace %s: %w", n.Name, err)
		}
		n.handle = h
	}
	return n.handle, nil
}

// Netlink is a netlink handle whose requests act inside the namespace; it
// is closed with the namespace.
func (n *NS) Netlink() (*netlink.Handle, error) {
	if n.nl == nil {
		h, err := n.Handle()
		if err != nil {
			return nil, err
		}
		if n.nl, err = netlink.NewHandleAt(h); err != nil {
			return nil, fmt.Errorf("netlink in %s: %w", n.Name, err)
		}
	}
	return n.nl, nil
}

// Do runs f on an OS thread inside the namespace. Sockets f opens stay in
// the namespace after it returns. The thread is never moved back: it stays
// locked and ends with f's goroutine, so no other goroutine ever runs in
// the namespace by accident.
func (n *NS) Do(f func() error) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(h); err != nil {
			done <- fmt.Errorf("enter namespace %s: %w", n.Name, err)
			return
		}
		done <- f()
	}()
	return <-done
}

// Dial opens a TCP connection from inside the namespace.
func (n *NS) Dial(ctx context.Context, addr string) (net.Conn, error) {
	var conn net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s in %s: %w", addr, n.Name, err)
	}
	return conn, nil
}

// Listen opens a TCP listener inside the namespace.
func (n *NS) Listen(addr string) (net.Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, n.Name, err)
	}
	return ln, nil
}

// Listening reports whether a TCP socket listens on addr ("host:port",
// "[v6]:port") inside the namespace, or on the same port on every address.
// It reads ss(8), so the check opens no connection to the listener.
func (n *NS) Listening(ctx context.Context, addr string) (bool, error) {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false, err
	}
	out, err := n.Run(ctx, "ss", "-Hltn")
	if err != nil {
		return false, err
	}
	for _, l := range []string{addr, "*:" + port, "0.0.0.0:" + port, "[::]:" + port} {
		if strings.Contains(out, " "+l+" ") {
			return true, nil
		}
	}
	return false, nil
}

// WaitListen polls Listening until it holds.
func (n *NS) WaitListen(ctx context.Context, addr string) error {
	return Poll(ctx, 50*time.Millisecond, func() (bool, error) { return n.Listening(ctx, addr) }, "a listener on "+addr+" in "+n.String())
}

// Close deletes the namespace; its links and addresses go with it.
func (n *NS) Close() error {
	if n.nl != nil {
		n.nl.Close()
		n.nl = nil
	}
	if n.handle.IsOpen() {
		n.handle.Close()
		n.handle = netns.None()
	}
	if _, err := Run(context.Background(), "ip", "netns", "del", n.Name); err != nil && !strings.Contains(err.Error(), "No such file") {
		return err
	}
	return nil
}

// String is the namespace's name, "host" for nil.
func (n *NS) String() string {
	if n == nil {
		return "host"
	}
	return n.Name
}
