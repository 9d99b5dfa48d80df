package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// TestServeKilledMidBurst (issue 11, "0 lost of 400 with kill -9
// mid-burst"): 400 messages from 8 concurrent SMTP clients through a real
// Postfix with vipmilter's milter and On_Milter_Down = tempfail; serve is
// SIGKILLed a quarter into the burst and restarted a moment later. While it
// is down smtpd answers 4xx and the clients retry, as a sending MTA would;
// Postfix's own queue retries fast (queue_run_delay 1s). Every message must
// reach the sink exactly once, from its binding's address: with tempfail
// nothing is accepted that the policy did not place, so even messages only
// the Sieve script places (List-Id) never leave from another binding.
func TestServeKilledMidBurst(t *testing.T) {
	testenv.Require(t, Prereqs)
	ctx := context.Background()
	tmp := t.TempDir()
	bin := e2eBinary(t, ctx, tmp)
	conf, err := CopyExamples(filepath.Join(repoRoot(t), "examples"), filepath.Join(tmp, "conf"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(conf)
	if err != nil {
		t.Fatal(err)
	}
	tempfail := strings.Replace(string(b), "On_Milter_Down  = accept", "On_Milter_Down  = tempfail", 1)
	if tempfail == string(b) {
		t.Fatal("examples/vipmilter.conf changed shape: no On_Milter_Down = accept line")
	}
	if err := os.WriteFile(conf, []byte(tempfail), 0o644); err != nil {
		t.Fatal(err)
	}
	s := startSystemWith(t, ctx, SystemOptions{Bin: bin, Config: conf, Dir: tmp})
	if err := s.Postfix.Postconf(ctx, "queue_run_delay=1s", "minimal_backoff_time=1s", "maximal_backoff_time=2s"); err != nil {
		t.Fatal(err)
	}
	if err := s.Postfix.Reload(ctx); err != nil {
		t.Fatal(err)
	}

	const total, clients = 400, 8
	cases := make([]Case, total)
	for i := range cases {
		name := fmt.Sprintf("burst9 %d", i)
		switch i % 4 {
		case 0: // Match_Domain
			cases[i] = NewCase(name, "Example", []Source{SrcExample}, "b@example.com", Rcpt4)
		case 1: // the Sieve script, on a header
			cases[i] = NewCase(name, "Newsletters", []Source{SrcNewsletters}, "l@lists.example.net", Rcpt4, "List-Id: <burst.lists.example.net>")
		case 2: // a client's binding header decides nothing
			cases[i] = NewCase(name, "default", []Source{SrcDefault}, "b@elsewhere.test", Rcpt4, "X-Binding: Newsletters")
		default:
			cases[i] = NewCase(name, "default", []Source{SrcDefault}, "b@elsewhere.test", Rcpt4)
		}
	}

	var accepted, refused, refusedDown atomic.Int32
	var down atomic.Bool // serve is killed and not yet restarted
	errs := make(chan error, total)
	next := make(chan Case)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range next {
				err := submitRetrying(ctx, s.Net.MTA, c.Msg, func() {
					refused.Add(1)
					if down.Load() {
						refusedDown.Add(1)
					}
				})
				if err != nil {
					errs <- err
					continue
				}
				accepted.Add(1)
			}
		}()
	}
	logBefore := len(s.Postfix.Log())
	go func() {
		for _, c := range cases {
			next <- c
		}
		close(next)
	}()
	waitAccepted := func(n int32) {
		t.Helper()
		if err := testenv.Poll(ctx, 5*time.Millisecond, func() (bool, error) { return accepted.Load() >= n, nil }, fmt.Sprintf("%d accepted", n)); err != nil {
			t.Fatal(err)
		}
	}
	waitAccepted(total / 4)
	down.Store(true)
	s.StopServe(syscall.SIGKILL)
	killedAt := accepted.Load()
	// Down long enough for the clients to meet tempfail more than once.
	time.Sleep(2 * time.Second)
	acceptedDown := accepted.Load() - killedAt
	if err := s.StartServe(ctx); err != nil {
		t.Fatal(err)
	}
	down.Store(false)
	restartedAt := accepted.Load()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := accepted.Load(); n != total {
		t.Fatalf("%d of %d messages accepted", n, total)
	}

	// Every message was queued (250): once the queue has drained, each
	// has arrived or never will, and a duplicate would show.
	wctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	if err := testenv.Poll(wctx, 100*time.Millisecond, func() (bool, error) { return s.Postfix.QueueEmpty(ctx), nil }, "an empty queue"); err != nil {
		t.Error(err)
	}
	time.Sleep(time.Second)
	lost, dup, wrong := 0, 0, 0
	bySource := map[string]int{}
	for _, o := range checkArrived(t, ctx, s, cases) {
		bySource[o.Source]++
		switch {
		case o.Arrived == 0:
			lost++
		case o.Arrived > 1:
			dup++
		case len(o.Problems) > 0:
			wrong++
		}
	}
	log := s.Postfix.Log()[logBefore:]
	unreached := strings.Count(log, "connect to Milter service")
	t.Logf("%d messages, %d clients: killed after %d accepted, %d accepted while down, restarted after %d; %d tries refused with 4xx (%d while down); %d failed milter connects in the maillog; lost %d, duplicated %d, wrong source %d; sources %v",
		total, clients, killedAt, acceptedDown, restartedAt, refused.Load(), refusedDown.Load(), unreached, lost, dup, wrong, bySource)
	// The outage must have been felt: clients met tempfail while serve
	// was down, and Postfix could not reach the milter.
	if refusedDown.Load() == 0 || unreached == 0 {
		t.Errorf("the kill did not hit the burst: %d tries refused while down, %d failed milter connects", refusedDown.Load(), unreached)
	}
	if acceptedDown > clients {
		// At most the transactions whose end of message the milter had
		// already answered can complete after the kill.
		t.Errorf("%d messages accepted while serve was down (On_Milter_Down = tempfail)", acceptedDown)
	}
}

// submitRetrying sends m in one SMTP session from inside ns to Postfix, and
// again after a short pause whenever Postfix answers 4xx (a sending MTA
// retries the same way, only slower), calling refused for each 4xx.
func submitRetrying(ctx context.Context, ns *testenv.NS, m Message, refused func()) error {
	var raw strings.Builder
	fmt.Fprintf(&raw, "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\n", m.From, strings.Join(m.To, ">, <"), m.Subject)
	for _, h := range m.Headers {
		raw.WriteString(h + "\r\n")
	}
	raw.WriteString("\r\nkill -9 burst\r\n")
	msg := TableMessage{From: m.From, To: m.To, Raw: raw.String()}
	for tries := 0; ; tries++ {
		ids, err := SendSession(ctx, ns, "client.e2e.test", []TableMessage{msg})
		var se *smtp.SMTPError
		switch {
		case len(ids) == 1: // queued, even if QUIT then failed
			return nil
		case errors.As(err, &se) && se.Temporary():
			refused()
		default:
			return fmt.Errorf("submit %q: %w", m.Subject, err)
		}
		if tries == 300 {
			return fmt.Errorf("submit %q: still refused after %d tries: %w", m.Subject, tries, err)
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
