package vip

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Watch keeps wants on the host until ctx is done: it subscribes to address
// events and re-adds a wanted address that disappears (a network manager
// restart, an administrator's "ip addr flush"). wants is called for the
// current list on every check, so a reload takes effect at once. ns selects
// the namespace to watch (nil: the current one). ready, if not nil, is
// called once the subscription is live and a first pass has run.
func (p *Provisioner) Watch(ctx context.Context, ns *netns.NsHandle, wants func() []Want, ready func()) error {
	updates := make(chan netlink.AddrUpdate, 256)
	done := make(chan struct{})
	defer close(done)
	subErr := make(chan error, 1)
	opts := netlink.AddrSubscribeOptions{
		Namespace: ns,
		ErrorCallback: func(err error) {
			select {
			case subErr <- err:
			default:
			}
		},
	}
	if err := netlink.AddrSubscribeWithOptions(updates, done, opts); err != nil {
		return explain(err, "subscribe to address events")
	}
	p.pass(wants(), "start")
	if ready != nil {
		ready()
	}
	// A periodic pass covers events lost to a full socket buffer.
	tick := time.NewTicker(time.Minute)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-subErr:
			return explain(err, "address events")
		case <-tick.C:
			p.pass(wants(), "periodic check")
		case u, ok := <-updates:
			if !ok {
				return fmt.Errorf("address event subscription closed")
			}
			if u.NewAddr {
				continue
			}
			gone, ok := netip.AddrFromSlice(u.LinkAddress.IP)
			if !ok {
				continue
			}
			ws := wants()
			for _, w := range ws {
				if w.Prefix.Addr() == gone.Unmap() {
					p.log.Warn("binding address disappeared; adding it again", "binding", w.Binding, "address", w.Prefix.String(), "interface", w.Interface)
					p.pass(ws, "address removed")
					break
				}
			}
		}
	}
}

// pass runs Ensure and logs what changed.
func (p *Provisioner) pass(ws []Want, why string) {
	rs, err := p.Ensure(ws, false)
	if err != nil {
		p.log.Error("provisioning failed", "why", why, "err", err)
		return
	}
	for _, r := range rs {
		switch r.Status {
		case Added:
			p.log.Info("binding address added", "binding", r.Binding, "address", r.Prefix.String(), "interface", r.Interface, "why", why)
		case Failed:
			p.log.Error("binding address could not be ensured", "binding", r.Binding, "address", r.Prefix.String(), "interface", r.Interface, "err", r.Err)
		}
	}
}
