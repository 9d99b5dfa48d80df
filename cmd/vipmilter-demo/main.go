// Command vipmilter-demo shows the whole vipmilter system working on the
// bundled examples/: private network namespaces, "vipmilter provision",
// a private Postfix configured by "vipmilter postfix", "vipmilter serve" and
// an SMTP sink, then a table of which binding each sample message got and the
// source address and EHLO name the sink saw. It exits non-zero if any message
// is missing, arrived twice, or left from the wrong address or EHLO name.
//
// Run it from the module root as root: go run ./cmd/vipmilter-demo
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vipmilter/vipmilter/e2e"
)

func main() {
	os.Exit(run())
}

func run() int {
	examples := flag.String("examples", "examples", "directory holding vipmilter.conf and policy.sieve")
	ipFallback := flag.Bool("ip-fallback", false, "add binding addresses with ip(8) instead of vipmilter provision")
	prebuilt := flag.String("vipmilter", "", "use this vipmilter binary instead of building ./cmd/vipmilter")
	keep := flag.Bool("keep", false, "keep the work directory (maillog, Postfix config, sink dumps)")
	onSendmail := flag.Bool("sendmail", false, "run on a private Sendmail 8.17 (Debian's packages, unpacked, never installed) instead of Postfix")
	flag.Parse()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	slog.SetDefault(log) // library lines in the same format

	if err := prerequisites(); err != nil {
		fmt.Fprintf(os.Stderr, "vipmilter-demo: %v\n", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	dir, err := os.MkdirTemp("", "vipmilter-demo-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "vipmilter-demo: %v\n", err)
		return 1
	}
	if *keep {
		log.Info("keeping work directory", "dir", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	conf, err := e2e.CopyExamples(*examples, filepath.Join(dir, "conf"))
	if err != nil {
		fmt.Fprintf(os.Stderr, "vipmilter-demo: %v\n", err)
		return 1
	}
	bin := *prebuilt
	if bin == "" {
		log.Info("building vipmilter")
		if bin, err = e2e.BuildVipmilter(ctx, ".", dir); err != nil {
			fmt.Fprintf(os.Stderr, "vipmilter-demo: %v (run from the module root)\n", err)
			return 1
		}
	}
	if *onSendmail {
		return runSendmail(ctx, log, dir, *examples, bin, *ipFallback)
	}
	sys, err := e2e.StartSystem(ctx, e2e.SystemOptions{Bin: bin, Config: conf, Dir: dir, IPAddrFallback: *ipFallback, Log: log})
	if err != nil {
		fmt.Fprintf(os.Stderr, "vipmilter-demo: %v\n", err)
		return 1
	}
	defer func() {
		if err := sys.Close(); err != nil {
			log.Error("teardown", "err", err)
		}
	}()

	cases := e2e.ExampleCases(fmt.Sprintf("demo-%d", time.Now().Unix()))
	if err := sys.SendCases(ctx, cases); err != nil {
		fmt.Fprintf(os.Stderr, "vipmilter-demo: %v\n", err)
		return 1
	}
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	waitErr := sys.WaitArrived(wctx, cases)
	wcancel()
	outs, err := e2e.Check(sys.SinkDir, "X-Binding", cases)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vipmilter-demo: %v\n", err)
		return 1
	}

	failed := printTable(outs)
	if waitErr != nil || failed {
		fmt.Fprintf(os.Stderr, "\nmaillog tail:\n%s\n\nqueue:\n%s\n", sys.Postfix.LogTail(40), sys.Postfix.Queue(context.Background()))
		return 1
	}
	return 0
}

// printTable prints one row per case and reports whether any failed.
func printTable(outs []e2e.Outcome) (failed bool) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MESSAGE\tBINDING\tSOURCE ADDRESS\tEHLO\tRESULT")
	for _, o := range outs {
		result := "ok"
		if len(o.Problems) > 0 {
			result = "FAIL: " + strings.Join(o.Problems, "; ")
			failed = true
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", o.Case.Name, o.Case.Binding, dash(o.Source), dash(o.Helo), result)
	}
	tw.Flush()
	return failed
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// prerequisites says plainly what is missing rather than failing halfway.
func prerequisites() error {
	if os.Geteuid() != 0 {
		return errors.New("run as root: the demo creates network namespaces and runs a private Postfix")
	}
	var missing []string
	for _, bin := range []string{"postfix", "postconf", "smtp-sink", "swaks", "ip", "ss", "go"} {
		if _, err := exec.LookPath(bin); err != nil {
			missing = append(missing, bin)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %s: apt-get install postfix swaks iproute2 (or: make deps)", strings.Join(missing, ", "))
	}
	return nil
}
