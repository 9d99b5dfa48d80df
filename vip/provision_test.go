package vip

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func want(binding, iface, prefix string) Want {
	return Want{Binding: binding, Interface: iface, Prefix: netip.MustParsePrefix(prefix)}
}

func statuses(rs []Result) string {
	var s []string
	for _, r := range rs {
		s = append(s, r.Prefix.Addr().String()+"="+string(r.Status))
	}
	return strings.Join(s, " ")
}

// TestProvision walks one namespace through the life of a binding file:
// first run, re-run, dry run, errors, prune.
func TestProvision(t *testing.T) {
	n := newTestNS(t)
	dir := t.TempDir()
	p := newProv(t, n, dir, nil)
	base := []Want{want("Example", "eth0", "192.0.2.10/32"), want("Example", "eth0", "2001:db8::10/128")}

	rs, err := p.Provision(base, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := statuses(rs); got != "192.0.2.10=added 2001:db8::10=added" {
		t.Fatalf("first run: %s", got)
	}
	out := n.addrs(t, "eth0")
	for _, s := range []string{"inet 192.0.2.10/32 scope global eth0:vip", "inet6 2001:db8::10/128"} {
		if !strings.Contains(out, s) {
			t.Errorf("eth0 lacks %q:\n%s", s, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "2001:db8::10/128") && (strings.Contains(line, "tentative") || !strings.Contains(line, "nodad")) {
			t.Errorf("IPv6 binding address not added with nodad: %s", line)
		}
	}
	// Postfix binds the address right after provisioning: it must work now.
	n.in(t, func() {
		for _, a := range []string{"[2001:db8::10]:0", "192.0.2.10:0"} {
			l, err := net.Listen("tcp", a)
			if err != nil {
				t.Errorf("bind %s right after provisioning: %v", a, err)
				continue
			}
			l.Close()
		}
	})

	rs, err = p.Provision(base, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := statuses(rs); got != "192.0.2.10=present 2001:db8::10=present" {
		t.Errorf("re-run: %s", got)
	}
	if Summary(rs) != "2 present, 0 errors" {
		t.Errorf("summary %q", Summary(rs))
	}

	// Dry run with a new binding changes nothing.
	more := append(base, want("News", "eth0", "192.0.2.20/32"))
	rs, err = p.Provision(more, Options{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := statuses(rs); !strings.HasSuffix(got, "192.0.2.20=would add") {
		t.Errorf("dry run: %s", got)
	}
	if strings.Contains(n.addrs(t, "eth0"), "192.0.2.20") {
		t.Error("dry run added an address")
	}

	// Errors name their cause.
	ip(t, "-n", n.name, "addr", "add", "192.0.2.77/32", "dev", "eth1")
	rs, err = p.Provision([]Want{want("Gone", "eth9", "192.0.2.30/32"), want("Taken", "eth0", "192.0.2.77/32"), want("NoIf", "", "192.0.2.31/32")}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, msg := range []string{`interface "eth9" does not exist`, "already configured on interface eth1", "no interface"} {
		if rs[i].Status != Failed || rs[i].Err == nil || !strings.Contains(rs[i].Err.Error(), msg) {
			t.Errorf("%s: got %s %v, want error containing %q", rs[i].Binding, rs[i].Status, rs[i].Err, msg)
		}
	}

	// Prune: the IPv6 binding address goes away from the file; a foreign
	// address on the same interface and the one vipmilter still wants stay.
	ip(t, "-n", n.name, "addr", "add", "192.0.2.99/32", "dev", "eth0")
	ip(t, "-n", n.name, "addr", "add", "2001:db8::99/128", "dev", "eth0", "nodad")
	rs, err = p.Provision(base[:1], Options{Prune: true, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := statuses(rs); got != "192.0.2.10=present 2001:db8::10=would remove" {
		t.Errorf("prune dry run: %s", got)
	}
	if !strings.Contains(n.addrs(t, "eth0"), "2001:db8::10/128") {
		t.Error("prune --dry-run removed an address")
	}
	rs, err = p.Provision(base[:1], Options{Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	if got := statuses(rs); got != "192.0.2.10=present 2001:db8::10=removed" {
		t.Errorf("prune: %s", got)
	}
	out = n.addrs(t, "eth0")
	for _, s := range []string{"192.0.2.99/32", "2001:db8::99/128", "192.0.2.10/32"} {
		if !strings.Contains(out, s) {
			t.Errorf("prune removed %s:\n%s", s, out)
		}
	}
	if strings.Contains(out, "2001:db8::10/") {
		t.Errorf("prune left 2001:db8::10:\n%s", out)
	}
	// Pruning everything still never touches foreign addresses.
	if _, err := p.Provision(nil, Options{Prune: true}); err != nil {
		t.Fatal(err)
	}
	out = n.addrs(t, "eth0")
	if strings.Contains(out, "192.0.2.10/") || !strings.Contains(out, "192.0.2.99/32") {
		t.Errorf("prune of all: want only vipmilter's address gone:\n%s", out)
	}
	var st state
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &st); err != nil || len(st.Added) != 0 {
		t.Errorf("state after pruning all: %s (%v)", b, err)
	}
}

// TestExplainPermission: without CAP_NET_ADMIN the kernel answers EPERM and
// the error must say what is missing.
func TestExplainPermission(t *testing.T) {
	err := explain(unix.EPERM, "add address")
	if !strings.Contains(err.Error(), "CAP_NET_ADMIN") {
		t.Errorf("permission error does not mention CAP_NET_ADMIN: %v", err)
	}
}

func TestLabel(t *testing.T) {
	cases := []struct{ ifname, want string }{
		{"eth0", "eth0:vip"},
		{"enp0s31f6", "enp0s31f6:vip"},
		{"verylongname0", ""}, // 17 characters: the kernel would refuse it
	}
	for _, c := range cases {
		if got := label(c.ifname); got != c.want {
			t.Errorf("label(%q) = %q, want %q", c.ifname, got, c.want)
		}
	}
}

// TestProvisionPruneForgetsReconfiguredAddress: an address vipmilter added that an
// administrator then configured again by hand (without vipmilter's label)
// is theirs: prune leaves it and forgets it.
func TestProvisionPruneForgetsReconfiguredAddress(t *testing.T) {
	n := newTestNS(t)
	dir := t.TempDir()
	p := newProv(t, n, dir, nil)
	if _, err := p.Provision([]Want{want("A", "eth0", "192.0.2.10/32")}, Options{}); err != nil {
		t.Fatal(err)
	}
	ip(t, "-n", n.name, "addr", "del", "192.0.2.10/32", "dev", "eth0")
	ip(t, "-n", n.name, "addr", "add", "192.0.2.10/32", "dev", "eth0")
	rs, err := p.Provision(nil, Options{Prune: true})
	if err != nil || statuses(rs) != "192.0.2.10=forgotten" {
		t.Fatalf("prune: %v %v", rs, err)
	}
	if !strings.Contains(n.addrs(t, "eth0"), "192.0.2.10/32") {
		t.Error("prune removed an address an administrator configured")
	}
	st, err := loadState(dir)
	if err != nil || len(st.Added) != 0 {
		t.Errorf("state still claims the address: %+v %v", st, err)
	}
}

// TestProvisionLocalRoutes: an address a local route already makes
// bindable is not added (and the line says which route covers it); a
// covered IPv6 address the kernel would not bind (ip_nonlocal_bind=0) is
// added, with the reason; a dry run predicts both.
func TestProvisionLocalRoutes(t *testing.T) {
	cases := []struct {
		name      string
		nonlocal6 string
		want      string
	}{
		{"ip_nonlocal_bind=0", "0", "127.0.0.6=covered 198.51.100.7=covered 2001:db8:100::5=added 192.0.2.10=added 127.0.0.7=covered"},
		{"ip_nonlocal_bind=1", "1", "127.0.0.6=covered 198.51.100.7=covered 2001:db8:100::5=covered 192.0.2.10=added 127.0.0.7=covered"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := newTestNS(t)
			n.sysctl(t, "net/ipv6/ip_nonlocal_bind", c.nonlocal6)
			ip(t, "-n", n.name, "route", "add", "local", "198.51.100.0/24", "dev", "lo")
			ip(t, "-n", n.name, "-6", "route", "add", "local", "2001:db8:100::/64", "dev", "lo")
			p := newProv(t, n, t.TempDir(), nil)
			ws := []Want{
				want("Loop", "eth0", "127.0.0.6/32"),
				want("Any4", "eth0", "198.51.100.7/32"),
				want("Any6", "eth0", "2001:db8:100::5/128"),
				want("Plain", "eth0", "192.0.2.10/32"),
				want("LoopNoIf", "", "127.0.0.7/32"),
			}
			dry, err := p.Provision(ws, Options{DryRun: true})
			if err != nil {
				t.Fatal(err)
			}
			rs, err := p.Provision(ws, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := statuses(rs); got != c.want {
				t.Errorf("statuses %s, want %s", got, c.want)
			}
			samePlan(t, dry, rs)
			for _, r := range rs {
				if r.Status == Covered && !strings.Contains(r.Note, "local route") {
					t.Errorf("covered line does not name the route: %s", r)
				}
				if r.Status == Added && r.Prefix.Addr().Is6() && !strings.Contains(r.Note, "ip_nonlocal_bind") {
					t.Errorf("the IPv6 add does not say why the route was not enough: %s", r)
				}
				if !n.canBind(t, r.Prefix.Addr()) {
					t.Errorf("%s: %s, but the kernel cannot bind it", r.Prefix, r.Status)
				}
			}
			out := n.addrs(t, "eth0")
			if strings.Contains(out, "127.0.0.6") || strings.Contains(out, "198.51.100.7") {
				t.Errorf("a covered address was added:\n%s", out)
			}
			st, err := loadState(p.stateDir)
			if err != nil {
				t.Fatal(err)
			}
			for _, o := range st.Added {
				if o.Prefix.Addr().IsLoopback() || o.Prefix.Addr().String() == "198.51.100.7" {
					t.Errorf("the record claims covered address %s", o.Prefix)
				}
			}
		})
	}
}

// samePlan fails unless a dry run's lines are exactly the real run's, with
// "would" statuses for changes.
func samePlan(t *testing.T, dry, real []Result) {
	t.Helper()
	line := func(r Result, status Status) string {
		return fmt.Sprintf("%s %s %s %s %q", status, r.Prefix, r.Interface, r.Binding, r.Note)
	}
	var d, w []string
	for _, r := range dry {
		d = append(d, line(r, r.Status))
	}
	for _, r := range real {
		w = append(w, line(r, would(r.Status)))
	}
	if !slices.Equal(d, w) {
		t.Errorf("the dry run predicted\n  %s\nthe real run did\n  %s", strings.Join(d, "\n  "), strings.Join(w, "\n  "))
	}
}

// TestProvisionPruneDryRunMatchesRun: --prune --dry-run prints what
// --prune then does, for every kind of record entry: removed, re-configured
// by hand (forgotten), already gone, interface gone, and a binding moved
// to another interface in the same run.
func TestProvisionPruneDryRunMatchesRun(t *testing.T) {
	n := newTestNS(t)
	ip(t, "-n", n.name, "link", "add", "eth2", "type", "veth", "peer", "name", "eth3")
	ip(t, "-n", n.name, "link", "set", "eth2", "up")
	dir := t.TempDir()
	p := newProv(t, n, dir, nil)
	before := []Want{
		want("Drop", "eth0", "192.0.2.10/32"),
		want("Drop6", "eth0", "2001:db8::10/128"),
		want("Hand", "eth0", "192.0.2.11/32"),
		want("Gone", "eth0", "192.0.2.12/32"),
		want("NoIf", "eth2", "192.0.2.13/32"),
		want("Move", "eth0", "192.0.2.14/32"),
		want("Keep", "eth0", "192.0.2.15/32"),
	}
	if rs, err := p.Provision(before, Options{}); err != nil || Summary(rs) != "7 added, 0 errors" {
		t.Fatalf("setup: %v %v", rs, err)
	}
	// An administrator re-configures Hand by hand, deletes Gone, and eth2
	// goes away.
	ip(t, "-n", n.name, "addr", "del", "192.0.2.11/32", "dev", "eth0")
	ip(t, "-n", n.name, "addr", "add", "192.0.2.11/32", "dev", "eth0")
	ip(t, "-n", n.name, "addr", "del", "192.0.2.12/32", "dev", "eth0")
	ip(t, "-n", n.name, "link", "del", "eth2")
	after := []Want{want("Move", "eth1", "192.0.2.14/32"), want("Keep", "eth0", "192.0.2.15/32")}

	dry, err := p.Provision(after, Options{Prune: true, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	rs, err := p.Provision(after, Options{Prune: true})
	if err != nil {
		t.Fatal(err)
	}
	samePlan(t, dry, rs)
	if got, want := statuses(rs), "192.0.2.14=added 192.0.2.15=present 192.0.2.10=removed 2001:db8::10=removed 192.0.2.11=forgotten 192.0.2.14=removed"; got != want {
		t.Errorf("prune: %s\nwant %s", got, want)
	}
	out := n.addrs(t, "eth0")
	if !strings.Contains(out, "192.0.2.11/32") || strings.Contains(out, "192.0.2.10/") || strings.Contains(out, "192.0.2.14/") {
		t.Errorf("eth0 after prune:\n%s", out)
	}
	if !strings.Contains(n.addrs(t, "eth1"), "192.0.2.14/32") {
		t.Error("Move not on eth1")
	}
	st, err := loadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	var owned []string
	for _, o := range st.Added {
		owned = append(owned, o.Prefix.String()+"%"+o.Interface)
	}
	slices.Sort(owned)
	if got := strings.Join(owned, " "); got != "192.0.2.14/32%eth1 192.0.2.15/32%eth0" {
		t.Errorf("record after prune: %s", got)
	}
	// Nothing left to do: a second dry run and run agree on that too.
	dry, _ = p.Provision(after, Options{Prune: true, DryRun: true})
	rs, _ = p.Provision(after, Options{Prune: true})
	samePlan(t, dry, rs)
	if Summary(rs) != "2 present, 0 errors" {
		t.Errorf("second prune: %s", Summary(rs))
	}
}
