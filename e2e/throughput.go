package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/testenv"
)

// Throughput sends n messages with smtp-source over the given number of
// parallel SMTP sessions to the private Postfix and returns messages per
// second until its queue is empty, i.e. until every message was delivered.
// The system benchmarks (bench/hooks, bench/milter-socket) share it so
// their figures are comparable.
func Throughput(ctx context.Context, netw *Network, pf *testenv.Postfix, n, sessions int) (float64, error) {
	start := time.Now()
	cmd := netw.MTA.Command(ctx, "smtp-source", "-s", strconv.Itoa(sessions), "-l", "1024", "-m", strconv.Itoa(n),
		"-f", "bench@example.com", "-t", "user@["+SinkAddr4+"]", "127.0.0.1:25")
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("smtp-source: %w: %s", err, out)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := testenv.Poll(wctx, 20*time.Millisecond, func() (bool, error) { return pf.QueueEmpty(ctx), nil }, "empty queue"); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// WaitMilter polls until a milter in namespace ns accepts connections on
// listen (Milter_Listen notation, parsed as the binding file's is).
func WaitMilter(ctx context.Context, ns *testenv.NS, listen string) error {
	l, err := config.ParseListen(listen)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return testenv.Poll(wctx, 20*time.Millisecond, func() (bool, error) { return milterListening(wctx, ns, l) }, "milter on "+listen)
}

// milterListening reports whether a milter listens on l inside ns.
func milterListening(ctx context.Context, ns *testenv.NS, l config.Listen) (bool, error) {
	if l.Network == "unix" {
		// Ready once the milter opened the socket up beyond its owner
		// (Postfix's smtpd and cleanup connect as the postfix user); a
		// fresh socket has the umask's mode, without group write.
		fi, err := os.Stat(l.Path())
		return err == nil && fi.Mode().Perm()&0o020 != 0, nil
	}
	return ns.Listening(ctx, l.Address)
}

// Median of xs (0 for none); benchmarks report medians of interleaved runs.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
