// Command milter-socket measures what a milter's socket kind costs a real
// Postfix: the issue reported that a go-milter milter which opted out of
// most stages, over TCP, cut Postfix to about a fifth of its throughput
// (≈40 ms per message) while the same milter on a unix socket cost nothing.
//
// The suspected cause: Postfix writes a milter packet that gets no reply
// (a macro packet, SMFIC_MACRO) and then the command, each with its own
// write(2); Postfix does not set TCP_NODELAY on milter sockets, so Nagle
// holds the command until the macro packet is ACKed, and the milter's
// kernel delays that ACK (Linux delayed ACK, 40 ms minimum) because the
// milter has nothing to send back. Re-arming TCP_QUICKACK on the milter side
// sends that ACK at once.
//
// Variants (interleaved, repeated; median messages/s and ratio to "no
// milter" in the same run), all inside the e2e harness's private Postfix
// and network namespaces (smtp-source → Postfix → smtp-sink):
//
//	no milter
//	opt-out NoOp unix|inet           go-milter NoOpMilter, OptNo* for every stage but end of message
//	opt-out NoOp inet +quickack      the same, TCP_QUICKACK re-armed after every read
//	all-stages NoOp inet             NoOpMilter asking for every stage, answering each
//	floor milter (C libmilter) unix|inet
//	                                 the floor for any milter (bench/internal/floormilter, Debian
//	                                 libmilter-dev): every stage off but end of message, adds one header
//	vipmilter unix|inet              package milter (TCP_QUICKACK after each packet it does not answer)
//	vipmilter inet -quickack         package milter with TCP tuning defeated
//
// Besides msg/s it reports the milter process's CPU per message (utime +
// stime from /proc during the 8-session burst).
//
// Each variant also runs one SMTP session at a time (-s1 messages), where a
// per-message stall shows directly as latency.
//
// Run as root from the module root: go run ./bench/milter-socket [-n 2000] [-n1 200] [-repeat 3]
// (-strace DIR also writes an strace -tt of each milter; evidence only, it
// slows the milter).
//
// Result with go-milter v0.5.0 (Postfix 3.7.11, Linux 6.18, 2 vCPU; -n 1000
// -n1 100 -repeat 3, medians): opt-out NoOp inet 163 msg/s, 45 ms/msg vs
// unix 384 msg/s, 3.7 ms/msg; +quickack 348 msg/s, 4.6 ms; quickack only
// after packets without reply 392 msg/s, 3.9 ms; vipmilter unix 332 / inet
// 331 msg/s. An strace of the opt-out
// milter shows Postfix sending the CONNECT, HELO, MAIL and RCPT macros
// (SMFIC_MACRO, no reply) for the stages it skips, then the end-of-message
// macros a median 41 ms later; with QUICKACK that gap is 2–4 ms.
//
// Result with package milter on d--j/go-milter v0.10.1 (protocol 6), the
// same machine heavily loaded by other jobs (load 12–18 on 2 vCPU, so
// absolute rates are a fifth of the above; -n 600 -n1 60 -repeat 2,
// medians): no milter 94 msg/s; C libmilter EOM unix (the floor milter's
// predecessor, without TCP tuning) 85 msg/s (0.91×),
// 0.62 ms milter CPU/msg; vipmilter unix 84 msg/s (0.90×), 0.85 ms CPU/msg
// (1.37× the C milter's); vipmilter inet 72 msg/s, 0.90 ms. One session at
// a time: vipmilter inet 14.1–21.6 ms/msg, and 55.7–61.7 ms/msg with
// TCP_QUICKACK defeated: the stall is still there without it, and fixed.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"

	gomilter "github.com/d--j/go-milter"

	"github.com/vipmilter/vipmilter/bench/internal/floormilter"
	"github.com/vipmilter/vipmilter/bench/internal/mailpath"
	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/e2e"
	"github.com/vipmilter/vipmilter/internal/testenv"
	"github.com/vipmilter/vipmilter/milter"
	"github.com/vipmilter/vipmilter/sieve"
)

// optOut is "opted out of most stages": Postfix only needs to send the
// end of message (and the macros it sends anyway).
const optOut = gomilter.OptNoConnect | gomilter.OptNoHelo | gomilter.OptNoMailFrom | gomilter.OptNoRcptTo |
	gomilter.OptNoBody | gomilter.OptNoHeaders | gomilter.OptNoEOH

var (
	straceDir string
	floorBin  string // the floor milter, built once per run
)

type variant struct {
	name   string
	listen string // empty: no milter
	kind   string // milter kind for the child: optout, optout-quickack, allstages, vipmilter, vipmilter-noquickack, floor
}

// cpuTicks is a process's utime+stime in clock ticks (proc(5)).
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %q", pid, b)
	}
	return u + st, nil
}

const clockTicksPerSecond = 100 // USER_HZ on Linux

func main() {
	if len(os.Args) == 4 && os.Args[1] == "serve-milter" {
		if err := serveMilter(os.Args[2], os.Args[3]); err != nil {
			fmt.Fprintln(os.Stderr, "serve-milter:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/milter-socket:", err)
		os.Exit(1)
	}
}

func run() error {
	n := flag.Int("n", 2000, "messages per run with 8 parallel SMTP sessions")
	n1 := flag.Int("n1", 200, "messages per run with one SMTP session at a time (0: skip)")
	repeat := flag.Int("repeat", 3, "interleaved repetitions")
	only := flag.String("only", "", "run only variants whose name contains this")
	flag.StringVar(&straceDir, "strace", "", "write an strace -tt of each milter's reads and writes into this directory (evidence; slows the milter)")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx := context.Background()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	mp, err := mailpath.New(ctx, "vipmilter-socket-")
	if err != nil {
		return err
	}
	defer mp.Close()
	dir, netw, pf := mp.Dir, mp.Net, mp.Postfix
	mainCF, _ := os.ReadFile(filepath.Join(pf.Dir, "main.cf"))
	sock := "unix:" + filepath.Join(dir, "milter.sock")
	inet := "inet:127.0.0.1:7101"

	variants := []variant{
		{name: "no milter"},
		{name: "opt-out NoOp unix", listen: sock, kind: "optout"},
		{name: "opt-out NoOp inet", listen: inet, kind: "optout"},
		{name: "opt-out NoOp inet +quickack", listen: inet, kind: "optout-quickack"},
		{name: "all-stages NoOp inet", listen: inet, kind: "allstages"},
		{name: "floor milter (C libmilter) unix", listen: sock, kind: "floor"},
		{name: "floor milter (C libmilter) inet", listen: inet, kind: "floor"},
		{name: "vipmilter unix", listen: sock, kind: "vipmilter"},
		{name: "vipmilter inet", listen: inet, kind: "vipmilter"},
		{name: "vipmilter inet -quickack", listen: inet, kind: "vipmilter-noquickack"},
	}
	if *only != "" {
		variants = slices.DeleteFunc(variants, func(v variant) bool { return v.name != "no milter" && !strings.Contains(v.name, *only) })
	}
	for _, v := range variants {
		if v.kind == "floor" && floorBin == "" {
			if floorBin, err = floormilter.Build(ctx, dir); err != nil {
				return err
			}
		}
	}
	rates := map[string][]float64{}
	lat := map[string][]float64{} // ms per message, one session at a time
	cpu := map[string][]float64{} // milter CPU ms per message
	for r := 0; r < *repeat; r++ {
		for _, v := range variants {
			os.WriteFile(filepath.Join(pf.Dir, "main.cf"), mainCF, 0o644)
			pid, stop, err := setup(ctx, v, self, netw, pf)
			if err != nil {
				return fmt.Errorf("%s: %w", v.name, err)
			}
			t0, _ := cpuTicks(pid)
			rate, err := e2e.Throughput(ctx, netw, pf, *n, 8)
			if t1, terr := cpuTicks(pid); pid > 0 && terr == nil {
				cpu[v.name] = append(cpu[v.name], float64(t1-t0)*1000/clockTicksPerSecond/float64(*n))
			}
			if err == nil && *n1 > 0 {
				var r1 float64
				r1, err = e2e.Throughput(ctx, netw, pf, *n1, 1)
				lat[v.name] = append(lat[v.name], 1000/r1)
			}
			stop()
			if err != nil {
				return fmt.Errorf("%s: %w\n%s", v.name, err, pf.LogTail(20))
			}
			log.Info("run", "variant", v.name, "repeat", r+1, "msgs_per_s", fmt.Sprintf("%.0f", rate))
			rates[v.name] = append(rates[v.name], rate)
		}
	}
	base := e2e.Median(rates["no milter"])
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "VARIANT\tMSG/S (-s 8)\tRATIO\tMS/MSG (-s 1)\tMILTER CPU MS/MSG\tRUNS MSG/S\tRUNS MS/MSG\n")
	for _, v := range variants {
		m := e2e.Median(rates[v.name])
		c := "-"
		if len(cpu[v.name]) > 0 {
			c = fmt.Sprintf("%.2f", e2e.Median(cpu[v.name]))
		}
		fmt.Fprintf(tw, "%s\t%.0f\t%.2f×\t%.1f\t%s\t%s\t%s\n", v.name, m, m/base, e2e.Median(lat[v.name]), c,
			fmtList(rates[v.name], "%.0f"), fmtList(lat[v.name], "%.1f"))
	}
	return tw.Flush()
}

// setup starts the variant's milter inside the mta namespace and points
// Postfix at it; it returns the milter's pid (0 for none, or under strace)
// and stop, which ends the milter.
func setup(ctx context.Context, v variant, self string, netw *e2e.Network, pf *testenv.Postfix) (int, func(), error) {
	none := func() {}
	if v.listen == "" {
		return 0, none, pf.Restart(ctx)
	}
	args := []string{self, "serve-milter", v.kind, v.listen}
	if v.kind == "floor" {
		conn, err := floormilter.Conn(v.listen)
		if err != nil {
			return 0, none, err
		}
		args = []string{floorBin, conn}
	}
	if straceDir != "" {
		out := filepath.Join(straceDir, strings.NewReplacer(" ", "_", "+", "", "-", "").Replace(v.name)+".strace")
		args = append([]string{"-f", "-tt", "-e", "trace=read,write,setsockopt,accept4,close", "-o", out}, args...)
		args = append([]string{"strace"}, args...)
	}
	cmd := netw.MTA.Command(context.Background(), args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// A process group of its own: strace does not pass SIGTERM on to the
	// milter it traces, so stop signals the whole group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return 0, none, err
	}
	stop := func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM); cmd.Wait() }
	if err := e2e.WaitMilter(ctx, netw.MTA, v.listen); err != nil {
		stop()
		return 0, none, err
	}
	// Postfix's defaults otherwise: milter_protocol = 6, default macros.
	if err := pf.Postconf(ctx, "smtpd_milters="+v.listen, "milter_default_action=tempfail"); err != nil {
		stop()
		return 0, none, err
	}
	if err := pf.Restart(ctx); err != nil {
		stop()
		return 0, none, err
	}
	pid := cmd.Process.Pid // "ip netns exec" execs the milter
	if straceDir != "" {
		pid = 0
	}
	return pid, stop, nil
}

// serveMilter runs in the mta namespace (re-executed by setup).
func serveMilter(kind, listen string) error {
	network, addr, _ := strings.Cut(listen, ":")
	if network == "inet" {
		network = "tcp"
	}
	if network == "unix" {
		os.Remove(addr)
	}
	var ln net.Listener
	var err error
	if strings.HasPrefix(kind, "vipmilter") {
		return serveVipmilter(kind, listen)
	}
	ln, err = net.Listen(network, addr)
	if err != nil {
		return err
	}
	if network == "unix" {
		os.Chmod(addr, 0o666)
	}
	var proto gomilter.OptProtocol
	switch kind {
	case "optout":
		proto = optOut
	case "optout-quickack":
		proto = optOut
		ln = quickAckListener{ln}
	case "allstages":
	default:
		return fmt.Errorf("unknown kind %q", kind)
	}
	s := gomilter.NewServer(gomilter.WithMilter(func() gomilter.Milter { return gomilter.NoOpMilter{} }), gomilter.WithProtocols(proto))
	return s.Serve(ln)
}

// serveVipmilter serves package milter with a Match_Domain policy (no
// script: the milter asks for headers only, as with a header-free policy).
// kind "vipmilter-noquickack" hides the *net.TCPConn from the milter, so
// its TCP tuning does not apply.
func serveVipmilter(kind, listen string) error {
	cfg, err := config.Parse("/bench/vipmilter.conf", []byte(`
Milter_Listen = "`+listen+`"
Binding "default" { Bind_Address = 192.0.2.1 }
Binding "Example" { Bind_Address = 192.0.2.10  Match_Domain = example.com }
`))
	if err != nil {
		return err
	}
	pol, err := sieve.New(cfg, sieve.Options{})
	if err != nil {
		return err
	}
	srv := milter.New(pol, milter.Settings{BindingHeader: cfg.BindingHeader}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ln, err := srv.Listen(config.MustParseListen(listen))
	if err != nil {
		return err
	}
	if kind == "vipmilter-noquickack" {
		ln = plainListener{ln}
	}
	return srv.Serve(ln)
}

// plainListener hands out connections that are not *net.TCPConn.
type plainListener struct{ net.Listener }

type plainConn struct{ net.Conn }

func (l plainListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return plainConn{c}, nil
}

// quickAckListener re-arms TCP_QUICKACK after every read, the simplest form
// of the fix (package milter does it only after packets it does not answer).
type quickAckListener struct{ net.Listener }

type quickAckConn struct {
	*net.TCPConn
	raw syscall.RawConn
}

func (l quickAckListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	raw, err := tc.SyscallConn()
	if err != nil {
		return c, nil
	}
	q := &quickAckConn{TCPConn: tc, raw: raw}
	q.quickAck()
	return q, nil
}

func (c *quickAckConn) quickAck() {
	c.raw.Control(func(fd uintptr) {
		syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
}

func (c *quickAckConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	c.quickAck()
	return n, err
}

func fmtList(xs []float64, f string) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf(f, x))
	}
	return strings.Join(parts, ",")
}
