package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Throughput sends n messages with smtp-source over the given number of
// parallel SMTP sessions to the private Postfix and returns messages per
// second until its queue is empty, i.e. until every message was delivered.
// The system benchmarks (bench/postfix, bench/milter-socket) share it so
// their figures are comparable.
func Throughput(ctx context.Context, netw *Network, pf *Postfix, n, sessions int) (float64, error) {
	start := time.Now()
	cmd := Exec(ctx, netw.MTA, "smtp-source", "-s", strconv.Itoa(sessions), "-l", "1024", "-m", strconv.Itoa(n),
		"-f", "bench@example.com", "-t", "user@["+SinkAddr4+"]", "127.0.0.1:25")
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("smtp-source: %w: %s", err, out)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	if err := Poll(wctx, 20*time.Millisecond, func() (bool, error) { return pf.QueueEmpty(ctx), nil }, "empty queue"); err != nil {
		return 0, err
	}
	return float64(n) / time.Since(start).Seconds(), nil
}

// WaitMilter polls until a milter in namespace ns accepts connections on
// listen (Milter_Listen notation).
func WaitMilter(ctx context.Context, ns, listen string) error {
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	return Poll(wctx, 20*time.Millisecond, func() (bool, error) {
		if path, ok := strings.CutPrefix(listen, "unix:"); ok {
			// Ready once the milter opened it up to the postfix user.
			fi, err := os.Stat(path)
			return err == nil && fi.Mode().Perm() == 0o666, nil
		}
		return Exec(wctx, ns, "sh", "-c", "ss -Hltn | grep -q '"+strings.TrimPrefix(listen, "inet:")+" '").Run() == nil, nil
	}, "milter on "+listen)
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
