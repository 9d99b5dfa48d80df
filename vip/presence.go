package vip

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/vipmilter/vipmilter/config"
)

// Presence tracks which addresses are configured on the host and implements
// sieve.Liveness: a group skips members whose address is missing. Reading
// addresses and subscribing to their events needs no privilege, so the
// milter does it as its unprivileged user.
type Presence struct {
	mu    sync.RWMutex
	addrs map[netip.Addr]bool
	log   *slog.Logger

	// Changes counts address events seen, for tests and metrics.
	Changes atomic.Uint64
}

// NewPresence starts watching host addresses until ctx is done.
func NewPresence(ctx context.Context) (*Presence, error) {
	return newPresence(ctx, nil, slog.Default())
}

func newPresence(ctx context.Context, ns *netns.NsHandle, log *slog.Logger) (*Presence, error) {
	p := &Presence{addrs: map[netip.Addr]bool{}, log: log}
	updates := make(chan netlink.AddrUpdate, 256)
	done := make(chan struct{})
	// Subscribing with ListExisting sends the current addresses first, so
	// there is no gap between a listing and the subscription.
	err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{
		Namespace:    ns,
		ListExisting: true,
		ErrorCallback: func(err error) {
			log.Error("address events lost; binding liveness may be stale", "err", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("watch host addresses: %w", err)
	}
	h := &netlink.Handle{}
	if ns != nil {
		if h, err = netlink.NewHandleAt(*ns); err != nil {
			close(done)
			return nil, fmt.Errorf("watch host addresses: %w", err)
		}
	}
	list, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		close(done)
		return nil, fmt.Errorf("list host addresses: %w", err)
	}
	// The listing is authoritative at start; events then keep it current.
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			p.addrs[ip.Unmap()] = true
		}
	}
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case u, ok := <-updates:
				if !ok {
					return
				}
				p.apply(u)
			}
		}
	}()
	return p, nil
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
		p.Changes.Add(1)
		p.log.Info("host address changed", "address", ip.String(), "present", after)
	}
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
