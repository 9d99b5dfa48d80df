package vip

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/vipmilter/vipmilter/config"
)

// Want is one address a binding file asks for.
type Want struct {
	Binding   string
	Interface string
	Prefix    netip.Prefix // address with its prefix length
}

// Status is what happened to one address.
type Status string

const (
	Added     Status = "added"
	Present   Status = "present"
	Removed   Status = "removed"
	WouldAdd  Status = "would add"
	WouldDrop Status = "would remove"
	Failed    Status = "error"
)

// Result is one line of provisioning output.
type Result struct {
	Want
	Status Status
	Err    error
}

func (r Result) String() string {
	s := fmt.Sprintf("%-12s %-43s on %-15s binding %s", r.Status, r.Prefix, r.Interface, r.Binding)
	if r.Err != nil {
		s += ": " + r.Err.Error()
	}
	return s
}

// Wants lists every binding address of cfg with its interface, in file order.
func Wants(cfg *config.Config) []Want {
	var ws []Want
	for _, b := range cfg.Bindings {
		for _, p := range b.Addresses {
			ws = append(ws, Want{Binding: b.Name, Interface: b.Interface, Prefix: p})
		}
	}
	return ws
}

// Provisioner adds and removes binding addresses through one netlink handle,
// so tests (and the benchmark) can point it at a network namespace.
type Provisioner struct {
	// mu serializes Ensure, Prune and CheckRoutes: the watcher and a SIGHUP
	// reload both provision, and the state file is read-modified-written.
	mu       sync.Mutex
	ns       *netns.NsHandle // nil: the current namespace
	h        *netlink.Handle
	stateDir string
	log      *slog.Logger
	// rcvbuf is Watch's event socket buffer; tests shrink it to make the
	// kernel drop events.
	rcvbuf int
}

// NewProvisioner returns a Provisioner working in namespace ns (nil: the
// current one) that records ownership under stateDir.
func NewProvisioner(ns *netns.NsHandle, stateDir string, log *slog.Logger) (*Provisioner, error) {
	h := &netlink.Handle{}
	if ns != nil {
		var err error
		if h, err = netlink.NewHandleAt(*ns); err != nil {
			return nil, explain(err, "open netlink handle")
		}
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Provisioner{ns: ns, h: h, stateDir: stateDir, log: log, rcvbuf: eventBuffer}, nil
}

// Close releases the netlink handle.
func (p *Provisioner) Close() { p.h.Close() }

// hostAddrs is one dump of every address on the host: the presence check
// before each add, and the "owned by another interface" check, cost one
// netlink round trip in total instead of one per address.
type hostAddrs struct {
	byAddr map[netip.Addr][]hostAddr
}

type hostAddr struct {
	link  int
	bits  int
	label string
}

func (p *Provisioner) dump() (*hostAddrs, error) {
	list, err := listAddrs(p.h)
	if err != nil {
		return nil, explain(err, "list addresses")
	}
	ha := &hostAddrs{byAddr: make(map[netip.Addr][]hostAddr, len(list))}
	for _, a := range list {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		bits, _ := a.Mask.Size()
		ha.byAddr[ip.Unmap()] = append(ha.byAddr[ip.Unmap()], hostAddr{link: a.LinkIndex, bits: bits, label: a.Label})
	}
	return ha, nil
}

func (ha *hostAddrs) on(a netip.Addr, link int) bool {
	return slices.ContainsFunc(ha.byAddr[a], func(h hostAddr) bool { return h.link == link })
}

// links resolves interface names once per run.
type links struct {
	h     *netlink.Handle
	cache map[string]netlink.Link
	errs  map[string]error
}

func (l *links) get(name string) (netlink.Link, error) {
	if name == "" {
		return nil, errors.New("no interface: set Interface globally or in the binding")
	}
	if lk, ok := l.cache[name]; ok {
		return lk, nil
	}
	if err, ok := l.errs[name]; ok {
		return nil, err
	}
	lk, err := l.h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			err = fmt.Errorf("interface %q does not exist", name)
		} else {
			err = explain(err, "look up interface "+name)
		}
		l.errs[name] = err
		return nil, err
	}
	l.cache[name] = lk
	return lk, nil
}

func (p *Provisioner) links() *links {
	return &links{h: p.h, cache: map[string]netlink.Link{}, errs: map[string]error{}}
}

// Ensure puts every wanted address on its interface: an address already
// there is left alone, so a second run changes nothing. With dryRun nothing
// is changed and missing addresses are reported as WouldAdd.
func (p *Provisioner) Ensure(wants []Want, dryRun bool) ([]Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	ha, err := p.dump()
	if err != nil {
		return nil, err
	}
	st, err := loadState(p.stateDir)
	if err != nil {
		return nil, err
	}
	ls := p.links()
	var results []Result
	var adds []pendingAdd
	var addAt []int // index in results of each pending add
	for _, w := range wants {
		r := Result{Want: w}
		lk, err := ls.get(w.Interface)
		switch {
		case err != nil:
			r.Status, r.Err = Failed, err
		case ha.on(w.Prefix.Addr(), lk.Attrs().Index):
			r.Status = Present
		case len(ha.byAddr[w.Prefix.Addr()]) > 0:
			other := ha.byAddr[w.Prefix.Addr()][0].link
			name := fmt.Sprintf("index %d", other)
			if ol, err := p.h.LinkByIndex(other); err == nil {
				name = ol.Attrs().Name
			}
			r.Status, r.Err = Failed, fmt.Errorf("address is already configured on interface %s; remove it there or change the binding's Interface", name)
		case dryRun:
			r.Status = WouldAdd
		default:
			adds = append(adds, pendingAdd{link: lk.Attrs().Index, ifname: lk.Attrs().Name, prefix: w.Prefix})
			addAt = append(addAt, len(results))
		}
		results = append(results, r)
	}
	if len(adds) == 0 {
		return results, nil
	}
	errs, err := p.addBatched(adds)
	if err != nil {
		return results, err
	}
	added := false
	for i, e := range errs {
		r := &results[addAt[i]]
		if e != nil {
			r.Status, r.Err = Failed, e
			continue
		}
		r.Status = Added
		st.add(r.Prefix, r.Interface)
		added = true
	}
	// Nothing added (every add refused, e.g. without CAP_NET_ADMIN): the
	// record is unchanged and the state directory need not be writable.
	if !added {
		return results, nil
	}
	if err := st.save(p.stateDir); err != nil {
		return results, err
	}
	return results, nil
}

// Prune removes addresses vipmilter added earlier (per its state file) that
// wants no longer declares. Addresses it did not add are never touched.
func (p *Provisioner) Prune(wants []Want, dryRun bool) ([]Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	st, err := loadState(p.stateDir)
	if err != nil {
		return nil, err
	}
	ha, err := p.dump()
	if err != nil {
		return nil, err
	}
	keep := make(map[string]bool, len(wants))
	for _, w := range wants {
		keep[w.Prefix.Addr().String()+"%"+w.Interface] = true
	}
	ls := p.links()
	var results []Result
	changed := false
	for _, o := range slices.Clone(st.Added) {
		if keep[o.Prefix.Addr().String()+"%"+o.Interface] {
			continue
		}
		r := Result{Want: Want{Binding: "(no longer declared)", Interface: o.Interface, Prefix: o.Prefix}}
		lk, err := ls.get(o.Interface)
		switch {
		case err != nil:
			// The interface is gone, and its addresses with it.
			st.remove(o.Prefix, o.Interface)
			changed = true
			continue
		case !ha.on(o.Prefix.Addr(), lk.Attrs().Index):
			st.remove(o.Prefix, o.Interface)
			changed = true
			continue
		case dryRun:
			r.Status = WouldDrop
		default:
			err := p.h.AddrDel(lk, nlAddr(o.Prefix, lk.Attrs().Name))
			switch {
			case errors.Is(err, unix.EADDRNOTAVAIL):
				// The kernel matches the IPv4 label on delete: the address
				// is there without vipmilter's label, so someone configured
				// it again by hand. It is theirs now; forget it.
				p.log.Info("address re-configured by someone else; no longer vipmilter's", "address", o.Prefix.String(), "interface", o.Interface)
				st.remove(o.Prefix, o.Interface)
				changed = true
				continue
			case err != nil:
				r.Status, r.Err = Failed, explain(err, "remove address")
			default:
				r.Status = Removed
				st.remove(o.Prefix, o.Interface)
				changed = true
			}
		}
		results = append(results, r)
	}
	if changed && !dryRun {
		if err := st.save(p.stateDir); err != nil {
			return results, err
		}
	}
	return results, nil
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

// Summary counts results by status, e.g. "2 added, 3 present, 0 errors".
func Summary(rs []Result) string {
	counts := map[Status]int{}
	for _, r := range rs {
		counts[r.Status]++
	}
	var parts []string
	for _, s := range []Status{Added, Present, Removed, WouldAdd, WouldDrop} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	parts = append(parts, fmt.Sprintf("%d errors", counts[Failed]))
	return strings.Join(parts, ", ")
}
