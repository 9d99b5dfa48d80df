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

	"github.com/vipmilter/vipmilter/config"
)

// Presence tracks which addresses are configured on the host and implements
// sieve.Liveness: a group skips members whose address is missing. Reading
// addresses and subscribing to their events needs no privilege, so the
// milter does it as its unprivileged user.
//
// Live is called for every message, so it only takes a read lock and looks
// up a map; the netlink work happens on one goroutine of its own.
type Presence struct {
	mu    sync.RWMutex
	addrs map[netip.Addr]bool
	log   *slog.Logger
	ns    *netns.NsHandle // nil: the current namespace
	// rcvbuf is the subscription's receive buffer (0: the system default);
	// tests shrink it to make the kernel drop events.
	rcvbuf int

	// Changes counts addresses that appeared or disappeared, for tests
	// and metrics.
	Changes atomic.Uint64
	// Resyncs counts full re-listings after address events were lost.
	Resyncs atomic.Uint64
}

// NewPresence starts watching host addresses until ctx is done.
func NewPresence(ctx context.Context, log *slog.Logger) (*Presence, error) {
	if log == nil {
		log = slog.Default()
	}
	// The milter has no CAP_NET_ADMIN, so the buffer is capped at
	// net.core.rmem_max; an overflow costs a re-listing, nothing more.
	return newPresence(ctx, nil, log, eventBuffer)
}

func newPresence(ctx context.Context, ns *netns.NsHandle, log *slog.Logger, rcvbuf int) (*Presence, error) {
	p := &Presence{addrs: map[netip.Addr]bool{}, log: log, ns: ns, rcvbuf: rcvbuf}
	updates, done, err := p.sync(false)
	if err != nil {
		return nil, err
	}
	go p.run(ctx, updates, done)
	return p, nil
}

// sync subscribes to address events, then lists the host's addresses and
// replaces the set with the listing. Subscribing first leaves no gap: a
// change after the listing arrives as an event, one before it is in the
// listing (and its event, applied after, agrees). With logChanges, the
// differences from the previous set are counted and logged, as after lost
// events.
func (p *Presence) sync(logChanges bool) (<-chan netlink.AddrUpdate, chan struct{}, error) {
	updates := make(chan netlink.AddrUpdate, 1024)
	done := make(chan struct{})
	err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{
		Namespace:         p.ns,
		ReceiveBufferSize: p.rcvbuf,
		ErrorCallback: func(err error) {
			select {
			case <-done: // closed by us: the receive error is the close
			default:
				p.log.Warn("address events", "err", err)
			}
		},
	})
	if err != nil {
		close(done)
		return nil, nil, fmt.Errorf("watch host addresses: %w", err)
	}
	h := &netlink.Handle{}
	if p.ns != nil {
		if h, err = netlink.NewHandleAt(*p.ns); err != nil {
			close(done)
			return nil, nil, fmt.Errorf("watch host addresses: %w", err)
		}
		defer h.Close()
	}
	list, err := listAddrs(h)
	if err != nil {
		close(done)
		return nil, nil, fmt.Errorf("list host addresses: %w", err)
	}
	now := make(map[netip.Addr]bool, len(list))
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			now[ip.Unmap()] = true
		}
	}
	p.mu.Lock()
	old := p.addrs
	p.addrs = now
	p.mu.Unlock()
	if logChanges {
		for a := range old {
			if !now[a] {
				p.changed(a, false)
			}
		}
		for a := range now {
			if !old[a] {
				p.changed(a, true)
			}
		}
	}
	return updates, done, nil
}

// run applies events until ctx is done. When the kernel drops events (the
// subscription's buffer overflowed and the library ends it), the set can no
// longer be trusted: it subscribes again and re-lists.
func (p *Presence) run(ctx context.Context, updates <-chan netlink.AddrUpdate, done chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			close(done)
			return
		case u, ok := <-updates:
			if ok {
				p.apply(u)
				continue
			}
			close(done)
			p.Resyncs.Add(1)
			p.log.Warn("address events lost; listing host addresses again")
			for {
				var err error
				if updates, done, err = p.sync(true); err == nil {
					break
				}
				p.log.Error("binding liveness may be stale", "err", err)
				select {
				case <-ctx.Done():
					return
				case <-time.After(time.Second):
				}
			}
		}
	}
}

func (p *Presence) apply(u netlink.AddrUpdate) {
	ip, ok := netip.AddrFromSlice(u.LinkAddress.IP)
	if !ok {
		return
	}
	ip = ip.Unmap()
	p.mu.Lock()
	// An address on two interfaces that leaves one is reported missing
	// until the next event: binding addresses live on one interface.
	before := p.addrs[ip]
	if u.NewAddr {
		p.addrs[ip] = true
	} else {
		delete(p.addrs, ip)
	}
	after := p.addrs[ip]
	p.mu.Unlock()
	if before != after {
		p.changed(ip, after)
	}
}

func (p *Presence) changed(a netip.Addr, present bool) {
	p.Changes.Add(1)
	p.log.Info("host address changed", "address", a.String(), "present", present)
}

// Has reports whether a is configured on the host.
func (p *Presence) Has(a netip.Addr) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.addrs[a.Unmap()]
}

// Live reports whether every address of b is configured on the host. A
// binding without addresses (the fallback) is always live.
func (p *Presence) Live(b *config.Binding) bool {
	p.mu.RLock()
	defer p.mu.RUnlock()
	for _, a := range b.Addresses {
		if !p.addrs[a.Addr()] {
			return false
		}
	}
	return true
}
