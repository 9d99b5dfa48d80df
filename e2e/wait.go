package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// waitListen polls until something listens on host:port inside ns, using ss
// from iproute2 so the check itself runs in the namespace.
func waitListen(ctx context.Context, ns, host string, port int) error {
	want := net.JoinHostPort(host, strconv.Itoa(port))
	if strings.Contains(host, ":") {
		want = "[" + host + "]:" + strconv.Itoa(port)
	}
	return Poll(ctx, 50*time.Millisecond, func() (bool, error) {
		out, err := run(ctx, "ip", "netns", "exec", ns, "ss", "-Hltn")
		if err != nil {
			return false, err
		}
		return strings.Contains(out, want) || strings.Contains(out, "*:"+strconv.Itoa(port)), nil
	}, "listener on "+want)
}

// Poll calls cond every interval until it reports true, returns an error, or
// ctx ends.
func Poll(ctx context.Context, interval time.Duration, cond func() (bool, error), what string) error {
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(interval):
		}
	}
}
