package vip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// DefaultProbes are the destinations whose routes CheckRoutes looks up:
// documentation addresses (RFC 5737 TEST-NET-2, RFC 3849), which no real
// host uses, and no packet is ever sent to them — a route lookup is a
// question to the kernel only. They stand for "somewhere on the Internet":
// with only a default route, every public destination takes the same path.
var DefaultProbes = []netip.Addr{netip.MustParseAddr("198.51.100.1"), netip.MustParseAddr("2001:db8:ffff::1")}

// RouteResult says whether mail from one binding address can leave.
type RouteResult struct {
	Want
	Probe netip.Addr
	Via   string // interface of the route, "" if none
	Gw    netip.Addr
	Err   error
}

func (r RouteResult) String() string {
	if r.Err != nil {
		return fmt.Sprintf("FAIL %s %s -> %s: %v", r.Binding, r.Prefix.Addr(), r.Probe, r.Err)
	}
	via := "dev " + r.Via
	if r.Gw.IsValid() {
		via = "via " + r.Gw.String() + " " + via
	}
	return fmt.Sprintf("ok   %s %s -> %s %s", r.Binding, r.Prefix.Addr(), r.Probe, via)
}

// CheckRoutes asks the kernel, for every wanted address, which route a
// packet from it to the probe of its family would take ("ip route get PROBE
// from ADDR"). It reports addresses the host cannot bind (neither on an
// interface nor covered by a local route, as for Presence), have no route,
// or whose route leaves by another interface than the binding's.
func (p *Provisioner) CheckRoutes(wants []Want, probes []netip.Addr) []RouteResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	var rs []RouteResult
	// The kernel answers a lookup from a foreign source address with
	// EINVAL or ENETUNREACH depending on the routes; checking presence
	// first (by the rule the milter and provision use) gives the
	// administrator the real cause.
	hs, err := readHost(p.h)
	if err == nil {
		err = hs.readLocal(p.h, p.ns)
	}
	for _, w := range wants {
		r := RouteResult{Want: w}
		a := w.Prefix.Addr()
		if err != nil {
			r.Err = err
			rs = append(rs, r)
			continue
		}
		if len(hs.addrs[a]) == 0 {
			lr, covered, ok := bindable(a, hs.local, hs.nonlocal6, false)
			switch {
			case covered && !ok:
				r.Err = errors.New(unbindable6(lr, hs) + " (or run vipmilter provision)")
			case !ok:
				r.Err = errors.New("the address is not configured on this host (run vipmilter provision)")
			}
			if r.Err != nil {
				rs = append(rs, r)
				continue
			}
		}
		for _, pr := range probes {
			if pr.Is4() == a.Is4() {
				r.Probe = pr
				break
			}
		}
		if !r.Probe.IsValid() {
			r.Err = errors.New("no probe address of this family")
			rs = append(rs, r)
			continue
		}
		routes, rerr := p.h.RouteGetWithOptions(net.IP(r.Probe.AsSlice()), &netlink.RouteGetOptions{SrcAddr: net.IP(a.AsSlice())})
		switch {
		case errors.Is(rerr, unix.ENETUNREACH), errors.Is(rerr, unix.EHOSTUNREACH):
			r.Err = errors.New("no route: mail from this address cannot leave")
		case errors.Is(rerr, unix.EINVAL) && a.IsLoopback():
			// The kernel never routes a loopback source off the host.
			r.Err = errors.New("a loopback address: mail from it cannot leave this host")
		case errors.Is(rerr, unix.EINVAL):
			r.Err = errors.New("the address is not configured on this host (run vipmilter provision)")
		case rerr != nil:
			r.Err = explain(rerr, "route lookup")
		case len(routes) == 0:
			r.Err = errors.New("no route")
		default:
			rt := routes[0]
			r.Via = hs.linkName(rt.LinkIndex)
			if gw, ok := netip.AddrFromSlice(rt.Gw); ok {
				r.Gw = gw.Unmap()
			}
			if r.Via == "lo" || rt.Type == unix.RTN_LOCAL {
				r.Err = errors.New("the probe is a local address; choose another --probe")
			} else if w.Interface != "" && r.Via != w.Interface {
				r.Err = fmt.Errorf("route leaves via %s, not the binding's interface %s", r.Via, w.Interface)
			}
		}
		rs = append(rs, r)
	}
	return rs
}
