package vip

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// host is one reading of what the kernel says about the host's addresses:
// the addresses on interfaces, the interfaces by name, and (when asked
// for) the local routes. Provisioning plans from it, so a dry run and a
// real run decide from the same facts.
type host struct {
	addrs map[netip.Addr][]hostAddr
	links map[string]int // interface name → index
	names map[int]string
	// local is nil until listed: a run in which every wanted address is on
	// its interface needs no route dump.
	local     *localRoutes
	nonlocal6 bool // net.ipv6.ip_nonlocal_bind
}

type hostAddr struct {
	link  int
	bits  int
	label string
}

// on reports whether a is configured on the interface with index link.
func (h *host) on(a netip.Addr, link int) bool {
	return slices.ContainsFunc(h.addrs[a], func(ha hostAddr) bool { return ha.link == link })
}

// linkName is the name of the interface with index i, for messages.
func (h *host) linkName(i int) string {
	if n, ok := h.names[i]; ok {
		return n
	}
	return fmt.Sprintf("index %d", i)
}

// dumpRetries bounds how often an interrupted dump is repeated.
const dumpRetries = 10

// retryDump repeats an interrupted dump. While addresses change (a flush, a
// network manager restart: exactly when the watcher and the milter's
// presence look) the kernel marks a dump interrupted and its result may
// miss entries; acting on it would re-add or skip the wrong addresses.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 1; ; i++ {
		list, err := dump()
		if err == nil || !errors.Is(err, netlink.ErrDumpInterrupted) || i == dumpRetries {
			return list, err
		}
	}
}

// readHost dumps every address and interface in h's namespace: one
// round trip each, however many addresses a run checks.
func readHost(h *netlink.Handle) (*host, error) {
	list, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return nil, explain(err, "list addresses")
	}
	links, err := retryDump(h.LinkList)
	if err != nil {
		return nil, explain(err, "list interfaces")
	}
	hs := &host{
		addrs: make(map[netip.Addr][]hostAddr, len(list)),
		links: make(map[string]int, len(links)),
		names: make(map[int]string, len(links)),
	}
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		hs.addrs[ip.Unmap()] = append(hs.addrs[ip.Unmap()], hostAddr{link: a.LinkIndex, bits: bits, label: a.Label})
	}
	for _, l := range links {
		hs.links[l.Attrs().Name] = l.Attrs().Index
		hs.names[l.Attrs().Index] = l.Attrs().Name
	}
	return hs, nil
}

// readLocal adds the local routes and the IPv6 non-local bind setting of
// namespace ns to hs.
func (hs *host) readLocal(h *netlink.Handle, ns *netns.NsHandle) error {
	l, err := listLocalRoutes(h)
	if err != nil {
		return err
	}
	hs.local, hs.nonlocal6 = l, nonlocalBind6(ns)
	return nil
}

// localRoute is a route of type local in the local routing table ("ip
// route show table local"): the kernel treats every address it covers as
// its own. Each interface address has one (a host route); 127.0.0.0/8 on
// lo and "AnyIP" prefixes (ip -6 route add local 2001:db8:100::/64 dev lo)
// cover many addresses that are on no interface.
type localRoute struct {
	Prefix netip.Prefix
	Link   int
}

// localRouteOf returns r as a localRoute, or false if it is not one.
func localRouteOf(r netlink.Route) (localRoute, bool) {
	if r.Table != unix.RT_TABLE_LOCAL || r.Type != unix.RTN_LOCAL {
		return localRoute{}, false
	}
	if r.Dst == nil { // a default route: the whole family
		if r.Family == netlink.FAMILY_V6 {
			return localRoute{netip.PrefixFrom(netip.IPv6Unspecified(), 0), r.LinkIndex}, true
		}
		return localRoute{netip.PrefixFrom(netip.IPv4Unspecified(), 0), r.LinkIndex}, true
	}
	ip, ok := netip.AddrFromSlice(r.Dst.IP)
	if !ok {
		return localRoute{}, false
	}
	bits, total := r.Dst.Mask.Size()
	if ip.Is4In6() && total == 128 {
		bits -= 96
	}
	p, err := ip.Unmap().Prefix(bits)
	if err != nil {
		return localRoute{}, false
	}
	return localRoute{p, r.LinkIndex}, true
}

// localRoutes is a set of local routes, looked up by the address they
// cover. Host routes (one per interface address) are found by one map
// lookup; the few wider ones are scanned.
type localRoutes struct {
	links map[netip.Prefix][]int // prefix → interfaces with a local route for it
	wide  []netip.Prefix         // the prefixes in links that are not host routes
}

func newLocalRoutes() *localRoutes {
	return &localRoutes{links: map[netip.Prefix][]int{}}
}

// add records r and reports whether its prefix was new.
func (l *localRoutes) add(r localRoute) bool {
	ls := l.links[r.Prefix]
	if slices.Contains(ls, r.Link) {
		return false
	}
	l.links[r.Prefix] = append(ls, r.Link)
	if len(ls) > 0 {
		return false
	}
	if !r.Prefix.IsSingleIP() {
		l.wide = append(l.wide, r.Prefix)
	}
	return true
}

// remove forgets r and reports whether its prefix is gone.
func (l *localRoutes) remove(r localRoute) bool {
	ls, ok := l.links[r.Prefix]
	if !ok {
		return false
	}
	ls = slices.DeleteFunc(ls, func(i int) bool { return i == r.Link })
	if len(ls) > 0 {
		l.links[r.Prefix] = ls
		return false
	}
	delete(l.links, r.Prefix)
	l.wide = slices.DeleteFunc(l.wide, func(p netip.Prefix) bool { return p == r.Prefix })
	return true
}

// covering returns a local route whose prefix contains a. With wideOnly,
// a's own host route is ignored: provisioning asks whether a would still
// be covered once it is removed from an interface.
func (l *localRoutes) covering(a netip.Addr, wideOnly bool) (localRoute, bool) {
	if !wideOnly {
		host := netip.PrefixFrom(a, a.BitLen())
		if ls := l.links[host]; len(ls) > 0 {
			return localRoute{host, ls[0]}, true
		}
	}
	for _, p := range l.wide {
		if p.Contains(a) {
			return localRoute{p, l.links[p][0]}, true
		}
	}
	return localRoute{}, false
}

func listLocalRoutes(h *netlink.Handle) (*localRoutes, error) {
	filter := &netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL}
	list, err := retryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
	})
	if err != nil {
		return nil, explain(err, "list local routes")
	}
	l := newLocalRoutes()
	for _, r := range list {
		if lr, ok := localRouteOf(r); ok {
			l.add(lr)
		}
	}
	return l, nil
}

// bindable reports whether a socket can bind a, an address on no
// interface, because a local route covers it: for IPv4 that is the whole
// rule (inet_bind asks the local table), but IPv6's bind looks only at
// interface addresses, so a covered IPv6 address is bindable only with
// net.ipv6.ip_nonlocal_bind = 1. A non-local bind to an address no local
// route covers also succeeds with that setting, but replies to it never
// reach the host: it is not present. It returns the covering route, if
// any (covered), and whether a is bindable through it (ok); wideOnly is as
// for localRoutes.covering.
func bindable(a netip.Addr, l *localRoutes, nonlocal6, wideOnly bool) (r localRoute, covered, ok bool) {
	if l == nil {
		return localRoute{}, false, false
	}
	r, covered = l.covering(a, wideOnly)
	return r, covered, covered && (a.Is4() || nonlocal6)
}

// nonlocalBind6 reads net.ipv6.ip_nonlocal_bind in namespace ns (nil: the
// current one). /proc/sys/net shows the namespace of the thread that opens
// it. Unreadable (IPv6 disabled) counts as 0.
func nonlocalBind6(ns *netns.NsHandle) bool {
	var b []byte
	if err := inNamespace(ns, func() { b, _ = os.ReadFile("/proc/sys/net/ipv6/ip_nonlocal_bind") }); err != nil {
		return false
	}
	return strings.TrimSpace(string(b)) == "1"
}

// inNamespace runs f on a thread in namespace ns (nil: the current one).
func inNamespace(ns *netns.NsHandle, f func()) error {
	if ns == nil {
		f()
		return nil
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Never unlocked: the thread dies with the goroutine rather than
		// run other goroutines in ns.
		if err := netns.Set(*ns); err != nil {
			errc <- err
			return
		}
		f()
		errc <- nil
	}()
	return <-errc
}
