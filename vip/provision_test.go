package vip

import (
	"encoding/json"
	"net"
	"net/netip"
	"os"
	"path/filepath"
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
