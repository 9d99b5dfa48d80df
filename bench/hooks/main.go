// Command hooks is the issue 11 goals benchmark: what each way of asking
// vipmilter for a binding costs a real Postfix, against Postfix alone and
// against the cheapest possible milter, in one run that alternates the
// variants round by round (smtp-source, 8 sessions, one 1 KiB message per
// connection → private Postfix → smtp-sink, in the e2e harness's network
// namespaces):
//
//	no milter               Postfix alone (the baseline of every ratio)
//	floor milter unix|inet  minimal C libmilter milter, built here from Debian's
//	                        libmilter-dev (bench/internal/floormilter): every stage off but
//	                        end of message, adds one header; TCP_NODELAY
//	vipmilter 50 rules unix|inet
//	                        vipmilter serve with 50 header tests in Sieve (the
//	                        milter hook), Postfix configured by "vipmilter postfix"
//	vipmilter Match_Domain  a binding file without a script: no per-message hook,
//	                        Postfix routes with sender_dependent_default_transport_maps
//	vipmilter policy unix|inet
//	                        an envelope-only script of 50 envelope tests: Hook = auto
//	                        chooses the SMTPD policy service (check_policy_service,
//	                        "vipmilter serve" on Policy_Listen), no smtpd milter
//	policy floor unix|inet  Postfix as for "vipmilter policy", the service a trivial Go
//	                        program answering DUNNO (Match_Domain routes): the floor
//	                        for the policy hook
//
// Before measuring a vipmilter variant it checks that "vipmilter postfix"
// rendered the hook the variant measures, and after the burst that serve
// logged a decision on that hook, placing the sender, for every message.
//
// For every burst it reads, from /proc/<pid>/stat and /proc/stat, the CPU of
// Postfix's master and all its descendants, of the milter, of the
// benchmark's own processes and of the whole machine. A burst where other
// processes used more than -max-other of the machine is dropped from the
// figures (its share is still printed), unless some variant has no burst
// under it: then every burst of every variant counts. Per variant it reports
// throughput and its ratio to the same round's "no milter" burst (and for
// vipmilter, to the same round's floor on the same socket kind: the floor
// milter for the milter hook, the policy floor for the policy hook),
// Postfix's own CPU per 1,000 messages and the hook's CPU per message (the
// milter's, or the policy service's), pooled over the kept bursts. Both
// cores are saturated during a burst, so the CPU ratio (Postfix alone's CPU
// per message over the variant's Postfix+hook CPU per message) is the
// steadier measure on a shared machine.
//
// Run as root from the module root:
//
//	go run ./bench/hooks [-n 1000] [-rounds 3] [-sessions 8] [-max-other 0.10] [-only floor] [-chroot]
//	go run ./bench/hooks -from-log run.log [-max-other 0.25]   # the report of an earlier run, from its stderr
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/vipmilter/vipmilter/bench/internal/floormilter"
	"github.com/vipmilter/vipmilter/bench/internal/mailpath"
	"github.com/vipmilter/vipmilter/e2e"
	"github.com/vipmilter/vipmilter/internal/testenv"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == policyFloorArg {
		if err := runPolicyFloor(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, "bench/hooks policy floor:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/hooks:", err)
		os.Exit(1)
	}
}

// opts are the command-line settings.
type opts struct {
	n, rounds, sessions, warmup int
	maxOther                    float64
	only                        string
	chroot                      bool
	fromLog                     string
}

func run() error {
	var o opts
	flag.IntVar(&o.n, "n", 1000, "messages per burst")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds; each runs every variant once, in an order rotated per round")
	flag.IntVar(&o.sessions, "sessions", 8, "parallel smtp-source sessions (one message per connection)")
	flag.IntVar(&o.warmup, "warmup", 50, "messages sent after each variant's setup, before the measured burst")
	flag.Float64Var(&o.maxOther, "max-other", 0.10, "drop a burst when processes outside the benchmark used more than this share of the machine's CPU")
	flag.StringVar(&o.only, "only", "", "run only the variants whose name contains this (and \"no milter\")")
	flag.BoolVar(&o.chroot, "chroot", false, "run smtpd and cleanup chrooted in the queue directory (Debian's master.cf does); the unix sockets then live under it")
	flag.StringVar(&o.fromLog, "from-log", "", "print the report of an earlier run from its log (stderr) instead of running; -max-other applies")
	flag.Parse()
	if o.fromLog != "" {
		return reportLog(o)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ctx := context.Background()

	mp, err := mailpath.New(ctx, "vipmilter-hooks-", defaultAddr, exampleAddr)
	if err != nil {
		return err
	}
	defer mp.Close()
	dir, netw, pf := mp.Dir, mp.Net, mp.Postfix
	floor, err := floormilter.Build(ctx, dir)
	if err != nil {
		return err
	}
	bin, err := e2e.BuildVipmilter(ctx, ".", dir)
	if err != nil {
		return err
	}
	var nsInodes []uint64
	for _, ns := range []*testenv.NS{netw.MTA, netw.Sink} {
		ino, err := nsInode(ns.Name)
		if err != nil {
			return err
		}
		nsInodes = append(nsInodes, ino)
	}
	b := &bench{o: o, dir: dir, floor: floor, bin: bin, netw: netw, pf: pf, ns: nsInodes, log: log, sockDir: dir}
	if o.chroot {
		if err := b.chrootSMTPD(ctx); err != nil {
			return err
		}
	}
	if b.pristine, err = readConfig(pf.Dir); err != nil {
		return err
	}

	vs := variants(b.sockDir)
	if o.only != "" {
		vs = slices.DeleteFunc(vs, func(v variant) bool { return v.kind != kindNone && !strings.Contains(v.name, o.only) })
	}
	env := describeMachine(ctx, netw)
	log.Info("start", "variants", len(vs), "n", o.n, "rounds", o.rounds, "machine", env)
	var bursts []burst
	skipped := map[string]string{}
	for r := range o.rounds {
		for i := range vs {
			v := vs[(i+r)%len(vs)] // rotate, so no variant always follows the same one
			if _, ok := skipped[v.name]; ok {
				continue
			}
			res, err := b.measure(ctx, v, r)
			var na notAvailable
			if errors.As(err, &na) {
				skipped[v.name] = na.why
				log.Warn("variant not run", "variant", v.name, "why", na.why)
				continue
			}
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, v.name, err)
			}
			log.Info("burst", "round", r+1, "variant", v.name, "msgs_per_s", fmt.Sprintf("%.0f", res.rate()),
				"postfix_ms_per_msg", fmt.Sprintf("%.2f", 1000*res.use.postfix/float64(res.n)),
				"milter_ms_per_msg", fmt.Sprintf("%.2f", 1000*res.use.milter/float64(res.n)),
				"others_share", fmt.Sprintf("%.0f%%", 100*res.use.others), "busy", fmt.Sprintf("%.0f%%", 100*res.use.busy))
			bursts = append(bursts, res)
		}
	}
	fmt.Printf("bench/hooks %s: -n %d -rounds %d -sessions %d -warmup %d -chroot=%t, 1 KiB, one message per connection; %s\n",
		strings.Join(os.Args[1:], " "), o.n, o.rounds, o.sessions, o.warmup, o.chroot, env)
	report(os.Stdout, vs, bursts, o.maxOther)
	for _, v := range vs {
		if why, ok := skipped[v.name]; ok {
			fmt.Printf("not run: %s: %s\n", v.name, why)
		}
	}
	return nil
}

// reportLog prints the report of the run logged in o.fromLog.
func reportLog(o opts) error {
	f, err := os.Open(o.fromLog)
	if err != nil {
		return err
	}
	defer f.Close()
	bursts, n, err := readLog(f)
	if err != nil {
		return fmt.Errorf("%s: %w", o.fromLog, err)
	}
	fmt.Printf("bench/hooks %s: %d bursts from the log (the last run's: %d messages each)\n", strings.Join(os.Args[1:], " "), len(bursts), n)
	report(os.Stdout, variants(""), bursts, o.maxOther)
	return nil
}

// bench is the shared state of one run.
type bench struct {
	o        opts
	dir      string
	floor    string // floor-milter binary
	bin      string // vipmilter binary
	netw     *e2e.Network
	pf       *testenv.Postfix
	ns       []uint64
	log      *slog.Logger
	pristine map[string][]byte            // main.cf and master.cf as the harness wrote them (-chroot: and chrooted)
	sockDir  string                       // where the unix sockets live
	rendered map[string]map[string][]byte // per variant: main.cf and master.cf after its first setup
}

// burst is one measured burst of one variant.
type burst struct {
	variant string
	round   int
	n       int
	secs    float64
	use     usage
}

func (b burst) rate() float64 { return float64(b.n) / b.secs }

// measure sets a variant up, warms it up, sends one burst and tears the
// variant down again.
func (b *bench) measure(ctx context.Context, v variant, round int) (burst, error) {
	if err := writeConfig(b.pf.Dir, b.pristine); err != nil {
		return burst{}, err
	}
	t0 := time.Now()
	running, err := v.setup(ctx, b)
	if err != nil {
		return burst{}, err
	}
	defer running.stop()
	t1 := time.Now()
	if err := b.restart(ctx); err != nil {
		return burst{}, err
	}
	b.log.Debug("setup", "variant", v.name, "setup_s", t1.Sub(t0).Seconds(), "restart_s", time.Since(t1).Seconds())
	master, err := masterPID(b.pf)
	if err != nil {
		return burst{}, err
	}
	milter := 0
	if running.pid != nil {
		if milter, err = running.pid(); err != nil {
			return burst{}, err
		}
	}
	if b.o.warmup > 0 {
		if _, err := b.send(ctx, b.o.warmup); err != nil {
			return burst{}, fmt.Errorf("warm-up: %w", err)
		}
	}
	pr := probe{masterPID: master, milterPID: milter, ns: b.ns}
	before, err := pr.take()
	if err != nil {
		return burst{}, err
	}
	secs, err := b.send(ctx, b.o.n)
	if err != nil {
		return burst{}, err
	}
	after, err := pr.take()
	if err != nil {
		return burst{}, err
	}
	running.stop()
	if running.served != nil {
		if err := running.served(b.o.warmup + b.o.n); err != nil {
			return burst{}, err
		}
	}
	return burst{variant: v.name, round: round, n: b.o.n, secs: secs, use: since(before, after)}, nil
}

// send runs smtp-source for n messages and returns the seconds until the
// maillog shows n deliveries. It watches the maillog rather than polling
// the queue (e2e.Throughput does that): every postqueue call runs Postfix's
// showq, whose CPU would be counted as Postfix's.
func (b *bench) send(ctx context.Context, n int) (float64, error) {
	log, err := os.Open(filepath.Join(b.pf.Dir, "maillog"))
	if err != nil {
		return 0, err
	}
	defer log.Close()
	if _, err := log.Seek(0, io.SeekEnd); err != nil {
		return 0, err
	}
	start := time.Now()
	cmd := b.netw.MTA.Command(ctx, "smtp-source", "-s", fmt.Sprint(b.o.sessions), "-l", "1024", "-m", fmt.Sprint(n),
		"-f", "bench@example.com", "-t", "user@["+e2e.SinkAddr4+"]", "127.0.0.1:25")
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("smtp-source: %w: %s", err, out)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	var sent, failed int
	var partial []byte
	buf := make([]byte, 64<<10)
	err = testenv.Poll(wctx, 10*time.Millisecond, func() (bool, error) {
		for {
			k, err := log.Read(buf)
			if k == 0 || err != nil {
				break
			}
			data := append(partial, buf[:k]...)
			end := strings.LastIndexByte(string(data), '\n') + 1
			for _, line := range strings.Split(string(data[:end]), "\n") {
				switch {
				case strings.Contains(line, " status=sent "):
					sent++
				case strings.Contains(line, " status=bounced ") || strings.Contains(line, " status=deferred "):
					failed++
				}
			}
			partial = append(partial[:0], data[end:]...)
		}
		if failed > 0 {
			return false, fmt.Errorf("%d messages not delivered:\n%s", failed, b.pf.LogTail(10))
		}
		return sent >= n, nil
	}, fmt.Sprintf("%d deliveries in the maillog", n))
	if err != nil {
		return 0, err
	}
	return time.Since(start).Seconds(), nil
}

// restart stops Postfix, waits until its master is gone and starts it
// again, so no process of the previous variant serves a session. It waits
// on /proc rather than retrying "postfix start" (testenv's Restart), and
// skips postfix-script's integrity checks, which take seconds of find(1)
// on a loaded machine.
func (b *bench) restart(ctx context.Context) error {
	pid, err := masterPID(b.pf)
	if err != nil {
		return err
	}
	if err := b.pf.Stop(); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := testenv.Poll(wctx, 20*time.Millisecond, func() (bool, error) {
		_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
		return errors.Is(err, os.ErrNotExist), nil
	}, "postfix master to exit"); err != nil {
		return err
	}
	// The integrity checks ran at the first start; postfix-script skips
	// them when quick-start exists, as after its own "postfix stop".
	if err := os.WriteFile(filepath.Join(b.pf.Dir, "queue", "quick-start"), nil, 0o644); err != nil {
		return err
	}
	return b.pf.Start(ctx)
}

// chrootSMTPD makes smtpd and cleanup run chrooted in the queue
// directory, as Debian's stock master.cf has them, and moves the unix
// sockets into it (queue/vipmilter, mode 0755), where the renderer
// requires them and names them as seen from inside the jail.
func (b *bench) chrootSMTPD(ctx context.Context) error {
	if _, err := b.pf.NS.Run(ctx, "postconf", "-c", b.pf.Dir, "-F", "smtp/inet/chroot=y", "cleanup/unix/chroot=y"); err != nil {
		return err
	}
	b.sockDir = filepath.Join(b.pf.Dir, "queue", "vipmilter")
	return os.MkdirAll(b.sockDir, 0o755)
}

// seen is a milter or policy address as chrooted smtpd and cleanup reach
// it (-chroot): a unix path relative to the queue directory.
func (b *bench) seen(listen string) string {
	path, ok := strings.CutPrefix(listen, "unix:")
	if !b.o.chroot || !ok {
		return listen
	}
	rel, err := filepath.Rel(filepath.Join(b.pf.Dir, "queue"), path)
	if err != nil {
		return listen
	}
	return "unix:/" + rel
}

// masterPID reads Postfix master's process id from its pid file.
func masterPID(pf *testenv.Postfix) (int, error) {
	b, err := os.ReadFile(filepath.Join(pf.Dir, "queue", "pid", "master.pid"))
	if err != nil {
		return 0, fmt.Errorf("postfix master pid: %w", err)
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil {
		return 0, fmt.Errorf("postfix master pid %q: %w", b, err)
	}
	return pid, nil
}

func readConfig(dir string) (map[string][]byte, error) {
	m := map[string][]byte{}
	for _, f := range []string{"main.cf", "master.cf"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return nil, err
		}
		m[f] = b
	}
	return m, nil
}

func writeConfig(dir string, files map[string][]byte) error {
	for f, b := range files {
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// describeMachine is the context a reader needs to judge the figures:
// Postfix's version, CPUs, and the load when the run started.
func describeMachine(ctx context.Context, netw *e2e.Network) string {
	ver, _ := netw.MTA.Run(ctx, "postconf", "-d", "-h", "mail_version")
	load, _ := os.ReadFile("/proc/loadavg")
	cpus, _ := exec.CommandContext(ctx, "nproc").Output()
	f := strings.Fields(string(load))
	if len(f) > 3 {
		f = f[:3]
	}
	return fmt.Sprintf("Postfix %s, %s CPUs, load average %s at start, %s", strings.TrimSpace(ver),
		strings.TrimSpace(string(cpus)), strings.Join(f, " "), time.Now().UTC().Format("2006-01-02 15:04 UTC"))
}
