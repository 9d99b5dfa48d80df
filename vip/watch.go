package vip

import (
	"context"
	"time"
)

const (
	// settle groups the events of one change ("ip addr flush" of thousands
	// of addresses is thousands of events) into one pass: one reading and
	// one batch of adds instead of a pass per event.
	settle = 20 * time.Millisecond
	// recheck is the periodic pass that covers what events cannot: an
	// interface that appears later, a pass that failed, a changed sysctl.
	recheck = time.Minute
)

// Watch keeps wants on the host until ctx is done: it follows address and
// route events and re-adds a wanted address that disappears (a network
// manager restart, an administrator's "ip addr flush", a local route that
// covered it removed). wants is called for the current list on every pass,
// so a reload takes effect at once. ready, if not nil, is called once the
// subscription is live and a first pass has run.
//
// Watch returns an error only if it cannot subscribe at start; events lost
// later are survived by subscribing again and checking every address.
func (p *Provisioner) Watch(ctx context.Context, wants func() []Want, ready func()) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events, err := subscribe(ctx, p.ns, p.rcvbuf, p.log)
	if err != nil {
		return explain(err, "subscribe to address events")
	}
	// Subscribed first, then the pass: an address removed in between is
	// seen by the pass or by an event, never by neither.
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
		case ev, ok := <-events:
			switch {
			case !ok:
				return nil
			case ev.lost:
				p.pass(wants(), "events lost")
			case ev.removal() && !pending:
				// Any removal may be a binding's: the pass finds out
				// with one reading, cheaper than matching every event.
				pending = true
				debounce.Reset(settle)
			}
		}
	}
}

// pass provisions ws and logs what changed.
func (p *Provisioner) pass(ws []Want, why string) {
	rs, err := p.Provision(ws, Options{})
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
