package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/vipmilter/vipmilter/e2e"
)

// runSendmail is the demo on Sendmail: the same example messages and table,
// through a private Sendmail configured by "vipmilter sendmail". The IPv6
// example is left out: a dual-stack binding's mail leaves over IPv4 on
// Sendmail (docs/sendmail.md).
func runSendmail(ctx context.Context, log *slog.Logger, dir, examples, bin string, ipFallback bool) int {
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "vipmilter-demo: %v\n", err)
		return 1
	}
	log.Info("unpacking Sendmail (apt-get download, dpkg-deb -x; never installed)", "cache", e2e.SendmailDebCache())
	dist, err := e2e.UnpackSendmail(ctx, e2e.SendmailDebCache(), filepath.Join(dir, "dist"))
	if err != nil {
		return fail(err)
	}
	conf, err := e2e.CopySendmailExamples(examples, filepath.Join(dir, "conf"))
	if err != nil {
		return fail(err)
	}
	// smtp-sink writes its dumps as nobody.
	if err := os.Chmod(dir, 0o755); err != nil {
		return fail(err)
	}
	sys, err := e2e.StartSendmailSystem(ctx, e2e.SendmailOptions{Dist: dist,
		SystemOptions: e2e.SystemOptions{Bin: bin, Config: conf, Dir: dir, IPAddrFallback: ipFallback, Log: log}})
	if err != nil {
		return fail(err)
	}
	defer func() {
		if err := sys.Close(); err != nil {
			log.Error("teardown", "err", err)
		}
	}()
	cases := e2e.SendmailExampleCases(fmt.Sprintf("demo-%d", time.Now().Unix()))
	if err := sys.SendCases(ctx, cases); err != nil {
		return fail(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	waitErr := sys.WaitArrived(wctx, cases)
	wcancel()
	// The binding header is not checked: Sendmail cannot strip it.
	outs, err := e2e.Check(sys.SinkDir, "", cases)
	if err != nil {
		return fail(err)
	}
	if printTable(outs) || waitErr != nil {
		fmt.Fprintf(os.Stderr, "\nqueue:\n%s\nserve:\n%s\n", sys.Sendmail.Queue(context.Background()), sys.ServeOutput())
		return 1
	}
	return 0
}
