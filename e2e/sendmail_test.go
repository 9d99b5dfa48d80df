package e2e

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// requireSendmailPrereqs fails under CI and skips otherwise
// (testenv.Require) when the Sendmail suite cannot run here.
func requireSendmailPrereqs(t *testing.T) {
	t.Helper()
	testenv.Require(t, testenv.Namespaces, testenv.SMTPSink, testenv.Swaks, testenv.Command("apt-get", "apt"),
		testenv.Command("dpkg-deb", "dpkg"), testenv.Command("unshare", "util-linux"))
}

// startSendmailSystem brings the Sendmail system up on a copy of examples/
// with Sendmail_Socketmap set.
func startSendmailSystem(t *testing.T, ctx context.Context) *SendmailSystem {
	t.Helper()
	requireSendmailPrereqs(t)
	tmp := t.TempDir()
	// smtp-sink writes its dumps as nobody, through these directories.
	for _, d := range []string{tmp, filepath.Dir(tmp)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dist, err := UnpackSendmail(ctx, SendmailDebCache(), filepath.Join(tmp, "dist"))
	if err != nil {
		t.Fatal(err)
	}
	bin := e2eBinary(t, ctx, tmp)
	conf, err := CopySendmailExamples(filepath.Join(repoRoot(t), "examples"), filepath.Join(tmp, "conf"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := StartSendmailSystem(ctx, SendmailOptions{Dist: dist, SystemOptions: SystemOptions{
		Bin: bin, Config: conf, Dir: tmp,
		IPAddrFallback: os.Getenv("VIPE2E_IPADDR") == "1",
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("queue:\n%s\nserve output:\n%s", s.Sendmail.Queue(context.Background()), s.ServeOutput())
		}
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s
}

// checkSendmail waits for cases at the sink and reports every problem. On
// Sendmail the milter writes no binding header (routing is by socketmap and
// Sendmail could not strip one on delivery), so every X-Binding value that
// arrives must be one the client itself sent.
func checkSendmail(t *testing.T, ctx context.Context, s *SendmailSystem, cases []Case) []Outcome {
	t.Helper()
	outs := checkArrivedHeader(t, ctx, s.System, "", cases)
	msgs, err := testenv.ReadDumps(s.SinkDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		sent := map[string]bool{}
		for _, h := range c.Msg.Headers {
			if name, v, ok := strings.Cut(h, ":"); ok && strings.EqualFold(strings.TrimSpace(name), "X-Binding") {
				sent[strings.TrimSpace(v)] = true
			}
		}
		for _, m := range msgs {
			if m.Header.Get("Subject") != c.Msg.Subject {
				continue
			}
			for _, v := range m.Header.Values("X-Binding") {
				if !sent[strings.TrimSpace(v)] {
					t.Errorf("%s: X-Binding %q reached the sink; the client did not send it", c.Name, v)
				}
			}
		}
	}
	return outs
}

// editConfig rewrites the binding file with old replaced by new.
func editConfig(t *testing.T, s *SendmailSystem, old, new string) {
	t.Helper()
	b, err := os.ReadFile(s.Config)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("binding file has no %q", old)
	}
	if err := os.WriteFile(s.Config, []byte(strings.Replace(string(b), old, new, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// waitQueued waits until every subject is in the queue and Sendmail has
// tried to deliver it at least tries times; it returns each one's group.
func waitQueued(t *testing.T, ctx context.Context, sm *Sendmail, tries int, subjects ...string) map[string]string {
	t.Helper()
	var groups map[string]string
	err := testenv.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		q, err := sm.Queued()
		if err != nil {
			return false, err
		}
		groups = map[string]string{}
		for _, m := range q {
			if m.Tries >= tries {
				groups[m.Subject] = m.Group
			}
		}
		for _, s := range subjects {
			if _, ok := groups[s]; !ok {
				return false, nil
			}
		}
		return true, nil
	}, "messages queued after a delivery attempt")
	if err != nil {
		t.Fatalf("%v; queued: %v", err, groups)
	}
	return groups
}

// TestSendmail runs one private Sendmail 8.17 (Debian's packages, unpacked)
// with vipmilter and reconfigures it between subtests, which run in order.
func TestSendmail(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	s := startSendmailSystem(t, ctx)
	c := func(name, binding string, srcs []Source, from string, hdr ...string) Case {
		return NewCase(name, binding, srcs, from, Rcpt4, hdr...)
	}

	t.Run("examples", func(t *testing.T) {
		// Match_Domain, Sieve, sticky group, a client's X-Binding header
		// (chooses nothing), the default binding, and a comma list over
		// enough messages that both of its bindings are used.
		cases := append(SendmailExampleCases("sm"), CommaListCases("sm", 12)...)
		for _, cs := range cases {
			if err := Submit(ctx, s.Net.MTA, cs.Msg); err != nil {
				t.Fatal(err)
			}
		}
		outs := checkSendmail(t, ctx, s, cases)
		used := map[string]int{}
		for _, o := range outs {
			if strings.HasPrefix(o.Case.Name, "sm comma list") {
				used[o.Source]++
			}
		}
		if used[SrcNewsletters.Addr] == 0 || used[SrcExample.Addr] == 0 {
			t.Errorf("comma list Newsletters,Example: sources %v, want both used", used)
		}
	})

	t.Run("two messages in one session", func(t *testing.T) {
		// Sendmail sends no ABORT between accepted messages: the second
		// message's policy must not see the first one's List-Id.
		cases := []Case{
			c("session 1 list", "Newsletters", []Source{SrcNewsletters}, "list@lists.example.net", "List-Id: <weekly.lists.example.net>"),
			c("session 2 plain", "default", []Source{SrcDefault}, "someone@elsewhere.test"),
			c("session 3 example.com", "Example", []Source{SrcExample}, "news@example.com"),
		}
		var msgs []Message
		for _, cs := range cases {
			msgs = append(msgs, cs.Msg)
		}
		if err := SubmitSession(ctx, s.Net.MTA, msgs); err != nil {
			t.Fatal(err)
		}
		checkSendmail(t, ctx, s, cases)
	})

	t.Run("deferred, then one queue run with vipmilter stopped", func(t *testing.T) {
		// The destination is down while four bindings' mail is accepted, so
		// all of it waits in the queue with its decision. vipmilter is then
		// stopped, and one queue run must send each message from its own
		// binding: the decision lives in the queue file, and the bindings'
		// messages for the one destination must not share a connection.
		cases := []Case{
			c("queued Newsletters", "Newsletters", []Source{SrcNewsletters}, "list@lists.example.net", "List-Id: <weekly.lists.example.net>"),
			c("queued Example", "Example", []Source{SrcExample}, "news@example.com"),
			c("queued Pool", "Pool", []Source{SrcPool1, SrcPool2}, "c@bulk.example.org"),
			c("queued default", "default", []Source{SrcDefault}, "someone@elsewhere.test"),
		}
		if err := s.RestartSink(ctx, true); err != nil {
			t.Fatal(err)
		}
		var subjects []string
		for _, cs := range cases {
			subjects = append(subjects, cs.Msg.Subject)
			if err := Submit(ctx, s.Net.MTA, cs.Msg); err != nil {
				t.Fatal(err)
			}
		}
		groups := waitQueued(t, ctx, s.Sendmail, 1, subjects...)
		t.Logf("queue groups: %v", groups)
		s.StopServe(syscall.SIGTERM)
		if err := s.RestartSink(ctx, false); err != nil {
			t.Fatal(err)
		}
		if err := s.Sendmail.RunQueue(ctx); err != nil {
			t.Fatal(err)
		}
		checkSendmail(t, ctx, s, cases)
		if err := s.StartServe(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("suspend and release", func(t *testing.T) {
		// Suspend_Delivery is a map: no rebuild, no restart. The message
		// stays queued (451 from check_compat) through a queue run, then
		// leaves from its own address once released.
		const suspended = "EHLO_Hostname = news.example.org\n  Suspend_Delivery = true"
		editConfig(t, s, "EHLO_Hostname = news.example.org", suspended)
		if err := s.ApplySendmail(ctx, false); err != nil {
			t.Fatal(err)
		}
		cs := c("suspended Newsletters", "Newsletters", []Source{SrcNewsletters}, "list@lists.example.net", "List-Id: <weekly.lists.example.net>")
		if err := Submit(ctx, s.Net.MTA, cs.Msg); err != nil {
			t.Fatal(err)
		}
		waitQueued(t, ctx, s.Sendmail, 1, cs.Msg.Subject)
		if err := s.Sendmail.RunQueue(ctx); err != nil {
			t.Fatal(err)
		}
		waitQueued(t, ctx, s.Sendmail, 2, cs.Msg.Subject)
		if outs, err := Check(s.SinkDir, "", []Case{cs}); err != nil || outs[0].Arrived > 0 {
			t.Fatalf("suspended binding's message was delivered (%v, %+v)", err, outs)
		}
		editConfig(t, s, suspended, "EHLO_Hostname = news.example.org")
		if err := s.ApplySendmail(ctx, false); err != nil {
			t.Fatal(err)
		}
		if err := s.Sendmail.RunQueue(ctx); err != nil {
			t.Fatal(err)
		}
		checkSendmail(t, ctx, s, []Case{cs})
	})

	t.Run("milter down, accept", func(t *testing.T) {
		// With vipmilter stopped Sendmail accepts (On_Milter_Down =
		// accept); the Match_Domain map still binds example.com, and the
		// rest, whatever its headers say, leaves from the default binding.
		s.StopServe(syscall.SIGTERM)
		cases := []Case{
			c("down example.com", "Example", []Source{SrcExample}, "news@example.com"),
			c("down List-Id", "default", []Source{SrcDefault}, "list@lists.example.net", "List-Id: <weekly.lists.example.net>"),
			c("down spoofed header", "default", []Source{SrcDefault}, "someone@elsewhere.test", "X-Binding: Newsletters"),
		}
		for _, cs := range cases {
			if err := Submit(ctx, s.Net.MTA, cs.Msg); err != nil {
				t.Fatal(err)
			}
		}
		checkSendmail(t, ctx, s, cases)
		if err := s.StartServe(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("milter down, tempfail", func(t *testing.T) {
		// On_Milter_Down = tempfail renders F=T: with vipmilter stopped,
		// Sendmail answers 4xx and accepts nothing.
		editConfig(t, s, "On_Milter_Down  = accept", "On_Milter_Down  = tempfail")
		defer func() {
			editConfig(t, s, "On_Milter_Down  = tempfail", "On_Milter_Down  = accept")
			if err := s.ApplySendmail(ctx, true); err != nil {
				t.Error(err)
			}
		}()
		if err := s.ApplySendmail(ctx, true); err != nil {
			t.Fatal(err)
		}
		s.StopServe(syscall.SIGTERM)
		cs := c("tempfail example.com", "Example", []Source{SrcExample}, "news@example.com")
		err := Submit(ctx, s.Net.MTA, cs.Msg)
		if err == nil || !strings.Contains(err.Error(), "451") {
			t.Errorf("with the milter down and F=T, submission gave %v; want a 451 refusal", err)
		}
		if err := s.StartServe(ctx); err != nil {
			t.Fatal(err)
		}
		if err := Submit(ctx, s.Net.MTA, cs.Msg); err != nil {
			t.Fatal(err)
		}
		checkSendmail(t, ctx, s, []Case{cs})
	})
}
