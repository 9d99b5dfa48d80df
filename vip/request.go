package vip

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// batchSize is how many address requests go to the kernel in one datagram.
// netlink.Handle.AddrReplace costs a round trip through Go's poller (and a
// getsockname) per address, which made 4,096 adds about 10% slower than
// "ip -batch"; the kernel processes every message of a datagram in turn and
// acknowledges each, so batching pays the round trip once per batch.
const batchSize = 128

// addBatched adds every address and returns one error (or nil) per item.
func (p *Provisioner) addBatched(adds []*step) ([]error, error) {
	ns := netns.None()
	if p.ns != nil {
		ns = *p.ns
	}
	s, err := nl.GetNetlinkSocketAt(ns, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, explain(err, "open netlink socket")
	}
	defer s.Close()
	errs := make([]error, len(adds))
	for start := 0; start < len(adds); start += batchSize {
		chunk := adds[start:min(start+batchSize, len(adds))]
		var buf []byte
		for i, a := range chunk {
			req := addrRequest(a)
			req.Seq = uint32(start + i + 1)
			buf = append(buf, req.Serialize()...)
		}
		if err := unix.Sendto(s.GetFd(), buf, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
			return nil, explain(err, "add addresses")
		}
		for acked := 0; acked < len(chunk); {
			msgs, _, err := s.Receive()
			if err != nil {
				return nil, explain(err, "add addresses")
			}
			for _, m := range msgs {
				if m.Header.Type != unix.NLMSG_ERROR || len(m.Data) < 4 {
					continue
				}
				i := int(m.Header.Seq) - 1
				if i < start || i >= start+len(chunk) {
					continue
				}
				if errno := -int32(binary.NativeEndian.Uint32(m.Data[:4])); errno != 0 {
					errs[i] = explain(unix.Errno(errno), "add address")
				}
				acked++
			}
		}
	}
	return errs, nil
}

// addrRequest is the RTM_NEWADDR request "ip addr replace" sends for step
// a, with the same attributes netlink.AddrReplace would set for nlAddr.
func addrRequest(a *step) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	na := nlAddr(a.Prefix, a.Interface)
	family := unix.AF_INET
	ip := a.Prefix.Addr().AsSlice()
	if a.Prefix.Addr().Is6() {
		family = unix.AF_INET6
	}
	msg := nl.NewIfAddrmsg(family)
	msg.Index = uint32(a.link)
	msg.Prefixlen = uint8(a.Prefix.Bits())
	msg.Flags = uint8(na.Flags)
	req.AddData(msg)
	req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, ip))
	req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, ip))
	if family == unix.AF_INET {
		if a.Prefix.Bits() < 31 {
			req.AddData(nl.NewRtAttr(unix.IFA_BROADCAST, broadcast(a.Prefix)))
		}
		if na.Label != "" {
			req.AddData(nl.NewRtAttr(unix.IFA_LABEL, nl.ZeroTerminated(na.Label)))
		}
	}
	return req
}

func broadcast(p netip.Prefix) []byte {
	ip := p.Addr().As4()
	mask := net.CIDRMask(p.Bits(), 32)
	for i := range ip {
		ip[i] |= ^mask[i]
	}
	return ip[:]
}

// nlAddr builds the netlink address for p on interface ifname.
func nlAddr(p netip.Prefix, ifname string) *netlink.Addr {
	a := &netlink.Addr{IPNet: &net.IPNet{
		IP:   net.IP(p.Addr().AsSlice()),
		Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen()),
	}}
	if p.Addr().Is6() {
		// Without NODAD a new IPv6 address stays "tentative" for about a
		// second while duplicate address detection runs, and bind() on it
		// fails with EADDRNOTAVAIL: Postfix would defer the binding's mail.
		// Binding addresses are assigned by the administrator, so DAD's
		// protection buys nothing here.
		a.Flags = unix.IFA_F_NODAD
	} else if l := label(ifname); l != "" {
		a.Label = l
	}
	return a
}

// label marks IPv4 addresses as vipmilter's in "ip addr" output. The kernel
// requires labels to start with the interface name and fit IFNAMSIZ-1 (15).
func label(ifname string) string {
	l := ifname + ":vip"
	if len(l) > 15 {
		return ""
	}
	return l
}

// explain turns the errors an administrator can act on into advice.
func explain(err error, what string) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%s: %w (provisioning needs CAP_NET_ADMIN: run as root or from vipmilter-provision.service)", what, err)
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("%s: %w (interface missing)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}
