package vip

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vipmilter/vipmilter/config"
)

// Presence tracks which addresses the host can bind and implements
// sieve.Liveness: a group skips members whose address is missing. An
// address is present when it is on an interface, or when a route of type
// local covers it (127.0.0.0/8 on lo, an AnyIP prefix such as "ip -6 route
// add local 2001:db8:100::/64 dev lo") and the kernel would let a socket
// bind it: IPv4 always, IPv6 only with net.ipv6.ip_nonlocal_bind=1.
// Reading addresses and routes and subscribing to their events needs no
// privilege, so the milter does it as its unprivileged user.
//
// Live is called for every message, so it only takes a read lock and looks
// up maps; the netlink work happens on one goroutine of its own.
type Presence struct {
	mu        sync.RWMutex
	addrs     map[netip.Addr]bool
	local     *localRoutes
	nonlocal6 bool

	log *slog.Logger
	ns  *netns.NsHandle // nil: the current namespace
	h   *netlink.Handle

	// changes counts logged changes (addresses and local routes that
	// appeared or disappeared); resyncs counts readings of the whole host
	// after events were lost. Tests read them.
	changes atomic.Uint64
	resyncs atomic.Uint64
}

// NewPresence starts following the host's addresses and local routes until
// ctx is done, logging changes to log (nil: nowhere; the command passes the
// logger it built, so --log-format applies to these lines too).
func NewPresence(ctx context.Context, log *slog.Logger) (*Presence, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	// The milter has no CAP_NET_ADMIN, so the buffer is capped at
	// net.core.rmem_max; an overflow costs a re-reading, nothing more.
	return newPresence(ctx, nil, log, eventBuffer)
}

func newPresence(ctx context.Context, ns *netns.NsHandle, log *slog.Logger, rcvbuf int) (*Presence, error) {
	p := &Presence{addrs: map[netip.Addr]bool{}, local: newLocalRoutes(), log: log, ns: ns, h: &netlink.Handle{}}
	if ns != nil {
		var err error
		if p.h, err = netlink.NewHandleAt(*ns); err != nil {
			return nil, fmt.Errorf("watch host addresses: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	events, err := subscribe(ctx, ns, rcvbuf, log)
	if err == nil {
		err = p.read(false)
	}
	if err != nil {
		cancel()
		p.h.Close()
		return nil, fmt.Errorf("watch host addresses: %w", err)
	}
	go p.run(ctx, cancel, events)
	return p, nil
}

// run applies events until ctx is done. After lost events the state can no
// longer be trusted and the host is read again. The IPv6 non-local bind
// setting has no events; it is read again with every local route change
// and periodically.
func (p *Presence) run(ctx context.Context, cancel context.CancelFunc, events <-chan hostEvent) {
	defer p.h.Close()
	defer cancel()
	tick := time.NewTicker(recheck)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			p.readSysctl()
		case ev, ok := <-events:
			switch {
			case !ok:
				return
			case ev.lost:
				p.resyncs.Add(1)
				for {
					err := p.read(true)
					if err == nil {
						break
					}
					p.log.Error("binding liveness may be stale", "err", err)
					select {
					case <-ctx.Done():
						return
					case <-time.After(time.Second):
					}
				}
			case ev.addr != nil:
				p.applyAddr(*ev.addr)
			case ev.route != nil:
				p.applyRoute(*ev.route)
			}
		}
	}
}

// read replaces the state with a reading of the host. With logChanges,
// the differences from the previous state are counted and logged, as
// after lost events.
func (p *Presence) read(logChanges bool) error {
	hs, err := readHost(p.h)
	if err == nil {
		err = hs.readLocal(p.h, p.ns)
	}
	if err != nil {
		return err
	}
	now := make(map[netip.Addr]bool, len(hs.addrs))
	for a := range hs.addrs {
		now[a] = true
	}
	p.mu.Lock()
	oldAddrs, oldLocal := p.addrs, p.local
	p.addrs, p.local, p.nonlocal6 = now, hs.local, hs.nonlocal6
	p.mu.Unlock()
	if !logChanges {
		return nil
	}
	for a := range oldAddrs {
		if !now[a] {
			p.changed("host address changed", netip.PrefixFrom(a, a.BitLen()), false)
		}
	}
	for a := range now {
		if !oldAddrs[a] {
			p.changed("host address changed", netip.PrefixFrom(a, a.BitLen()), true)
		}
	}
	for _, pr := range oldLocal.wide {
		if _, ok := hs.local.links[pr]; !ok {
			p.changed("local route changed", pr, false)
		}
	}
	for _, pr := range hs.local.wide {
		if _, ok := oldLocal.links[pr]; !ok {
			p.changed("local route changed", pr, true)
		}
	}
	return nil
}

func (p *Presence) readSysctl() {
	v := nonlocalBind6(p.ns)
	p.mu.Lock()
	p.nonlocal6 = v
	p.mu.Unlock()
}

func (p *Presence) applyAddr(u netlink.AddrUpdate) {
	ip, ok := netip.AddrFromSlice(u.LinkAddress.IP)
	if !ok {
		return
	}
	ip = ip.Unmap()
	p.mu.Lock()
	// An address on two interfaces that leaves one is off the map until
	// the next event; its local route, which the kernel keeps while any
	// interface has the address, still makes it present.
	before := p.addrs[ip]
	if u.NewAddr {
		p.addrs[ip] = true
	} else {
		delete(p.addrs, ip)
	}
	after := p.addrs[ip]
	p.mu.Unlock()
	if before != after {
		p.changed("host address changed", netip.PrefixFrom(ip, ip.BitLen()), after)
	}
}

func (p *Presence) applyRoute(u netlink.RouteUpdate) {
	r, ok := localRouteOf(u.Route)
	if !ok {
		return
	}
	// An AnyIP prefix usually comes with the sysctl that makes IPv6 binds
	// to it work: read it with the route. (Host routes come with every
	// interface address; the periodic reading covers a host-route AnyIP.)
	if !r.Prefix.IsSingleIP() {
		p.readSysctl()
	}
	p.mu.Lock()
	var changed bool
	if u.Type == unix.RTM_NEWROUTE {
		changed = p.local.add(r)
	} else {
		changed = p.local.remove(r)
	}
	p.mu.Unlock()
	// Host routes come and go with interface addresses, already logged.
	if changed && !r.Prefix.IsSingleIP() {
		p.changed("local route changed", r.Prefix, u.Type == unix.RTM_NEWROUTE)
	}
}

func (p *Presence) changed(msg string, pr netip.Prefix, present bool) {
	p.changes.Add(1)
	if pr.IsSingleIP() {
		p.log.Info(msg, "address", pr.Addr().String(), "present", present)
		return
	}
	p.log.Info(msg, "prefix", pr.String(), "present", present)
}

// has reports whether a is present; p.mu is held.
func (p *Presence) has(a netip.Addr) bool {
	if p.addrs[a] {
		return true
	}
	_, _, ok := bindable(a, p.local, p.nonlocal6, false)
	return ok
}

// Has reports whether the host can bind a: it is on an interface, or a
// local route covers it (see Presence).
func (p *Presence) Has(a netip.Addr) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.has(a.Unmap())
}

// Live reports whether the host can bind every address of b. A binding
// without addresses (the fallback) is always live.
func (p *Presence) Live(b *config.Binding) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, a := range b.Addresses {
		if !p.has(a.Addr().Unmap()) {
			return false
		}
	}
	return true
}
