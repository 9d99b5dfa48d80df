// Command postfix measures end-to-end Postfix throughput (smtp-source →
// private Postfix → smtp-sink, inside network namespaces) with no milter,
// go-milter's NoOpMilter, and vipmilter with a Match_Domain policy and with a
// 50-rule header-testing Sieve policy, over inet and unix milter sockets.
// Variants are interleaved and repeated; each is reported as the median
// messages/s and its ratio to "no milter" measured in the same run.
//
// Run as root from the module root: go run ./bench/postfix [-n 2000] [-repeat 3]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/d--j/go-milter"
	"github.com/vipmilter/vipmilter/e2e"
	"github.com/vipmilter/vipmilter/internal/testenv"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "noop-milter" {
		if err := serveNoOp(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "noop-milter:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/postfix:", err)
		os.Exit(1)
	}
}

// serveNoOp is the NoOpMilter baseline, re-executed inside the mta namespace.
func serveNoOp(listen string) error {
	network, addr, _ := strings.Cut(listen, ":")
	if network == "inet" {
		network = "tcp"
	}
	if network == "unix" {
		os.Remove(addr)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return err
	}
	if network == "unix" {
		os.Chmod(addr, 0o666)
	}
	s := milter.NewServer(milter.WithMilter(func() milter.Milter { return milter.NoOpMilter{} }))
	return s.Serve(ln)
}

type variant struct {
	name   string
	listen string // milter socket; empty for no milter
	noop   bool
	policy string // vipmilter policy kind: "match" or "rules50"
}

func run() error {
	n := flag.Int("n", 2000, "messages per run")
	repeat := flag.Int("repeat", 3, "interleaved repetitions")
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("run as root (network namespaces, private Postfix)")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "vipmilter-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	self, err := os.Executable()
	if err != nil {
		return err
	}
	bin, err := e2e.BuildVipmilter(ctx, ".", dir)
	if err != nil {
		return err
	}
	netw, err := e2e.NewNetwork(ctx)
	if err != nil {
		return err
	}
	defer netw.Close()
	sink, err := testenv.StartSink(ctx, netw.Sink, e2e.SinkAddr4+":25", "")
	if err != nil {
		return err
	}
	defer sink.Stop()
	for _, a := range []string{"192.0.2.1", "192.0.2.10"} {
		if err := netw.AddAddress(ctx, a); err != nil {
			return err
		}
	}
	pf, err := e2e.NewPostfix(ctx, filepath.Join(dir, "postfix"), netw.MTA)
	if err != nil {
		return err
	}
	defer pf.Stop()
	mainCF, _ := os.ReadFile(filepath.Join(pf.Dir, "main.cf"))
	masterCF, _ := os.ReadFile(filepath.Join(pf.Dir, "master.cf"))
	sock := filepath.Join(dir, "milter.sock")

	variants := []variant{
		{name: "no milter"},
		{name: "NoOpMilter inet", listen: "inet:127.0.0.1:7001", noop: true},
		{name: "NoOpMilter unix", listen: "unix:" + sock, noop: true},
		{name: "vipmilter Match_Domain inet", listen: "inet:127.0.0.1:7002", policy: "match"},
		{name: "vipmilter Match_Domain unix", listen: "unix:" + sock, policy: "match"},
		{name: "vipmilter 50 rules inet", listen: "inet:127.0.0.1:7003", policy: "rules50"},
		{name: "vipmilter 50 rules unix", listen: "unix:" + sock, policy: "rules50"},
	}
	results := map[string][]float64{}
	for r := 0; r < *repeat; r++ {
		for _, v := range variants {
			os.WriteFile(filepath.Join(pf.Dir, "main.cf"), mainCF, 0o644)
			os.WriteFile(filepath.Join(pf.Dir, "master.cf"), masterCF, 0o644)
			stop, err := setup(ctx, v, dir, self, bin, netw, pf)
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			rate, err := e2e.Throughput(ctx, netw, pf, *n, 8)
			stop()
			if err != nil {
				return fmt.Errorf("%s: %w\n%s", v.name, err, pf.LogTail(20))
			}
			log.Info("run", "variant", v.name, "repeat", r+1, "msgs_per_s", fmt.Sprintf("%.0f", rate))
			results[v.name] = append(results[v.name], rate)
		}
	}
	base := e2e.Median(results["no milter"])
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "VARIANT\tMEDIAN MSG/S\tRATIO\tRUNS\n")
	for _, v := range variants {
		m := e2e.Median(results[v.name])
		fmt.Fprintf(tw, "%s\t%.0f\t%.2f×\t%v\n", v.name, m, m/base, fmtRates(results[v.name]))
	}
	return tw.Flush()
}

// setup configures Postfix for one variant and starts its milter; stop ends it.
func setup(ctx context.Context, v variant, dir, self, bin string, netw *e2e.Network, pf *testenv.Postfix) (func(), error) {
	none := func() {}
	if v.listen == "" {
		return none, pf.Restart(ctx)
	}
	if v.noop {
		cmd := netw.MTA.Command(context.Background(), self, "noop-milter", v.listen)
		if err := cmd.Start(); err != nil {
			return none, err
		}
		cmd.Stderr = os.Stderr
		stop := func() { cmd.Process.Kill(); cmd.Wait() }
		if err := e2e.WaitMilter(ctx, netw.MTA, v.listen); err != nil {
			stop()
			return none, err
		}
		if err := pf.Postconf(ctx, "smtpd_milters="+v.listen, "milter_default_action=tempfail", "milter_protocol=6"); err != nil {
			stop()
			return none, err
		}
		return stop, pf.Restart(ctx)
	}
	conf, err := writeBindings(dir, v)
	if err != nil {
		return none, err
	}
	sys := &e2e.System{Net: netw, Postfix: pf, Bin: bin, Config: conf, Log: slog.New(slog.DiscardHandler)}
	if err := sys.ApplyPostfix(ctx); err != nil {
		return none, err
	}
	if err := sys.StartServe(ctx); err != nil {
		return none, err
	}
	if err := pf.Restart(ctx); err != nil {
		sys.StopServe(syscall.SIGTERM)
		return none, err
	}
	return func() { sys.StopServe(syscall.SIGTERM) }, nil
}

// writeBindings writes a binding file whose Match_Domain covers the
// benchmark's sender, and a policy: none, or 50 header tests that never match
// so every message walks all of them.
func writeBindings(dir string, v variant) (string, error) {
	var pol strings.Builder
	pol.WriteString("require [\"envelope\", \"variables\"];\n")
	if v.policy == "rules50" {
		for i := range 50 {
			fmt.Fprintf(&pol, "if header :contains \"X-Bench-%d\" \"never-%d\" { set \"binding\" \"default\"; stop; }\n", i, i)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.sieve"), []byte(pol.String()), 0o644); err != nil {
		return "", err
	}
	conf := fmt.Sprintf(`Milter_Listen = %q
Sieve_Script = "bench.sieve"
Binding_Header = "X-Binding"
On_Policy_Error = default
On_Milter_Down = tempfail
Interface = eth0
Binding "default" {
  Bind_Address = 192.0.2.1
  EHLO_Hostname = mta.bench.test
}
Binding "Example" {
  Bind_Address = 192.0.2.10
  EHLO_Hostname = mta1.example.com
  Match_Domain = example.com
}
`, v.listen)
	p := filepath.Join(dir, "bench.conf")
	return p, os.WriteFile(p, []byte(conf), 0o644)
}

func fmtRates(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf("%.0f", x))
	}
	return strings.Join(parts, ",")
}
