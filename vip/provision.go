package vip

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
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
	Added   Status = "added"
	Present Status = "present"
	// Covered: on no interface, but a local route covers it (127.0.0.0/8
	// on lo, an AnyIP prefix), so the host can bind it already.
	Covered Status = "covered"
	Removed Status = "removed"
	// Forgotten: an address vipmilter added that someone configured again
	// by hand; it is theirs now, left alone and dropped from the record.
	Forgotten   Status = "forgotten"
	WouldAdd    Status = "would add"
	WouldDrop   Status = "would remove"
	WouldForget Status = "would forget"
	Failed      Status = "error"
)

// would is what a dry run reports for a planned status.
func would(s Status) Status {
	switch s {
	case Added:
		return WouldAdd
	case Removed:
		return WouldDrop
	case Forgotten:
		return WouldForget
	}
	return s
}

// Result is one line of provisioning output.
type Result struct {
	Want
	Status Status
	Note   string // why, for Covered, Forgotten and an add the host needed despite a local route
	Err    error
}

func (r Result) String() string {
	s := fmt.Sprintf("%-12s %-43s on %-15s binding %s", r.Status, r.Prefix, r.Interface, r.Binding)
	if r.Note != "" {
		s += ": " + r.Note
	}
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
	// mu serializes Provision and CheckRoutes: the watcher and a SIGHUP
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
// current one) that records ownership under stateDir and logs to log (nil:
// nowhere).
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

// Options says what one Provision run may do.
type Options struct {
	// Prune also removes addresses vipmilter added (per its state file)
	// that wants no longer declares. Addresses it did not add are never
	// touched.
	Prune bool
	// DryRun changes nothing and reports what a real run would do (WouldAdd,
	// WouldDrop, WouldForget), decided by the same plan.
	DryRun bool
}

// Provision puts every wanted address on its interface: an address already
// there, or already bindable through a local route, is left alone, so a
// second run changes nothing. It returns one Result per wanted address in
// order, then one per pruned address. An error means the host could not be
// read or the record not written; a refused change is a Failed result.
func (p *Provisioner) Provision(wants []Want, o Options) ([]Result, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	hs, err := readHost(p.h)
	if err != nil {
		return nil, err
	}
	if needsLocalRoutes(wants, hs) || o.Prune {
		if err := hs.readLocal(p.h, p.ns); err != nil {
			return nil, err
		}
	}
	st, err := loadState(p.stateDir)
	if err != nil {
		return nil, err
	}
	pl := planProvision(wants, st.Added, hs, o.Prune)
	if o.DryRun {
		return pl.results(would), nil
	}
	err = p.apply(pl, st)
	return pl.results(nil), err
}

// apply carries out pl (prune steps first, so an address moving to another
// interface leaves the old one before it is added to the new one), turning
// each step the kernel refuses into a Failed result, and saves the record.
func (p *Provisioner) apply(pl *plan, st *state) error {
	changed := false
	for i := range pl.prune {
		s := &pl.prune[i]
		if s.op == opDel {
			err := p.h.AddrDel(&netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: s.link, Name: s.Interface}}, nlAddr(s.Prefix, s.Interface))
			switch {
			case errors.Is(err, unix.EADDRNOTAVAIL):
				// The kernel matches the IPv4 label on delete: the
				// address was configured again by hand between the
				// reading and now.
				s.Status, s.Note = Forgotten, reconfigured
			case err != nil:
				s.Status, s.Err, s.forget = Failed, explain(err, "remove address"), false
			}
		}
		if s.forget {
			st.remove(s.Prefix, s.Interface)
			changed = true
		}
	}
	var adds []*step
	for i := range pl.ensure {
		if pl.ensure[i].op == opAdd {
			adds = append(adds, &pl.ensure[i])
		}
	}
	var addErr error
	if len(adds) > 0 {
		var errs []error
		errs, addErr = p.addBatched(adds)
		if addErr != nil {
			// Which adds the kernel took is unknown; the prunes are
			// done and still recorded.
			errs = make([]error, len(adds))
			for i := range errs {
				errs[i] = addErr
			}
		}
		for i, e := range errs {
			if e != nil {
				adds[i].Status, adds[i].Err = Failed, e
				continue
			}
			st.add(adds[i].Prefix, adds[i].Interface)
			changed = true
		}
	}
	// Nothing changed (e.g. every add refused without CAP_NET_ADMIN): the
	// record is unchanged and the state directory need not be writable.
	if !changed {
		return addErr
	}
	return errors.Join(addErr, st.save(p.stateDir))
}

// errorCount is "0 errors", "1 error", "2 errors".
func errorCount(n int) string {
	if n == 1 {
		return "1 error"
	}
	return fmt.Sprintf("%d errors", n)
}

// Summary counts results by status, e.g. "2 added, 3 present, 0 errors";
// a dry run's "would" counts stand where the real run's will.
func Summary(rs []Result) string {
	counts := map[Status]int{}
	for _, r := range rs {
		counts[r.Status]++
	}
	var parts []string
	for _, s := range []Status{Added, WouldAdd, Present, Covered, Removed, WouldDrop, Forgotten, WouldForget} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	parts = append(parts, errorCount(counts[Failed]))
	return strings.Join(parts, ", ")
}
