package vip

import (
	"fmt"
	"net/netip"
)

// op is the kernel request a step needs.
type op int

const (
	opNone op = iota
	opAdd
	opDel
)

// step is one planned line of a run: the Result a real run reports if the
// kernel agrees, the request it sends, and whether the address leaves the
// ownership record.
type step struct {
	Result
	op     op
	link   int  // interface index for op
	forget bool // drop from the record
	silent bool // no output line: a record entry whose address is already gone
}

// plan is what one run does: prune steps (run first) and one step per
// wanted address.
type plan struct {
	prune, ensure []step
}

// results lists the plan's lines, wanted addresses first; status maps a
// planned status to the reported one (nil: as planned).
func (pl *plan) results(status func(Status) Status) []Result {
	var rs []Result
	for _, group := range [][]step{pl.ensure, pl.prune} {
		for _, s := range group {
			if s.silent {
				continue
			}
			r := s.Result
			if status != nil {
				r.Status = status(r.Status)
			}
			rs = append(rs, r)
		}
	}
	return rs
}

const reconfigured = "configured again without vipmilter's label; left alone"

// addrLink is one address on one interface.
type addrLink struct {
	addr netip.Addr
	link int
}

// planProvision decides, from one reading of the host and the ownership
// record, everything a run does; a dry run reports this plan and a real
// run carries it out, so the two cannot disagree about the host as read.
// The ensure steps see the host as it will be after the prune steps.
func planProvision(wants []Want, owned []owned, hs *host, prune bool) *plan {
	pl := &plan{}
	removed := map[addrLink]bool{}
	if prune {
		type addrIface struct {
			addr  netip.Addr
			iface string
		}
		keep := make(map[addrIface]bool, len(wants))
		for _, w := range wants {
			keep[addrIface{w.Prefix.Addr(), w.Interface}] = true
		}
		for _, o := range owned {
			if keep[addrIface{o.Prefix.Addr(), o.Interface}] {
				continue
			}
			s := step{Result: Result{Want: Want{Binding: "(no longer declared)", Interface: o.Interface, Prefix: o.Prefix}}, forget: true}
			link, ok := hs.links[o.Interface]
			switch {
			case !ok, !hs.on(o.Prefix.Addr(), link):
				// The interface is gone, or the address: nothing to
				// remove, only the record to correct.
				s.silent = true
			case relabelled(o, hs, link):
				s.Status, s.Note = Forgotten, reconfigured
			default:
				s.Status, s.op, s.link = Removed, opDel, link
				removed[addrLink{o.Prefix.Addr(), link}] = true
			}
			pl.prune = append(pl.prune, s)
		}
	}
	for _, w := range wants {
		pl.ensure = append(pl.ensure, planEnsure(w, hs, removed))
	}
	return pl
}

// relabelled reports whether IPv4 address o, on the interface with index
// link, has lost vipmilter's label: someone deleted it and configured it
// again by hand. The kernel keeps no label for IPv6, nor for an interface
// whose name leaves no room for one, so those stay vipmilter's.
func relabelled(o owned, hs *host, link int) bool {
	want := label(o.Interface)
	if !o.Prefix.Addr().Is4() || want == "" {
		return false
	}
	for _, ha := range hs.addrs[o.Prefix.Addr()] {
		if ha.link == link && ha.label == want {
			return false
		}
	}
	return true
}

// planEnsure decides what happens to one wanted address; removed holds the
// addresses the prune steps take off their interfaces. An address a local
// route makes bindable needs no interface, so a missing Interface is an
// error only for an address that must be added.
func planEnsure(w Want, hs *host, removed map[addrLink]bool) step {
	s := step{Result: Result{Want: w}}
	a := w.Prefix.Addr()
	link, linkOK := hs.links[w.Interface]
	if linkOK && hs.on(a, link) {
		s.Status = Present
		return s
	}
	var ifaceErr error
	switch {
	case w.Interface == "":
		ifaceErr = fmt.Errorf("no interface: set Interface globally or in the binding")
	case !linkOK:
		ifaceErr = fmt.Errorf("interface %q does not exist", w.Interface)
	}
	leaving := false
	for _, ha := range hs.addrs[a] {
		if removed[addrLink{a, ha.link}] {
			leaving = true
			continue
		}
		s.Status, s.Err = Failed, ifaceErr
		if ifaceErr == nil {
			s.Err = fmt.Errorf("address is already configured on interface %s; remove it there or change the binding's Interface", hs.linkName(ha.link))
		}
		return s
	}
	// An address leaving an interface loses its own host route; only a
	// wider one still covers it.
	r, covered, ok := bindable(a, hs.local, hs.nonlocal6, leaving)
	switch {
	case ok:
		s.Status, s.Note = Covered, fmt.Sprintf("local route %s dev %s covers it; not added", r.Prefix, hs.linkName(r.Link))
	case ifaceErr != nil:
		s.Status, s.Err = Failed, ifaceErr
	default:
		if covered {
			s.Note = unbindable6(r, hs)
		}
		s.Status, s.op, s.link = Added, opAdd, link
	}
	return s
}

// unbindable6 says why an IPv6 address a local route covers is not
// bindable.
func unbindable6(r localRoute, hs *host) string {
	return fmt.Sprintf("local route %s dev %s covers it, but an IPv6 bind there needs net.ipv6.ip_nonlocal_bind=1", r.Prefix, hs.linkName(r.Link))
}

// needsLocalRoutes reports whether some wanted address is not on its
// interface, so its plan must know the local routes.
func needsLocalRoutes(wants []Want, hs *host) bool {
	for _, w := range wants {
		if link, ok := hs.links[w.Interface]; !ok || !hs.on(w.Prefix.Addr(), link) {
			return true
		}
	}
	return false
}
