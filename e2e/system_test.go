package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// repoRoot is the module root, one level above this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

// startSystem brings the whole system up on a copy of examples/ so subtests
// may edit the binding file and the policy.
func startSystem(t *testing.T, ctx context.Context) *System {
	t.Helper()
	testenv.Require(t, Prereqs)
	tmp := t.TempDir()
	bin := e2eBinary(t, ctx, tmp)
	conf, err := CopyExamples(filepath.Join(repoRoot(t), "examples"), filepath.Join(tmp, "conf"))
	if err != nil {
		t.Fatal(err)
	}
	return startSystemWith(t, ctx, SystemOptions{Bin: bin, Config: conf, Dir: tmp})
}

// e2eBinary is $VIPE2E_BIN (a prebuilt binary: a release, a packaged
// build), or vipmilter built from this checkout into dir.
func e2eBinary(t *testing.T, ctx context.Context, dir string) string {
	t.Helper()
	if bin := os.Getenv("VIPE2E_BIN"); bin != "" {
		return bin
	}
	bin, err := BuildVipmilter(ctx, repoRoot(t), dir)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// startSystemWith starts the system opts describe and stops it when the
// test ends, printing the maillog, queue and serve output if it failed.
// Binding addresses are put in place by "vipmilter provision", as on a real
// host; VIPE2E_IPADDR=1 uses ip(8) instead, to tell a provisioning fault
// from a routing one.
func startSystemWith(t *testing.T, ctx context.Context, opts SystemOptions) *System {
	t.Helper()
	opts.IPAddrFallback = os.Getenv("VIPE2E_IPADDR") == "1"
	s, err := StartSystem(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("maillog tail:\n%s\nqueue:\n%s\nserve output:\n%s", s.Postfix.LogTail(80), s.Postfix.Queue(context.Background()), s.ServeOutput())
		}
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

func sendAndCheck(t *testing.T, ctx context.Context, s *System, cases []Case) []Outcome {
	t.Helper()
	if err := s.SendCases(ctx, cases); err != nil {
		t.Fatal(err)
	}
	return checkArrived(t, ctx, s, cases)
}

// checkArrived waits for cases at the sink and reports every problem Check
// finds (missing, duplicated, wrong address or EHLO, leaked header).
func checkArrived(t *testing.T, ctx context.Context, s *System, cases []Case) []Outcome {
	t.Helper()
	return checkArrivedHeader(t, ctx, s, "X-Binding", cases)
}

// checkArrivedHeader is checkArrived with the leaked-header check on header
// ("" checks none).
func checkArrivedHeader(t *testing.T, ctx context.Context, s *System, header string, cases []Case) []Outcome {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := s.WaitArrived(wctx, cases); err != nil {
		t.Error(err)
	}
	outs, err := Check(s.SinkDir, header, cases)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range outs {
		if len(o.Problems) > 0 {
			t.Errorf("%s (binding %s): %s", o.Case.Name, o.Case.Binding, strings.Join(o.Problems, "; "))
		}
	}
	return outs
}

// TestSystem runs one private Postfix + vipmilter and reconfigures it between
// subtests, which therefore run in order and depend on the earlier ones'
// state only through the files they restore.
func TestSystem(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	s := startSystem(t, ctx)

	t.Run("examples", func(t *testing.T) {
		// Match_Domain (IPv4 and IPv6), Sieve, sticky group, spoofed header,
		// default; no binding header may reach the sink.
		sendAndCheck(t, ctx, s, ExampleCases("examples"))
	})

	t.Run("comma list", func(t *testing.T) {
		// X-Campaign: split sets "Newsletters,Example": each message must
		// leave from one of the two (address and EHLO of the same binding),
		// and over 16 messages both must be picked (all on one side by
		// chance: 2^-15).
		outs := sendAndCheck(t, ctx, s, CommaListCases("comma", 16))
		used := map[string]int{}
		for _, o := range outs {
			used[o.Source]++
		}
		if used[SrcNewsletters.Addr] == 0 || used[SrcExample.Addr] == 0 {
			t.Errorf("comma list Newsletters,Example: sources %v, want both %s and %s used", used, SrcNewsletters.Addr, SrcExample.Addr)
		}
		t.Logf("comma list sources: %v", used)
	})

	t.Run("milter killed", func(t *testing.T) {
		// Mail before, while and after serve is gone (SIGKILL, then a
		// restart). While it is down (checked before the restart):
		// Match_Domain still decides example.com (IPv4 and IPv6, via
		// sender_dependent_default_transport_maps), a client's X-Binding
		// header decides nothing and never reaches the sink, and the rest
		// flows (On_Milter_Down = accept) from the default binding.
		// Nothing is lost or delivered twice.
		spoof := "X-Binding: Newsletters"
		phase := func(p string) []Case {
			return []Case{
				NewCase(p+" example.com", "Example", []Source{SrcExample}, "a@example.com", Rcpt4),
				NewCase(p+" example.com IPv6", "Example", []Source{SrcExample6}, "a@example.com", Rcpt6),
				NewCase(p+" example.com spoofed", "Example", []Source{SrcExample}, "a@example.com", Rcpt4, spoof),
				NewCase(p+" unknown", "default", []Source{SrcDefault}, "a@elsewhere.test", Rcpt4),
				NewCase(p+" unknown spoofed", "default", []Source{SrcDefault}, "a@elsewhere.test", Rcpt4, spoof),
			}
		}
		before := append(phase("kill before"),
			NewCase("kill before List-Id", "Newsletters", []Source{SrcNewsletters}, "l@lists.example.net", Rcpt4, "List-Id: <k.lists.example.net>"))
		sendAndCheck(t, ctx, s, before)

		refusedBefore := strings.Count(s.Postfix.Log(), "connect to Milter service")
		s.StopServe(syscall.SIGKILL)
		// Without the milter the policy is not asked: List-Id and
		// X-Campaign mail flows from the default binding.
		down := append(phase("kill down"),
			NewCase("kill down List-Id", "default", []Source{SrcDefault}, "l@lists.example.net", Rcpt4, "List-Id: <k.lists.example.net>"),
			NewCase("kill down X-Campaign", "default", []Source{SrcDefault}, "c@campaign.test", Rcpt4, "X-Campaign: split"))
		sendAndCheck(t, ctx, s, down)
		// The down phase must really have run without the milter.
		if n := strings.Count(s.Postfix.Log(), "connect to Milter service") - refusedBefore; n < len(down) {
			t.Errorf("smtpd logged %d failed milter connections while serve was down, want >= %d", n, len(down))
		}

		if err := s.StartServe(ctx); err != nil {
			t.Fatal(err)
		}
		after := append(phase("kill after"),
			NewCase("kill after List-Id", "Newsletters", []Source{SrcNewsletters}, "l@lists.example.net", Rcpt4, "List-Id: <k.lists.example.net>"))
		sendAndCheck(t, ctx, s, after)

		// Each phase was checked on arrival; a late duplicate shows here.
		all := append(append(before, down...), after...)
		outs, err := Check(s.SinkDir, "X-Binding", all)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range outs {
			if o.Arrived > 1 {
				t.Errorf("%s: arrived %d times", o.Case.Name, o.Arrived)
			}
		}
	})

	t.Run("milter killed mid-delivery", func(t *testing.T) {
		// serve is SIGKILLed with SMTP transactions in flight and restarted
		// while mail keeps coming: 10 sessions held open after RCPT or
		// inside DATA (smtpd and cleanup hold a milter connection to the
		// killed serve) and a burst of 30 from 6 concurrent swaks clients.
		// Every message must be accepted (On_Milter_Down = accept), arrive
		// exactly once and leave from a binding allowed whether or not the
		// milter saw it; a client's X-Binding header never decides.
		const burst, held, clients = 30, 10, 6
		mk := func(name string, i int) Case {
			switch i % 4 {
			case 0:
				return NewCase(name, "Example", []Source{SrcExample}, "b@example.com", Rcpt4)
			case 1:
				return NewCase(name, "Newsletters or default", []Source{SrcNewsletters, SrcDefault},
					"l@lists.example.net", Rcpt4, "List-Id: <burst.lists.example.net>")
			case 2:
				return NewCase(name, "default", []Source{SrcDefault}, "b@elsewhere.test", Rcpt4, "X-Binding: Newsletters")
			default:
				return NewCase(name, "default", []Source{SrcDefault}, "b@elsewhere.test", Rcpt4)
			}
		}
		var cases, heldCases []Case
		for i := range burst {
			cases = append(cases, mk(fmt.Sprintf("burst %d", i), i))
		}
		for i := range held {
			heldCases = append(heldCases, mk(fmt.Sprintf("held session %d", i), i))
		}
		logBefore := len(s.Postfix.Log())
		var sessions []*Session
		for i, c := range heldCases {
			sess, err := OpenSession(ctx, s.Net.MTA, c.Msg, i%2 == 1)
			if err != nil {
				t.Fatal(err)
			}
			sessions = append(sessions, sess)
		}
		finish := func(ss []*Session) {
			for _, sess := range ss {
				if err := sess.Finish(); err != nil {
					t.Errorf("held session refused (On_Milter_Down = accept): %v", err)
				}
			}
		}
		var done atomic.Int32
		errs := make(chan error, burst)
		sem := make(chan struct{}, clients)
		var wg sync.WaitGroup
		for _, c := range cases {
			wg.Add(1)
			go func() {
				defer wg.Done()
				sem <- struct{}{}
				defer func() { <-sem }()
				if err := Submit(ctx, s.Net.MTA, c.Msg); err != nil {
					errs <- err
				}
				done.Add(1)
			}()
		}
		wait := func(n int32) {
			if err := testenv.Poll(ctx, 5*time.Millisecond, func() (bool, error) { return done.Load() >= n, nil }, fmt.Sprintf("%d submissions", n)); err != nil {
				t.Fatal(err)
			}
		}
		wait(burst / 5)
		s.StopServe(syscall.SIGKILL)
		killedAt := done.Load()
		finish(sessions[:held/2])
		wait(burst / 2)
		if err := s.StartServe(ctx); err != nil {
			t.Fatal(err)
		}
		restartedAt := done.Load()
		// These still hold a connection to the killed serve.
		finish(sessions[held/2:])
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("submission refused (On_Milter_Down = accept): %v", err)
		}
		all := append(cases, heldCases...)
		wctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		defer cancel()
		if err := s.WaitArrived(wctx, all); err != nil {
			t.Error(err)
		}
		// Give a duplicate the chance to show: the queue must drain first.
		if err := testenv.Poll(wctx, 100*time.Millisecond, func() (bool, error) { return s.Postfix.QueueEmpty(ctx), nil }, "an empty queue"); err != nil {
			t.Error(err)
		}
		time.Sleep(time.Second)
		outs, err := Check(s.SinkDir, "X-Binding", all)
		if err != nil {
			t.Fatal(err)
		}
		bySource := map[string]int{}
		for _, o := range outs {
			bySource[o.Source]++
			if len(o.Problems) > 0 {
				t.Errorf("%s (%s): %s", o.Case.Name, o.Case.Binding, strings.Join(o.Problems, "; "))
			}
		}
		log := s.Postfix.Log()[logBefore:]
		t.Logf("killed after %d submissions, restarted after %d; sources %v; milter lines in the maillog:\n%s",
			killedAt, restartedAt, bySource, milterLines(log))
		// Each held session's milter connection broke mid-transaction
		// ("can't read SMFIC_HEADER reply packet header"): the kill really
		// hit the milter mid-delivery.
		if n := midSessionMilterErrors(log); n < held {
			t.Errorf("maillog shows %d milter failures inside a transaction, want >= %d (one per held session)", n, held)
		}
	})

	t.Run("SIGHUP reload", func(t *testing.T) {
		policy := filepath.Join(filepath.Dir(s.Config), "policy.sieve")
		orig, err := os.ReadFile(policy)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			os.WriteFile(policy, orig, 0o644)
			s.Reload()
		}()
		changed := strings.Replace(string(orig), `require ["envelope", "variables", "environment"];`,
			"require [\"envelope\", \"variables\", \"environment\"];\nif envelope :domain :is \"from\" \"rerouted.test\" { set \"binding\" \"Newsletters\"; stop; }", 1)
		if changed == string(orig) {
			t.Fatal("example policy changed shape: cannot insert the reload rule")
		}
		c := []Case{NewCase("reload after", "Newsletters", []Source{SrcNewsletters}, "x@rerouted.test", Rcpt4)}
		if err := os.WriteFile(policy, []byte(changed), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := s.Reload(); err != nil {
			t.Fatal(err)
		}
		// The reload is asynchronous: send until a message is re-routed; every
		// probe must arrive exactly once, from the old or the new binding.
		probeUntil(t, ctx, s, c[0].Msg, SrcNewsletters, []Source{SrcDefault})
	})

	t.Run("suspension and postsuper -r", func(t *testing.T) {
		orig, err := os.ReadFile(s.Config)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			os.WriteFile(s.Config, orig, 0o644)
			s.ApplyPostfix(ctx)
		}()
		block := "Binding \"Newsletters\" {\n"
		if !strings.Contains(string(orig), block) {
			t.Fatal("example binding file changed shape: no Newsletters block")
		}
		suspended := strings.Replace(string(orig), block, block+"  Suspend_Delivery = true\n", 1)
		if err := os.WriteFile(s.Config, []byte(suspended), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := s.ApplyPostfix(ctx); err != nil {
			t.Fatal(err)
		}
		var cases []Case
		for i := range 3 {
			cases = append(cases, NewCase("held "+strconv.Itoa(i), "Newsletters", []Source{SrcNewsletters},
				"list@lists.example.net", Rcpt4, "List-Id: <held.lists.example.net>"))
		}
		if err := s.SendCases(ctx, cases); err != nil {
			t.Fatal(err)
		}
		// Held: every message queued with a delay reason, also after a
		// flush and after postsuper -r (which must not lose the binding).
		held := func(what string) {
			t.Helper()
			hctx, cancel := context.WithTimeout(ctx, 90*time.Second)
			defer cancel()
			if err := testenv.Poll(hctx, 200*time.Millisecond, func() (bool, error) {
				outs, err := Check(s.SinkDir, "X-Binding", cases)
				if err != nil {
					return false, err
				}
				for _, o := range outs {
					if o.Arrived > 0 {
						return false, fmt.Errorf("%s arrived while its binding was suspended", o.Case.Msg.Subject)
					}
				}
				qs, err := s.Postfix.Entries(ctx)
				if err != nil {
					return false, err
				}
				n := 0
				for _, q := range qs {
					if len(q.Recipients) > 0 && q.Recipients[0].DelayReason != "" {
						n++
					}
				}
				return n == len(cases), nil
			}, what); err != nil {
				t.Fatal(err)
			}
		}
		held("suspended mail to be deferred")
		if err := s.Postfix.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		held("suspended mail to stay deferred after a flush")
		if err := s.Postfix.Requeue(ctx); err != nil {
			t.Fatal(err)
		}
		held("requeued mail to be deferred again")
		if outs, err := Check(s.SinkDir, "X-Binding", cases); err != nil {
			t.Fatal(err)
		} else {
			for _, o := range outs {
				if o.Arrived > 0 {
					t.Errorf("%s arrived while its binding was suspended", o.Case.Msg.Subject)
				}
			}
		}
		if strings.Contains(s.Postfix.Log(), "status=bounced") {
			t.Error("suspended mail bounced")
		}
		if err := os.WriteFile(s.Config, orig, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := s.ApplyPostfix(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.Postfix.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		checkArrived(t, ctx, s, cases)
	})

	t.Run("Max_Outbound_Connections", func(t *testing.T) {
		stats := startGoSink(t, ctx, s.Net)
		orig, err := os.ReadFile(s.Config)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			os.WriteFile(s.Config, orig, 0o644)
			s.ApplyPostfix(ctx)
		}()
		const from = "Max_Outbound_Connections = 8"
		if !strings.Contains(string(orig), from) {
			t.Fatal("example binding file changed shape: no Newsletters limit of 8")
		}
		if err := os.WriteFile(s.Config, []byte(strings.Replace(string(orig), from, "Max_Outbound_Connections = 2", 1)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := s.ApplyPostfix(ctx); err != nil {
			t.Fatal(err)
		}
		// Hold the burst in the queue first (transport names are vip_NAME,
		// docs/postfix.md) so delivery concurrency decides the overlap.
		if err := s.Postfix.Postconf(ctx, "defer_transports = vip_Newsletters"); err != nil {
			t.Fatal(err)
		}
		if err := s.Postfix.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		const burst = 50
		for i := range burst {
			m := Message{From: "list@lists.example.net", To: []string{"user@[" + GoSinkAddr + "]"},
				Subject: fmt.Sprintf("burst %d", i), Headers: []string{"List-Id: <burst.lists.example.net>"}}
			if err := Submit(ctx, s.Net.MTA, m); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Postfix.Postconf(ctx, "defer_transports ="); err != nil {
			t.Fatal(err)
		}
		if err := s.Postfix.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.Postfix.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		st := waitBurst(t, ctx, stats, burst)
		if st.Messages["192.0.2.20"] != burst {
			t.Errorf("messages per source %v, want all %d from 192.0.2.20", st.Messages, burst)
		}
		if m := st.MaxConcurrent["192.0.2.20"]; m < 1 || m > 2 {
			t.Errorf("max concurrent sessions from 192.0.2.20 = %d, want 1..2", m)
		}
		t.Logf("max concurrent sessions per source: %v", st.MaxConcurrent)
	})

	t.Run("new binding", func(t *testing.T) {
		orig, err := os.ReadFile(s.Config)
		if err != nil {
			t.Fatal(err)
		}
		defer func() {
			os.WriteFile(s.Config, orig, 0o644)
			s.ApplyPostfix(ctx)
		}()
		added := string(orig) + "\nBinding \"Fresh\" {\n  Bind_Address = 192.0.2.40\n  EHLO_Hostname = fresh.example.net\n  Match_Domain = fresh.test\n}\n"
		if err := os.WriteFile(s.Config, []byte(added), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := s.Net.AddAddress(ctx, "192.0.2.40"); err != nil {
			t.Fatal(err)
		}
		if err := s.ApplyPostfix(ctx); err != nil {
			t.Fatal(err)
		}
		if err := s.Reload(); err != nil {
			t.Fatal(err)
		}
		probeUntil(t, ctx, s, Message{From: "a@fresh.test", To: []string{Rcpt4}, Subject: "new binding"},
			Source{"192.0.2.40", "fresh.example.net"}, []Source{SrcDefault})
	})
}

// probeUntil sends copies of m (subject numbered) one at a time until one
// leaves from want. Each must arrive exactly once from want or from one of
// before: a change may take a moment to reach serve, but mail never strays.
func probeUntil(t *testing.T, ctx context.Context, s *System, m Message, want Source, before []Source) {
	t.Helper()
	for i := range 100 {
		p := m
		p.Subject = fmt.Sprintf("%s probe %d", m.Subject, i)
		c := []Case{{Name: p.Subject, Msg: p}}
		c[0].SetSources(append([]Source{want}, before...)...)
		sendAndCheck(t, ctx, s, c)
		if t.Failed() {
			return
		}
		outs, err := Check(s.SinkDir, "X-Binding", c)
		if err != nil {
			t.Fatal(err)
		}
		if outs[0].Source == want.Addr {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	t.Fatalf("%q: never left from %s", m.Subject, want.Addr)
}

// milterLines summarises the maillog lines about milters: each distinct
// message (queue id and pid left out) with its count.
func milterLines(log string) string {
	count := map[string]int{}
	var order []string
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(strings.ToLower(l), "milter") {
			continue
		}
		// "date host postfix/smtpd[pid]: [QUEUEID: ]text"
		if i := strings.Index(l, "]: "); i >= 0 {
			l = l[i+3:]
		}
		if i := strings.Index(l, ": "); i > 0 && i < 20 && !strings.Contains(l[:i], " ") {
			l = l[i+2:]
		}
		if count[l] == 0 {
			order = append(order, l)
		}
		count[l]++
	}
	var b strings.Builder
	for _, l := range order {
		fmt.Fprintf(&b, "  %dx %s\n", count[l], l)
	}
	return b.String()
}

// midSessionMilterErrors counts maillog warnings about a milter that failed
// after its connection was made (not "connect to Milter service" refusals).
func midSessionMilterErrors(log string) int {
	n := 0
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, "warning: milter ") && !strings.Contains(l, "connect to Milter service") {
			n++
		}
	}
	return n
}
