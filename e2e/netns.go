package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Addresses of the namespaced test network. They come from the documentation
// ranges (RFC 5737, RFC 3849), which exist only inside the namespaces the
// harness creates.
const (
	MTAAddr4  = "192.0.2.2"
	MTAAddr6  = "2001:db8::2"
	SinkAddr4 = "192.0.2.254"
	SinkAddr6 = "2001:db8::254"
)

// Network is a pair of network namespaces joined by a veth pair: "mta" runs
// Postfix and vipmilter, "sink" runs the receiving SMTP servers. Both ends of
// the pair are called eth0, as names are per namespace.
type Network struct {
	MTA  string
	Sink string
}

func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// NewNetwork creates the namespaces, the veth pair and the base addresses.
// On error everything already created is removed again.
func NewNetwork(ctx context.Context) (*Network, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("namespace name: %w", err)
	}
	id := hex.EncodeToString(b[:])
	n := &Network{MTA: "vipe-" + id + "-mta", Sink: "vipe-" + id + "-sink"}
	if err := n.setup(ctx, id); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

func (n *Network) setup(ctx context.Context, id string) error {
	// The veth is created in the host namespace under unique temporary names
	// and moved at once, so concurrent runs never collide on "eth0".
	a, z := "vpa"+id, "vpz"+id
	steps := [][]string{
		{"ip", "netns", "add", n.MTA},
		{"ip", "netns", "add", n.Sink},
		{"ip", "link", "add", a, "type", "veth", "peer", "name", z},
		{"ip", "link", "set", a, "netns", n.MTA},
		{"ip", "link", "set", z, "netns", n.Sink},
		{"ip", "-n", n.MTA, "link", "set", a, "name", "eth0"},
		{"ip", "-n", n.Sink, "link", "set", z, "name", "eth0"},
	}
	for _, ns := range []struct{ name, v4, v6 string }{{n.MTA, MTAAddr4, MTAAddr6}, {n.Sink, SinkAddr4, SinkAddr6}} {
		steps = append(steps,
			[]string{"ip", "-n", ns.name, "link", "set", "lo", "up"},
			[]string{"ip", "-n", ns.name, "addr", "add", ns.v4 + "/24", "dev", "eth0"},
			[]string{"ip", "-n", ns.name, "addr", "add", ns.v6 + "/64", "dev", "eth0", "nodad"},
			[]string{"ip", "-n", ns.name, "link", "set", "eth0", "up"},
		)
	}
	for _, s := range steps {
		if _, err := run(ctx, s[0], s[1:]...); err != nil {
			return fmt.Errorf("network setup: %w", err)
		}
	}
	return nil
}

// AddAddress puts a binding address on the mta's eth0 with ip(8): the fallback
// when "vipmilter provision" is not used.
func (n *Network) AddAddress(ctx context.Context, addr string) error {
	prefix := "/32"
	if strings.Contains(addr, ":") {
		prefix = "/128"
	}
	args := []string{"-n", n.MTA, "addr", "replace", addr + prefix, "dev", "eth0"}
	if prefix == "/128" {
		args = append(args, "nodad")
	}
	if _, err := run(ctx, "ip", args...); err != nil {
		return fmt.Errorf("address %s: %w", addr, err)
	}
	return nil
}

// Exec returns a command that runs inside namespace ns.
func Exec(ctx context.Context, ns, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns, name}, args...)...)
}

// Close deletes both namespaces; the veth pair goes with them.
func (n *Network) Close() error {
	var errs []string
	for _, ns := range []string{n.MTA, n.Sink} {
		if _, err := run(context.Background(), "ip", "netns", "del", ns); err != nil && !strings.Contains(err.Error(), "No such file") {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("network teardown: %s", strings.Join(errs, "; "))
	}
	return nil
}

// DialIn opens a TCP connection from inside namespace ns. The socket is made
// on a thread moved into ns for the call, and stays in ns afterwards.
func DialIn(ctx context.Context, ns, addr string) (net.Conn, error) {
	runtime.LockOSThread()
	orig, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("dial in %s: %w", ns, err)
	}
	defer orig.Close()
	target, err := os.Open("/var/run/netns/" + ns)
	if err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("dial in %s: %w", ns, err)
	}
	defer target.Close()
	if err := setns(target); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("dial in %s: %w", ns, err)
	}
	var d net.Dialer
	conn, dialErr := d.DialContext(ctx, "tcp", addr)
	if err := setns(orig); err != nil {
		// The thread is stuck in ns: keep it locked so it exits with
		// this goroutine instead of running other goroutines.
		if conn != nil {
			conn.Close()
		}
		return nil, fmt.Errorf("dial in %s: back to the original namespace: %w", ns, err)
	}
	runtime.UnlockOSThread()
	if dialErr != nil {
		return nil, fmt.Errorf("dial %s in %s: %w", addr, ns, dialErr)
	}
	return conn, nil
}

func setns(f *os.File) error {
	return unix.Setns(int(f.Fd()), unix.CLONE_NEWNET)
}
