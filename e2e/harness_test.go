package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// env is one namespaced network with a private Postfix and IPv4+IPv6 sinks.
type env struct {
	net     *Network
	pf      *testenv.Postfix
	sinkDir string
}

func newEnv(t *testing.T, ctx context.Context, mainExtra ...string) *env {
	t.Helper()
	testenv.Require(t, Prereqs)
	n, err := NewNetwork(ctx)
	if err != nil {
		t.Fatal(err)
	}
	testenv.CloseAtEnd(t, n)
	e := &env{net: n, sinkDir: filepath.Join(t.TempDir(), "sink")}
	sinks, err := StartSinks(ctx, n, e.sinkDir)
	for _, s := range sinks {
		t.Cleanup(s.Stop)
	}
	if err != nil {
		t.Fatal(err)
	}
	e.pf = testenv.StartTestPostfix(t, n.MTA, slices.Concat(postfixMain, mainExtra)...)
	return e
}

// waitSubjects waits until every subject arrived at the sink, then returns
// the received messages by subject; a duplicate fails the test.
func (e *env) waitSubjects(t *testing.T, ctx context.Context, subjects ...string) map[string]testenv.Received {
	t.Helper()
	var got map[string]testenv.Received
	err := testenv.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		msgs, err := testenv.ReadDumps(e.sinkDir)
		if err != nil {
			return false, err
		}
		got = map[string]testenv.Received{}
		for _, m := range msgs {
			s := m.Header.Get("Subject")
			if _, dup := got[s]; dup {
				t.Errorf("message %q arrived twice", s)
			}
			got[s] = m
		}
		for _, s := range subjects {
			if _, ok := got[s]; !ok {
				return false, nil
			}
		}
		return true, nil
	}, "messages at the sink")
	if err != nil {
		t.Fatalf("%v; arrived: %d of %d", err, len(got), len(subjects))
	}
	return got
}

// TestHarnessRouting checks the harness itself with a hand-written per-binding
// transport setup (header_checks on the client header): each transport's mail
// must reach the sink from its own IPv4 or IPv6 address with its EHLO name.
func TestHarnessRouting(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := newEnv(t, ctx, "header_checks = regexp:${config_directory}/route_checks")
	routes := []struct{ name, addr, helo, rcpt string }{
		{"a", "192.0.2.11", "a.e2e.test", "user@[" + SinkAddr4 + "]"},
		{"b", "192.0.2.12", "b.e2e.test", "user@[" + SinkAddr4 + "]"},
		{"v6", "2001:db8::11", "v6.e2e.test", "user@[IPv6:" + SinkAddr6 + "]"},
	}
	checks, master := "", ""
	for _, r := range routes {
		if err := e.net.AddAddress(ctx, r.addr); err != nil {
			t.Fatal(err)
		}
		opt := "smtp_bind_address"
		if r.name == "v6" {
			opt = "smtp_bind_address6"
		}
		checks += "/^X-Route: " + r.name + "$/ FILTER r_" + r.name + ":\n"
		master += "r_" + r.name + " unix - - n - 4 smtp -o " + opt + "=" + r.addr + " -o smtp_helo_name=" + r.helo + "\n"
	}
	if err := os.WriteFile(filepath.Join(e.pf.Dir, "route_checks"), []byte(checks), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.pf.AppendMaster(master); err != nil {
		t.Fatal(err)
	}
	if err := e.pf.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	var subjects []string
	for _, r := range routes {
		s := "harness-" + r.name
		subjects = append(subjects, s)
		if err := Submit(ctx, e.net.MTA, Message{From: "sender@e2e.test", To: []string{r.rcpt}, Subject: s, Headers: []string{"X-Route: " + r.name}}); err != nil {
			t.Fatal(err)
		}
	}
	got := e.waitSubjects(t, ctx, subjects...)
	for _, r := range routes {
		m := got["harness-"+r.name]
		if m.ClientAddr != r.addr || m.Helo != r.helo {
			t.Errorf("route %s: sink saw %s / %q, want %s / %q", r.name, m.ClientAddr, m.Helo, r.addr, r.helo)
		}
	}
}

// TestHarnessConcurrency checks that the concurrency sink observes Postfix's
// per-destination limit: without a limit a burst overlaps more than 2
// sessions, with "_destination_concurrency_limit = 2" never.
func TestHarnessConcurrency(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := newEnv(t, ctx, "header_checks = regexp:${config_directory}/route_checks")
	if err := e.net.AddAddress(ctx, "192.0.2.11"); err != nil {
		t.Fatal(err)
	}
	checks := "/^X-Route: limited$/ FILTER limited:\n/^X-Route: free$/ FILTER free:\n"
	if err := os.WriteFile(filepath.Join(e.pf.Dir, "route_checks"), []byte(checks), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := e.pf.AppendMaster("limited unix - - n - - smtp -o smtp_bind_address=192.0.2.11\nfree unix - - n - - smtp -o smtp_bind_address=192.0.2.11\n"); err != nil {
		t.Fatal(err)
	}
	if err := e.pf.Postconf(ctx, "limited_destination_concurrency_limit = 2", "free_destination_concurrency_limit = 20", "free_initial_destination_concurrency = 20"); err != nil {
		t.Fatal(err)
	}
	if err := e.pf.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	const burst = 50
	for _, tc := range []struct {
		route    string
		min, max int
	}{{"limited", 1, 2}, {"free", 3, burst}} {
		t.Run(tc.route, func(t *testing.T) {
			stats := startGoSinkAt(t, ctx, e.net, tc.route == "limited")
			// Queue the whole burst first so delivery concurrency, not the
			// submission rate, decides the overlap.
			if err := e.pf.Postconf(ctx, "defer_transports = "+tc.route); err != nil {
				t.Fatal(err)
			}
			if err := e.pf.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			for i := range burst {
				m := Message{From: "a@e2e.test", To: []string{"user@[" + GoSinkAddr + "]"},
					Subject: fmt.Sprintf("%s %d", tc.route, i), Headers: []string{"X-Route: " + tc.route}}
				if err := Submit(ctx, e.net.MTA, m); err != nil {
					t.Fatal(err)
				}
			}
			if err := e.pf.Postconf(ctx, "defer_transports ="); err != nil {
				t.Fatal(err)
			}
			if err := e.pf.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			if err := e.pf.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			st := waitBurst(t, ctx, stats, burst)
			if m := st.MaxConcurrent["192.0.2.11"]; m < tc.min || m > tc.max {
				t.Errorf("max concurrent sessions = %d, want %d..%d (stats %v)", m, tc.min, tc.max, st.MaxConcurrent)
			}
		})
	}
}

// startGoSink runs the concurrency sink in the sink namespace, on
// GoSinkAddr, until the test ends.
func startGoSink(t *testing.T, ctx context.Context, n *Network) *testenv.GoSink {
	t.Helper()
	return startGoSinkAt(t, ctx, n, true)
}

// startGoSinkAt is startGoSink; addAddr false reuses the address and route a
// previous call added in the same namespaces.
func startGoSinkAt(t *testing.T, ctx context.Context, n *Network, addAddr bool) *testenv.GoSink {
	t.Helper()
	if addAddr {
		if err := n.AddGoSinkRoute(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return testenv.StartTestGoSink(t, n.Sink, net.JoinHostPort(GoSinkAddr, "25"), 50*time.Millisecond)
}

// waitBurst waits until n distinct subjects reached the concurrency sink and
// fails on any duplicate.
func waitBurst(t *testing.T, ctx context.Context, sink *testenv.GoSink, n int) testenv.SinkStats {
	t.Helper()
	var st testenv.SinkStats
	if err := testenv.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
		st = sink.Stats()
		return len(st.Subjects) == n, nil
	}, "the burst at the sink"); err != nil {
		t.Fatalf("%v; stats %+v", err, st)
	}
	for subj, c := range st.Subjects {
		if c != 1 {
			t.Errorf("%q arrived %d times", subj, c)
		}
	}
	return st
}
