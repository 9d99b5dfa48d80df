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
// from ADDR"). It reports addresses that are not on the host, have no route,
// or whose route leaves by another interface than the binding's.
func (p *Provisioner) CheckRoutes(wants []Want, probes []netip.Addr) []RouteResult {
	p.mu.Lock()
	defer p.mu.Unlock()
	var rs []RouteResult
	// The kernel answers a lookup from a foreign source address with
	// EINVAL or ENETUNREACH depending on the routes; checking presence
	// first gives the administrator the real cause.
	ha, dumpErr := p.dump()
	for _, w := range wants {
		r := RouteResult{Want: w}
		if dumpErr == nil && len(ha.byAddr[w.Prefix.Addr()]) == 0 {
			r.Err = errors.New("the address is not configured on this host (run vipmilter provision)")
			rs = append(rs, r)
			continue
		}
		for _, pr := range probes {
			if pr.Is4() == w.Prefix.Addr().Is4() {
				r.Probe = pr
				break
			}
		}
		if !r.Probe.IsValid() {
			r.Err = errors.New("no probe address of this family")
			rs = append(rs, r)
			continue
		}
		routes, err := p.h.RouteGetWithOptions(net.IP(r.Probe.AsSlice()), &netlink.RouteGetOptions{SrcAddr: net.IP(w.Prefix.Addr().AsSlice())})
		switch {
		case errors.Is(err, unix.ENETUNREACH), errors.Is(err, unix.EHOSTUNREACH):
			r.Err = errors.New("no route: mail from this address cannot leave")
		case errors.Is(err, unix.EINVAL):
			r.Err = errors.New("the address is not configured on this host (run vipmilter provision)")
		case err != nil:
			r.Err = explain(err, "route lookup")
		case len(routes) == 0:
			r.Err = errors.New("no route")
		default:
			rt := routes[0]
			if lk, err := p.h.LinkByIndex(rt.LinkIndex); err == nil {
				r.Via = lk.Attrs().Name
			}
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
