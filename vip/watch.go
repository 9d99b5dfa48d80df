package vip

import (
	"context"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const (
	// settle groups the events of one change ("ip addr flush" of thousands
	// of addresses is thousands of events) into one pass: one dump and one
	// batch of adds instead of a pass per event.
	settle = 20 * time.Millisecond
	// recheck is the periodic pass that covers what events cannot: an
	// interface that appears later, a pass that failed.
	recheck = time.Minute
	// eventBuffer is the subscription socket's receive buffer. A flush of
	// 4,096 addresses overflows the default (rmem_default, ~208 KiB); an
	// overflow is survived (resubscribe and a full pass) but costs a pass.
	eventBuffer = 4 << 20
)

// Watch keeps wants on the host until ctx is done: it subscribes to address
// events and re-adds a wanted address that disappears (a network manager
// restart, an administrator's "ip addr flush"). wants is called for the
// current list on every pass, so a reload takes effect at once. ready, if
// not nil, is called once the subscription is live and a first pass has run.
//
// Watch returns an error only if it cannot subscribe at start; events lost
// later (the kernel drops them when the socket buffer overflows, and the
// subscription ends) are survived by subscribing again and checking every
// address.
func (p *Provisioner) Watch(ctx context.Context, wants func() []Want, ready func()) error {
	updates, done, err := p.subscribe()
	if err != nil {
		return explain(err, "subscribe to address events")
	}
	defer func() { close(done) }()
	// Subscribe first, then pass: an address removed in between is seen
	// by the pass or by an event, never by neither.
	p.pass(wants(), "start")
	if ready != nil {
		ready()
	}
	tick := time.NewTicker(recheck)
	defer tick.Stop()
	debounce := time.NewTimer(settle)
	debounce.Stop()
	pending := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			p.pass(wants(), "periodic check")
		case <-debounce.C:
			pending = false
			p.pass(wants(), "address removed")
		case u, ok := <-updates:
			if ok {
				// Any removal may be a binding's: the pass finds out with
				// one dump, cheaper than matching every event here.
				if !u.NewAddr && !pending {
					pending = true
					debounce.Reset(settle)
				}
				continue
			}
			close(done)
			p.log.Warn("address events lost; subscribing again and checking every binding address")
			for {
				if updates, done, err = p.subscribe(); err == nil {
					break
				}
				p.log.Error("subscribe to address events", "err", err)
				select {
				case <-ctx.Done():
					done = make(chan struct{})
					return nil
				case <-time.After(time.Second):
				}
			}
			p.pass(wants(), "events lost")
		}
	}
}

// subscribe opens an address event subscription in the Provisioner's
// namespace; closing done ends it.
func (p *Provisioner) subscribe() (<-chan netlink.AddrUpdate, chan struct{}, error) {
	updates := make(chan netlink.AddrUpdate, 1024)
	done := make(chan struct{})
	opts := netlink.AddrSubscribeOptions{
		Namespace:         p.ns,
		ReceiveBufferSize: p.rcvbuf,
		// Going past rmem_max needs CAP_NET_ADMIN, which provisioning has
		// anyway; without it (tests, a watch run by hand) the system's
		// maximum applies. Asked up front: netlink v1.3.1 leaks the socket
		// when setting the size fails.
		ReceiveBufferForceSize: hasNetAdmin(),
		// The library reports malformed or unexpected messages here and
		// carries on; a fatal error also closes the channel, which is
		// what Watch acts on.
		ErrorCallback: func(err error) {
			select {
			case <-done: // closed by us: the receive error is the close
			default:
				p.log.Warn("address events", "err", err)
			}
		},
	}
	if err := netlink.AddrSubscribeWithOptions(updates, done, opts); err != nil {
		close(done)
		return nil, nil, err
	}
	return updates, done, nil
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
			if why == "start" {
				p.log.Info("binding address added", "binding", r.Binding, "address", r.Prefix.String(), "interface", r.Interface)
			} else {
				p.log.Warn("binding address disappeared; added it again", "binding", r.Binding, "address", r.Prefix.String(), "interface", r.Interface, "why", why)
			}
		case Failed:
			p.log.Error("binding address could not be ensured", "binding", r.Binding, "address", r.Prefix.String(), "interface", r.Interface, "err", r.Err)
		}
	}
}

// hasNetAdmin reports whether the process has CAP_NET_ADMIN in effect.
func hasNetAdmin() bool {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false
	}
	return data[0].Effective&(1<<unix.CAP_NET_ADMIN) != 0
}
