// Command provision measures address provisioning in fresh network
// namespaces, side by side in one run: vipmilter's Provisioner adding N
// addresses, the same adds through "ip -batch", and vipmilter's no-op
// re-run. It prints the median of each and the ratios the issue sets goals
// for (vipmilter / ip -batch ≤ 1.0, no-op / first run ≤ 0.1).
//
// Run as root from the module root: go run ./bench/provision [-n 4096] [-repeat 3]
package main

import (
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netns"

	"github.com/vipmilter/vipmilter/vip"
)

func main() {
	n := flag.Int("n", 4096, "addresses to provision")
	repeat := flag.Int("repeat", 3, "rounds (each in fresh namespaces)")
	flag.Parse()
	if err := run(*n, *repeat); err != nil {
		fmt.Fprintln(os.Stderr, "bench/provision:", err)
		os.Exit(1)
	}
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

// freshNS makes a namespace with a veth pair; the caller deletes it.
func freshNS() (string, error) {
	b := make([]byte, 4)
	rand.Read(b)
	name := "vipb-" + hex.EncodeToString(b)
	for _, args := range [][]string{
		{"netns", "add", name},
		{"-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1"},
		{"-n", name, "link", "set", "eth0", "up"},
	} {
		if err := ip(args...); err != nil {
			return name, err
		}
	}
	return name, nil
}

func wants(n int) []vip.Want {
	ws := make([]vip.Want, n)
	base := netip.MustParseAddr("10.200.0.0").As4()
	for i := range n {
		a := base
		a[2], a[3] = byte(i>>8), byte(i)
		a[1] += byte(i >> 16)
		ws[i] = vip.Want{Binding: fmt.Sprintf("b%d", i), Interface: "eth0", Prefix: netip.PrefixFrom(netip.AddrFrom4(a), 32)}
	}
	return ws
}

func timeVipmilter(ws []vip.Want) (first, noop time.Duration, err error) {
	name, err := freshNS()
	defer exec.Command("ip", "netns", "del", name).Run()
	if err != nil {
		return 0, 0, err
	}
	ns, err := netns.GetFromName(name)
	if err != nil {
		return 0, 0, err
	}
	defer ns.Close()
	dir, err := os.MkdirTemp("", "vipbench")
	if err != nil {
		return 0, 0, err
	}
	defer os.RemoveAll(dir)
	p, err := vip.NewProvisioner(&ns, dir, nil)
	if err != nil {
		return 0, 0, err
	}
	defer p.Close()
	check := func(rs []vip.Result, want vip.Status) error {
		for _, r := range rs {
			if r.Status != want {
				return fmt.Errorf("%s: %s %v", r.Prefix, r.Status, r.Err)
			}
		}
		return nil
	}
	start := time.Now()
	rs, err := p.Provision(ws, vip.Options{})
	first = time.Since(start)
	if err == nil {
		err = check(rs, vip.Added)
	}
	if err != nil {
		return 0, 0, err
	}
	start = time.Now()
	rs, err = p.Provision(ws, vip.Options{})
	noop = time.Since(start)
	if err == nil {
		err = check(rs, vip.Present)
	}
	return first, noop, err
}

func timeIPBatch(ws []vip.Want) (time.Duration, error) {
	name, err := freshNS()
	defer exec.Command("ip", "netns", "del", name).Run()
	if err != nil {
		return 0, err
	}
	var b strings.Builder
	for _, w := range ws {
		fmt.Fprintf(&b, "addr add %s dev eth0\n", w.Prefix)
	}
	f, err := os.CreateTemp("", "ipbatch")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	f.WriteString(b.String())
	f.Close()
	start := time.Now()
	err = ip("-n", name, "-batch", f.Name())
	return time.Since(start), err
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func run(n, repeat int) error {
	if os.Geteuid() != 0 {
		return fmt.Errorf("needs root to create network namespaces")
	}
	ws := wants(n)
	var vf, vn, ib []time.Duration
	for i := range repeat {
		// Alternate the order so neither side always runs on a warmer cache.
		var first, noop, batch time.Duration
		var err error
		if i%2 == 0 {
			if first, noop, err = timeVipmilter(ws); err == nil {
				batch, err = timeIPBatch(ws)
			}
		} else {
			if batch, err = timeIPBatch(ws); err == nil {
				first, noop, err = timeVipmilter(ws)
			}
		}
		if err != nil {
			return err
		}
		fmt.Printf("round %d: vipmilter %v, ip -batch %v, vipmilter no-op %v\n", i+1, first.Round(time.Millisecond), batch.Round(time.Millisecond), noop.Round(time.Millisecond))
		vf, vn, ib = append(vf, first), append(vn, noop), append(ib, batch)
	}
	mf, mn, mb := median(vf), median(vn), median(ib)
	fmt.Printf("\n%d addresses, median of %d rounds\n", n, repeat)
	fmt.Printf("  vipmilter provision   %8v\n", mf.Round(time.Millisecond))
	fmt.Printf("  ip -batch             %8v\n", mb.Round(time.Millisecond))
	fmt.Printf("  vipmilter no-op rerun %8v\n", mn.Round(time.Millisecond))
	fmt.Printf("  vipmilter / ip -batch  %.2f× (goal ≤ 1.00)\n", float64(mf)/float64(mb))
	fmt.Printf("  no-op / first run      %.3f× (goal ≤ 0.10)\n", float64(mn)/float64(mf))
	return nil
}
