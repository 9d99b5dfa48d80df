package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// Addresses of the namespaced test network. They come from the documentation
// ranges (RFC 5737, RFC 3849), which exist only inside the namespaces the
// harness creates.
const (
	MTAAddr4  = "192.0.2.2"
	MTAAddr6  = "2001:db8::2"
	SinkAddr4 = "192.0.2.254"
	SinkAddr6 = "2001:db8::254"
	// GoSinkAddr is where the concurrency sink listens, on the sink's eth0
	// (AddGoSinkRoute puts it there).
	GoSinkAddr = "198.51.100.254"
)

// Prereqs is what the harness needs from the machine.
var Prereqs = testenv.All(testenv.Namespaces, testenv.PostfixServer, testenv.SMTPSink, testenv.Swaks)

// Network is a pair of network namespaces joined by a veth pair: MTA runs
// Postfix and vipmilter, Sink runs the receiving SMTP servers. Both ends of
// the pair are called eth0, as names are per namespace.
type Network struct {
	MTA  *testenv.NS
	Sink *testenv.NS
}

// NewNetwork creates the namespaces, the veth pair and the base addresses.
// On error everything already created is removed again.
func NewNetwork(ctx context.Context) (*Network, error) {
	n := &Network{}
	err := n.setup(ctx)
	if err != nil {
		err = errors.Join(fmt.Errorf("network setup: %w", err), n.Close())
		return nil, err
	}
	return n, nil
}

func (n *Network) setup(ctx context.Context) error {
	var err error
	if n.MTA, err = testenv.NewNS(ctx, "vipe-mta"); err != nil {
		return err
	}
	if n.Sink, err = testenv.NewNS(ctx, "vipe-sink"); err != nil {
		return err
	}
	if err := n.MTA.Veth(ctx, "eth0", n.Sink, "eth0"); err != nil {
		return err
	}
	for _, a := range []struct {
		ns   *testenv.NS
		addr string
	}{{n.MTA, MTAAddr4 + "/24"}, {n.MTA, MTAAddr6 + "/64"}, {n.Sink, SinkAddr4 + "/24"}, {n.Sink, SinkAddr6 + "/64"}} {
		if err := a.ns.AddAddr(ctx, "eth0", netip.MustParsePrefix(a.addr)); err != nil {
			return err
		}
	}
	return nil
}

// AddAddress puts a binding address on the mta's eth0 with ip(8): the fallback
// when "vipmilter provision" is not used.
func (n *Network) AddAddress(ctx context.Context, addr string) error {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return fmt.Errorf("address %q: %w", addr, err)
	}
	return n.MTA.AddAddr(ctx, "eth0", netip.PrefixFrom(a, a.BitLen()))
}

// AddGoSinkRoute puts GoSinkAddr on the sink's eth0 and routes its network
// from the mta, once per Network.
func (n *Network) AddGoSinkRoute(ctx context.Context) error {
	if err := n.Sink.AddAddr(ctx, "eth0", netip.MustParsePrefix(GoSinkAddr+"/24")); err != nil {
		return err
	}
	_, err := n.MTA.IP(ctx, "route", "replace", "198.51.100.0/24", "dev", "eth0")
	return err
}

// Close deletes both namespaces; the veth pair goes with them.
func (n *Network) Close() error {
	var errs []error
	for _, ns := range []*testenv.NS{n.MTA, n.Sink} {
		if ns != nil {
			errs = append(errs, ns.Close())
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("network teardown: %w", err)
	}
	return nil
}
