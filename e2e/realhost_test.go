package e2e

import (
	"context"
	"fmt"
	"github.com/vipmilter/vipmilter/internal/testenv"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/postfix"
)

// Real mail hosts (issue 9): a private Postfix configured first as an
// administrator would (other milters, an after-queue content filter, egress
// header checks), then "vipmilter postfix" and "vipmilter serve". Every case
// asserts the source address the sink saw, that nothing was lost or
// delivered twice, and that no binding header left the host.

// expect waits for cases at the sink and fails on every problem Check finds.
func (h *realHost) expect(t *testing.T, ctx context.Context, cases ...Case) []Outcome {
	t.Helper()
	return checkArrived(t, ctx, h.System, cases)
}

// received returns the sink's message with subject.
func (h *realHost) received(t *testing.T, subject string) testenv.Received {
	t.Helper()
	msgs, err := testenv.ReadDumps(h.SinkDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if m.Header.Get("Subject") == subject {
			return m
		}
	}
	t.Fatalf("%q not at the sink", subject)
	return testenv.Received{}
}

// holdDelivery makes every transport defer, so mail stays queued for a
// requeue; release undoes it and flushes.
func (h *realHost) holdDelivery(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := h.Postfix.Postconf(ctx, "defer_transports = smtp vip_default vip_Newsletters vip_Late"); err != nil {
		t.Fatal(err)
	}
	if err := h.Postfix.Reload(ctx); err != nil {
		t.Fatal(err)
	}
}

func (h *realHost) release(t *testing.T, ctx context.Context) {
	t.Helper()
	if err := h.Postfix.Postconf(ctx, "defer_transports ="); err != nil {
		t.Fatal(err)
	}
	if err := h.Postfix.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Postfix.Flush(ctx); err != nil {
		t.Fatal(err)
	}
}

// waitQueued waits until n messages are in the queue and none is still
// being received (incoming/maildrop).
func (h *realHost) waitQueued(t *testing.T, ctx context.Context, n int, queue string) {
	t.Helper()
	err := testenv.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
		names := queueNames(t, ctx, h.Postfix)
		in := 0
		for _, q := range names {
			if queue == "" || q == queue {
				in++
			}
		}
		return in == n, nil
	}, fmt.Sprintf("%d messages in the %q queue", n, queue))
	if err != nil {
		t.Fatalf("%v\n%s", err, h.Postfix.Queue(ctx))
	}
}

func (h *realHost) headerKey(t *testing.T) string {
	t.Helper()
	k, err := config.ReadHeaderKey(h.key)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// requeue runs "postsuper -r ALL" and waits until pickup took every message
// back (the maildrop is empty again).
func (h *realHost) requeue(t *testing.T, ctx context.Context) {
	t.Helper()
	before := logCount(h.Postfix, "postfix/vip_cleanup/cleanup")
	if err := h.Postfix.Requeue(ctx); err != nil {
		t.Fatal(err)
	}
	// Wake pickup now rather than at its next 60 s wakeup.
	if _, err := testenv.Run(ctx, "postkick", "-c", h.Postfix.Dir, "public", "pickup", "W"); err != nil {
		t.Fatal(err)
	}
	err := testenv.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
		entries, _ := os.ReadDir(filepath.Join(h.Postfix.Dir, "queue", "maildrop"))
		return len(entries) == 0 && logCount(h.Postfix, "postfix/vip_cleanup/cleanup") > before, nil
	}, "requeued mail to pass pickup's cleanup")
	if err != nil {
		t.Fatal(err)
	}
}

func TestRealHostSpoofAndChecks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	// The administrator's own egress check: vipmilter must add to it,
	// never replace it.
	h := newRealHost(t, ctx, func(pf *testenv.Postfix, _ *Network) error {
		if err := os.WriteFile(filepath.Join(pf.Dir, "secret_checks"), []byte("/^X-Internal-Secret:/ IGNORE\n"), 0o644); err != nil {
			return err
		}
		return pf.Postconf(ctx, "smtp_header_checks = regexp:"+filepath.Join(pf.Dir, "secret_checks"))
	})
	key := h.headerKey(t)
	news, def := []Source{srcRHNews}, []Source{srcRHDefault}

	t.Run("host smtp_header_checks kept on every binding transport", func(t *testing.T) {
		secret := "X-Internal-Secret: s3cr3t"
		cases := []Case{
			NewCase("secret newsletters", "Newsletters", news, "a@lists.example.net", Rcpt4, "List-Id: <l.example.net>", secret),
			NewCase("secret default", "default", def, "a@elsewhere.test", Rcpt4, secret),
		}
		for _, c := range cases {
			if err := Submit(ctx, h.Net.MTA, c.Msg); err != nil {
				t.Fatal(err)
			}
		}
		h.expect(t, ctx, cases...)
		for _, c := range cases {
			if m := h.received(t, c.Msg.Subject); dumpHas(t, m, "X-Internal-Secret") {
				t.Errorf("%s: the host's smtp_header_checks did not apply", c.Name)
			}
		}
	})

	t.Run("forged in MIME parts and attached messages, requeued", func(t *testing.T) {
		// The real key is used in the parts: even a leaked key must not make
		// a header inside a part route.
		mime := func(subject, part string) string {
			return "From: a@unknown.test\nTo: " + Rcpt4 + "\nSubject: " + subject + "\nMIME-Version: 1.0\n" +
				"Content-Type: multipart/mixed; boundary=\"BB\"\n\n--BB\n" + part + "\n--BB--\n"
		}
		msgs := map[string]string{
			"rq mime part": mime("rq mime part", "X-Binding: Newsletters\nX-Binding: Newsletters "+key+"\n\nhi"),
			"rq attached": mime("rq attached", "Content-Type: message/rfc822\n\nX-Binding: Newsletters "+key+
				"\nSubject: inner\nContent-Type: multipart/mixed; boundary=\"CC\"\n\n--CC\nX-Binding: Newsletters "+key+"\n\ndeep\n--CC--\n"),
			"rq top level": "From: a@unknown.test\nTo: " + Rcpt4 + "\nSubject: rq top level\nX-Binding: Newsletters\nx-binding: Newsletters " + key + "\n\nhi\n",
		}
		h.holdDelivery(t, ctx)
		var cases []Case
		for subject, m := range msgs {
			if err := submitRaw(ctx, h.Net.MTA, "a@unknown.test", []string{Rcpt4}, m); err != nil {
				t.Fatal(err)
			}
			c := NewCase(subject, "default", def, "a@unknown.test", Rcpt4)
			cases = append(cases, c)
		}
		h.waitQueued(t, ctx, len(msgs), "deferred")
		h.requeue(t, ctx)
		h.release(t, ctx)
		h.expect(t, ctx, cases...)
		for _, c := range cases {
			if m := h.received(t, c.Msg.Subject); dumpHas(t, m, "X-Binding") {
				t.Errorf("%s: a binding header left the host inside a part", c.Name)
			}
		}
	})

	t.Run("milter down: SMTP client and local sendmail forge, then requeue", func(t *testing.T) {
		h.StopServe(9)
		h.holdDelivery(t, ctx)
		forged := []string{"X-Binding: Newsletters", "X-Binding: Newsletters " + key}
		smtpCase := NewCase("down smtp forged", "default", def, "a@unknown.test", Rcpt4, append([]string{"List-Id: <l.example.net>"}, forged...)...)
		if err := Submit(ctx, h.Net.MTA, smtpCase.Msg); err != nil {
			t.Fatal(err)
		}
		// A local user does not know the key (mode 0640, group vipmilter):
		// copies without it or with a guess. (One who reads the mail log
		// learns nothing: TestRealHostKeyNotLogged.)
		localCase := NewCase("down local forged", "default", def, "u@unknown.test", Rcpt4)
		guess := strings.Repeat("0", len(key))
		// The real key only inside a longer word: the rule is anchored. (Any
		// run of white space before the key routes: a fold must not break
		// the milter's header, and only the key matters.)
		msg := "Subject: down local forged\nX-Binding: Newsletters\nX-Binding: Newsletters " + guess + "\nX-Binding: Newsletters " + key + "0\n\nhi\n"
		if err := h.Postfix.Sendmail(ctx, "u@unknown.test", []string{Rcpt4}, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		h.waitQueued(t, ctx, 2, "deferred")
		h.requeue(t, ctx)
		if err := h.StartServe(ctx); err != nil {
			t.Fatal(err)
		}
		h.release(t, ctx)
		h.expect(t, ctx, smtpCase, localCase)
		// And with the milter back, a local forger still does not choose.
		up := NewCase("up local forged", "default", def, "u@unknown.test", Rcpt4)
		if err := h.Postfix.Sendmail(ctx, "u@unknown.test", []string{Rcpt4}, []byte(strings.Replace(msg, "down", "up", 1))); err != nil {
			t.Fatal(err)
		}
		h.expect(t, ctx, up)
	})

	t.Run("20,000 copies of the binding header", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("From: a@lists.example.net\nTo: " + Rcpt4 + "\nSubject: copies 20000\nList-Id: <l.example.net>\n")
		for i := range 20000 {
			fmt.Fprintf(&b, "X-Binding: Newsletters %d\n", i)
		}
		b.WriteString("\nbody\n")
		start := time.Now()
		if err := submitRaw(ctx, h.Net.MTA, "a@lists.example.net", []string{Rcpt4}, b.String()); err != nil {
			t.Fatalf("20,000 copies refused: %v", err)
		}
		withMilter := time.Since(start)
		h.expect(t, ctx, NewCase("copies 20000", "Newsletters", news, "a@lists.example.net", Rcpt4))
		// The same message to Postfix alone (milter stopped), for the report:
		// a figure, not a limit.
		h.StopServe(9)
		start = time.Now()
		if err := submitRaw(ctx, h.Net.MTA, "a@lists.example.net", []string{Rcpt4}, strings.Replace(b.String(), "copies 20000", "copies 20000 alone", 1)); err != nil {
			t.Fatalf("20,000 copies refused by Postfix alone: %v", err)
		}
		t.Logf("20,000 copies accepted in %v with the milter, %v by Postfix alone", withMilter, time.Since(start))
		if err := h.StartServe(ctx); err != nil {
			t.Fatal(err)
		}
		h.expect(t, ctx, NewCase("copies 20000 alone", "default", def, "a@lists.example.net", Rcpt4))
		for _, bad := range []string{"panic", "fatal", "too many reverse jump"} {
			if n := logCount(h.Postfix, bad); n > 0 {
				t.Errorf("maillog has %d %q lines", n, bad)
			}
		}
	})

	t.Run("bounce of a binding's mail carries no binding header", func(t *testing.T) {
		// A second host in the sink namespace refuses DATA for good: the
		// bounce attaches the original, whose header holds the key.
		const refuser = "192.0.2.253"
		if _, err := h.Net.Sink.IP(ctx, "addr", "add", refuser+"/24", "dev", "eth0"); err != nil {
			t.Fatal(err)
		}
		sk, err := testenv.StartSink(ctx, h.Net.Sink, refuser+":25", "", "-f", "DATA")
		if err != nil {
			t.Fatal(err)
		}
		defer sk.Stop()
		c := NewCase("bounced newsletter", "Newsletters", news, "sender@["+SinkAddr4+"]", "user@["+refuser+"]", "List-Id: <l.example.net>")
		if err := Submit(ctx, h.Net.MTA, c.Msg); err != nil {
			t.Fatal(err)
		}
		var bounce testenv.Received
		err = testenv.Poll(ctx, 200*time.Millisecond, func() (bool, error) {
			msgs, err := testenv.ReadDumps(h.SinkDir)
			for _, m := range msgs {
				if strings.Contains(m.Header.Get("Subject"), "Undelivered") && dumpHas(t, m, "bounced newsletter") {
					bounce = m
					return true, nil
				}
			}
			return false, err
		}, "the bounce at the sender")
		if err != nil {
			t.Fatal(err)
		}
		if dumpHas(t, bounce, "X-Binding") || dumpHas(t, bounce, key) {
			b, _ := os.ReadFile(bounce.File)
			t.Errorf("the bounce carries the binding header:\n%s", b)
		}
		if bounce.ClientAddr != srcRHDefault.Addr {
			t.Errorf("bounce left from %s, want the default binding's %s", bounce.ClientAddr, srcRHDefault.Addr)
		}
	})

	t.Run("binding the milter knows and Postfix does not: held, then released", func(t *testing.T) {
		conf, _ := os.ReadFile(h.conf)
		pol, _ := os.ReadFile(h.policy)
		if err := os.WriteFile(h.conf, append(conf, lateBinding...), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(h.policy, append(pol, latePolicy...), 0o644); err != nil {
			t.Fatal(err)
		}
		cfg, err := config.Load(h.conf)
		if err != nil {
			t.Fatal(err)
		}
		if stale, detail, err := postfix.Stale(cfg, postfix.Options{Hook: config.HookMilter}, h.Postfix.Dir); err != nil || !stale {
			t.Fatalf("Stale = %v, %q, %v; want stale", stale, detail, err)
		}
		// serve reloads the new file; "vipmilter postfix" is forgotten.
		if err := h.Reload(); err != nil {
			t.Fatal(err)
		}
		if err := testenv.Poll(ctx, 100*time.Millisecond, func() (bool, error) {
			return strings.Contains(h.ServeOutput(), "policy reloaded"), nil
		}, "serve to reload"); err != nil {
			t.Fatal(err)
		}
		c := NewCase("late binding", "Late", []Source{srcRHLate}, "a@unknown.test", Rcpt4, "X-Late: yes")
		if err := Submit(ctx, h.Net.MTA, c.Msg); err != nil {
			t.Fatal(err)
		}
		h.waitQueued(t, ctx, 1, "hold")
		if logCount(h.Postfix, "binding Late is unknown to Postfix") == 0 {
			t.Errorf("the hold is not logged with its reason")
		}
		if msgs, _ := testenv.ReadDumps(h.SinkDir); len(msgs) > 0 {
			for _, m := range msgs {
				if m.Header.Get("Subject") == c.Msg.Subject {
					t.Fatalf("held mail left from %s", m.ClientAddr)
				}
			}
		}
		if err := h.ApplyPostfix(ctx); err != nil {
			t.Fatal(err)
		}
		if stale, detail, err := postfix.Stale(cfg, postfix.Options{Hook: config.HookMilter}, h.Postfix.Dir); err != nil || stale {
			t.Fatalf("after vipmilter postfix: Stale = %v, %q, %v", stale, detail, err)
		}
		if _, err := h.Net.MTA.Run(ctx, "postsuper", "-c", h.Postfix.Dir, "-r", "ALL", "hold"); err != nil {
			t.Fatal(err)
		}
		h.expect(t, ctx, c)
	})
}

func TestRealHostOpenDKIM(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const dkim = "inet:127.0.0.1:8891"
	var dkimDir string
	h := newRealHost(t, ctx, func(pf *testenv.Postfix, n *Network) error {
		dkimDir = filepath.Join(pf.Dir, "..", "opendkim")
		startOpenDKIM(t, ctx, n.MTA, dkimDir)
		return pf.Postconf(ctx, "smtpd_milters = "+dkim, "non_smtpd_milters = "+dkim, "milter_default_action = accept")
	})
	want := dkim + ", { inet:127.0.0.1:8894, default_action=accept }"
	for _, p := range []string{"smtpd_milters", "non_smtpd_milters"} {
		if got := postconfH(t, ctx, h.Postfix, p); got != want {
			t.Fatalf("%s = %q, want %q", p, got, want)
		}
	}
	smtpCase := NewCase("dkim smtp", "Newsletters", []Source{srcRHNews}, "news@example.org", Rcpt4, "List-Id: <l.example.org>")
	if err := Submit(ctx, h.Net.MTA, smtpCase.Msg); err != nil {
		t.Fatal(err)
	}
	localCase := NewCase("dkim local", "Newsletters", []Source{srcRHNews}, "news@example.org", Rcpt4)
	msg := "From: news@example.org\nTo: " + Rcpt4 + "\nSubject: dkim local\nList-Id: <l.example.org>\n\nhi\n"
	if err := h.Postfix.Sendmail(ctx, "news@example.org", []string{Rcpt4}, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	h.expect(t, ctx, smtpCase, localCase)
	for _, c := range []Case{smtpCase, localCase} {
		m := h.received(t, c.Msg.Subject)
		sig := m.Header.Get("DKIM-Signature")
		if !strings.Contains(sig, "d=example.org") || !strings.Contains(sig, "s=sel") {
			t.Errorf("%s: not signed by opendkim (DKIM-Signature %q)", c.Name, sig)
		}
		if strings.Contains(strings.ToLower(sig), "x-binding") {
			t.Errorf("%s: the signature covers the binding header that egress removes: %q", c.Name, sig)
		}
	}

	// The binding file moves its milter: only vipmilter's entry changes.
	conf, _ := os.ReadFile(h.conf)
	if err := os.WriteFile(h.conf, []byte(strings.Replace(string(conf), "127.0.0.1:8894", "127.0.0.1:8895", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Vipmilter(ctx, "postfix", "-c", h.conf, "--config-dir", h.Postfix.Dir); err != nil {
		t.Fatal(err)
	}
	want = dkim + ", { inet:127.0.0.1:8895, default_action=accept }"
	if got := postconfH(t, ctx, h.Postfix, "smtpd_milters"); got != want {
		t.Fatalf("after moving vipmilter's milter: smtpd_milters = %q, want %q", got, want)
	}
}

func TestRealHostContentFilter(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var filter *contentFilter
	const reinject = "127.0.0.1:10025 inet n - n - - smtpd -o content_filter= -o receive_override_options=no_unknown_recipient_checks,no_header_body_checks,no_milters -o smtpd_relay_restrictions=permit_mynetworks,reject -o mynetworks=127.0.0.0/8\n"
	h := newRealHost(t, ctx, func(pf *testenv.Postfix, n *Network) error {
		filter = startContentFilter(t, n.MTA)
		if err := pf.AppendMaster("scan unix - - n - 4 smtp\n" + reinject); err != nil {
			return err
		}
		return pf.Postconf(ctx, "content_filter = scan:[127.0.0.1]:10024")
	})
	// What vipmilter changed on the re-injection listener.
	p := postconfP(t, ctx, h.Postfix)
	for _, w := range []string{
		"127.0.0.1:10025/inet/cleanup_service_name = vip_filtered",
		"127.0.0.1:10025/inet/receive_override_options = no_unknown_recipient_checks,no_milters",
		"127.0.0.1:10025/inet/content_filter =",
	} {
		if !strings.Contains(p, w) {
			t.Errorf("master.cf lacks %q:\n%s", w, p)
		}
	}
	cases := []Case{
		NewCase("filtered newsletter", "Newsletters", []Source{srcRHNews}, "a@lists.example.net", Rcpt4, "List-Id: <l.example.net>"),
		NewCase("filtered default", "default", []Source{srcRHDefault}, "a@elsewhere.test", Rcpt4, "X-Binding: Newsletters"),
	}
	for _, c := range cases {
		if err := Submit(ctx, h.Net.MTA, c.Msg); err != nil {
			t.Fatal(err)
		}
	}
	local := NewCase("filtered local newsletter", "Newsletters", []Source{srcRHNews}, "u@lists.example.net", Rcpt4)
	msg := "Subject: filtered local newsletter\nList-Id: <l.example.net>\n\nhi\n"
	if err := h.Postfix.Sendmail(ctx, "u@lists.example.net", []string{Rcpt4}, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	cases = append(cases, local)
	h.expect(t, ctx, cases...)
	for _, c := range cases {
		if m := h.received(t, c.Msg.Subject); m.Header.Get("X-Filtered") != "yes" {
			t.Errorf("%s: did not pass the content filter", c.Name)
		}
	}
	if n := filter.received.Load(); n != int64(len(cases)) {
		t.Errorf("the filter saw %d messages, want %d", n, len(cases))
	}
}

func postconfH(t *testing.T, ctx context.Context, pf *testenv.Postfix, name string) string {
	t.Helper()
	out, err := testenv.Run(ctx, "postconf", "-c", pf.Dir, "-h", name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func postconfP(t *testing.T, ctx context.Context, pf *testenv.Postfix) string {
	t.Helper()
	out, err := testenv.Run(ctx, "postconf", "-c", pf.Dir, "-P")
	if err != nil {
		t.Fatal(err)
	}
	return out
}
