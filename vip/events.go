package vip

import (
	"context"
	"log/slog"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// eventBuffer is the event sockets' receive buffer. A flush of 4,096
// addresses overflows the default (rmem_default, ~208 KiB); an overflow is
// survived (subscribe again, read the host again) but costs a full pass.
const eventBuffer = 4 << 20

// hostEvent is one kernel notification about the host's addresses or
// routes. lost marks a gap instead: the kernel dropped notifications (a
// socket buffer overflowed), the subscription was renewed, and whoever
// keeps state from events must read the host again.
type hostEvent struct {
	addr  *netlink.AddrUpdate
	route *netlink.RouteUpdate
	lost  bool
}

// removal reports whether e may have made an address unbindable: an
// address or a local route went away.
func (e hostEvent) removal() bool {
	switch {
	case e.addr != nil:
		return !e.addr.NewAddr
	case e.route != nil:
		_, local := localRouteOf(e.route.Route)
		return local && e.route.Type == unix.RTM_DELROUTE
	}
	return false
}

// subscribe follows the address and route events of namespace ns (nil: the
// current one) until ctx is done, then closes the channel. It returns once
// the subscription is live, so a reading of the host taken after it misses
// nothing: a change after the reading arrives as an event, one before it
// is in the reading. When the kernel drops events it subscribes again
// (retrying every second) and sends a lost event. rcvbuf is the socket
// receive buffer (0: the system default).
func subscribe(ctx context.Context, ns *netns.NsHandle, rcvbuf int, log *slog.Logger) (<-chan hostEvent, error) {
	s, err := openSubscription(ns, rcvbuf, log)
	if err != nil {
		return nil, err
	}
	out := make(chan hostEvent, 1024)
	go func() {
		defer close(out)
		defer func() { s.close() }()
		for {
			var ev hostEvent
			ok := true
			select {
			case <-ctx.Done():
				return
			case u, open := <-s.addrs:
				ev.addr, ok = &u, open
			case u, open := <-s.routes:
				ev.route, ok = &u, open
			}
			if !ok {
				s.close()
				log.Warn("address events lost; subscribing again and reading every address")
				for {
					if s, err = openSubscription(ns, rcvbuf, log); err == nil {
						break
					}
					log.Error("subscribe to address events", "err", err)
					select {
					case <-ctx.Done():
						s = &subscription{} // nothing to close
						return
					case <-time.After(time.Second):
					}
				}
				ev = hostEvent{lost: true}
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return out, nil
}

// subscription is one address and one route subscription in a namespace;
// the library ends either when the kernel drops events.
type subscription struct {
	addrs  chan netlink.AddrUpdate
	routes chan netlink.RouteUpdate
	done   chan struct{} // nil: nothing to close
	closed bool
}

func openSubscription(ns *netns.NsHandle, rcvbuf int, log *slog.Logger) (*subscription, error) {
	done := make(chan struct{})
	s := &subscription{
		addrs:  make(chan netlink.AddrUpdate, 1024),
		routes: make(chan netlink.RouteUpdate, 1024),
		done:   done,
	}
	// The library reports malformed or unexpected messages here and
	// carries on; a fatal error also closes the channel, which subscribe
	// acts on.
	report := func(err error) {
		select {
		case <-done: // closed by us: the receive error is the close
		default:
			log.Warn("address events", "err", err)
		}
	}
	// Going past rmem_max needs CAP_NET_ADMIN, which provisioning has
	// anyway; without it (the milter, a watch run by hand) the system's
	// maximum applies. Asked up front: netlink v1.3.1 leaks the socket when
	// setting the size fails.
	force := rcvbuf > 0 && hasNetAdmin()
	err := netlink.AddrSubscribeWithOptions(s.addrs, s.done, netlink.AddrSubscribeOptions{
		Namespace: ns, ReceiveBufferSize: rcvbuf, ReceiveBufferForceSize: force, ErrorCallback: report,
	})
	if err != nil {
		close(s.done)
		return nil, err
	}
	err = netlink.RouteSubscribeWithOptions(s.routes, s.done, netlink.RouteSubscribeOptions{
		Namespace: ns, ReceiveBufferSize: rcvbuf, ReceiveBufferForceSize: force, ErrorCallback: report,
	})
	if err != nil {
		close(s.done)
		go drain(s.addrs)
		return nil, err
	}
	return s, nil
}

// close ends both subscriptions.
func (s *subscription) close() {
	if s.done == nil || s.closed {
		return
	}
	close(s.done)
	s.closed = true
	// The library's receivers block while their channel is full, and only
	// a receiver that gets back to its closed socket ends and closes its
	// channel: drain both so they do.
	go drain(s.addrs)
	go drain(s.routes)
}

func drain[T any](c <-chan T) {
	for range c {
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
