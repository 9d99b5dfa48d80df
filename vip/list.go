package vip

import (
	"errors"

	"github.com/vishvananda/netlink"
)

// dumpRetries bounds how often an interrupted address dump is repeated.
const dumpRetries = 10

// listAddrs dumps every address in h's namespace. While addresses change
// (a flush, a network manager restart: exactly when the watcher and the
// milter's presence look) the kernel marks a dump interrupted and its
// result may miss addresses; acting on it would re-add or skip the wrong
// ones, so it is repeated until a dump completes.
func listAddrs(h *netlink.Handle) ([]netlink.Addr, error) {
	for i := 1; ; i++ {
		list, err := h.AddrList(nil, netlink.FAMILY_ALL)
		if err == nil || !errors.Is(err, netlink.ErrDumpInterrupted) || i == dumpRetries {
			return list, err
		}
	}
}
