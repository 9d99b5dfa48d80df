package e2e

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRealHostKeyNotLogged: Postfix logs every header check that routes
// (FILTER) with the start of the matching header line, and the binding
// header carries the key. The milter and the policy service put the key
// past what cleanup logs (config.BindingHeaderValue), so after keyed mail
// on every routing path — smtpd and sendmail/pickup with the milter hook,
// requeue through pickup's cleanup, smtpd with the policy hook — the mail
// log shows the routing lines but never the key; the mail leaves from its
// binding, and forged copies still route nothing.
func TestRealHostKeyNotLogged(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	h := newRealHost(t, ctx, nil)
	key := h.headerKey(t)
	news, def := []Source{srcRHNews}, []Source{srcRHDefault}
	guess := strings.Repeat("0", len(key))
	forged := []string{"X-Binding: Newsletters", "X-Binding: Newsletters " + guess}
	// sendmail submits c's message as a local user would, with more header lines.
	sendmail := func(t *testing.T, c Case, hdr ...string) {
		t.Helper()
		raw := "Subject: " + c.Msg.Subject + "\n" + strings.Join(append(hdr, c.Msg.Headers...), "\n") + "\n\nhi\n"
		if err := h.Postfix.Sendmail(ctx, c.Msg.From, c.Msg.To, []byte(raw)); err != nil {
			t.Fatal(err)
		}
	}
	submit := func(t *testing.T, cases ...Case) {
		t.Helper()
		for _, c := range cases {
			if err := Submit(ctx, h.Net.MTA, c.Msg); err != nil {
				t.Fatal(err)
			}
		}
	}
	// count is the number of mail log lines that hold every part.
	count := func(parts ...string) int {
		n := 0
		for _, l := range strings.Split(h.Postfix.Log(), "\n") {
			all := true
			for _, p := range parts {
				all = all && strings.Contains(l, p)
			}
			if all {
				n++
			}
		}
		return n
	}
	// logged checks that at least want more lines hold every part (the
	// routing was logged: the path was taken) and that neither the mail log
	// nor vipmilter's own output holds the key.
	logged := func(t *testing.T, before, want int, parts ...string) {
		t.Helper()
		if n := count(parts...); n < before+want {
			t.Errorf("the mail log has %d new lines with %q, want %d: the path was not taken, so the test proves nothing", n-before, parts, want)
		}
		for _, l := range strings.Split(h.Postfix.Log(), "\n") {
			if strings.Contains(l, key) {
				t.Errorf("the mail log shows the key: %s", l)
			}
		}
		if strings.Contains(h.ServeOutput(), key) {
			t.Errorf("vipmilter serve's log shows the key")
		}
	}
	// What cleanup logs for a milter_header_checks FILTER and for a
	// header_checks FILTER (cleanup_milter_hbc_log, cleanup_act_log).
	const milterFilter, cleanupFilter = ": milter-header-filter: header X-Binding: Newsletters ", ": filter: header X-Binding: Newsletters "

	t.Run("milter hook: smtpd and sendmail", func(t *testing.T) {
		before := count(milterFilter)
		smtpd := NewCase("keylog smtpd", "Newsletters", news, "a@lists.example.net", Rcpt4, "List-Id: <l.example.net>")
		local := NewCase("keylog sendmail", "Newsletters", news, "u@lists.example.net", Rcpt4, "List-Id: <l.example.net>")
		forgedSMTP := NewCase("keylog forged smtpd", "default", def, "a@unknown.test", Rcpt4, forged...)
		forgedLocal := NewCase("keylog forged sendmail", "default", def, "u@unknown.test", Rcpt4)
		submit(t, smtpd, forgedSMTP)
		sendmail(t, local)
		sendmail(t, forgedLocal, forged...)
		h.expect(t, ctx, smtpd, local, forgedSMTP, forgedLocal)
		logged(t, before, 2, milterFilter) // smtpd's cleanup and pickup's
	})

	t.Run("requeue: pickup's cleanup routes again", func(t *testing.T) {
		before := count("postfix/vip_cleanup/", cleanupFilter)
		h.holdDelivery(t, ctx)
		smtpd := NewCase("keylog requeued smtpd", "Newsletters", news, "a@lists.example.net", Rcpt4, "List-Id: <l.example.net>")
		local := NewCase("keylog requeued sendmail", "Newsletters", news, "u@lists.example.net", Rcpt4, "List-Id: <l.example.net>")
		submit(t, smtpd)
		sendmail(t, local)
		h.waitQueued(t, ctx, 2, "deferred")
		h.requeue(t, ctx)
		h.release(t, ctx)
		h.expect(t, ctx, smtpd, local)
		logged(t, before, 2, "postfix/vip_cleanup/", cleanupFilter)
	})

	t.Run("policy hook: smtpd's cleanup routes the PREPENDed header", func(t *testing.T) {
		// An envelope-only script: vipmilter postfix picks the policy hook.
		script := "require [\"envelope\", \"variables\"];\nif envelope :domain :is \"from\" \"lists.example.net\" {\n  set \"binding\" \"Newsletters\";\n  stop;\n}\n"
		if err := os.WriteFile(h.policy, []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := h.ApplyPostfix(ctx); err != nil {
			t.Fatal(err)
		}
		h.StopServe(syscall.SIGTERM)
		if err := h.StartServe(ctx); err != nil {
			t.Fatal(err)
		}
		if out := postconfH(t, ctx, h.Postfix, "smtpd_data_restrictions"); !strings.Contains(out, "check_policy_service") {
			t.Fatalf("not the policy hook: smtpd_data_restrictions = %s", out)
		}
		before, beforeMilter := count("postfix/cleanup[", cleanupFilter), count(milterFilter)
		smtpd := NewCase("keylog policy smtpd", "Newsletters", news, "a@lists.example.net", Rcpt4)
		forgedSMTP := NewCase("keylog policy forged smtpd", "default", def, "a@unknown.test", Rcpt4, forged...)
		local := NewCase("keylog policy sendmail", "Newsletters", news, "u@lists.example.net", Rcpt4)
		submit(t, smtpd, forgedSMTP)
		sendmail(t, local)
		h.expect(t, ctx, smtpd, forgedSMTP, local)
		logged(t, before, 1, "postfix/cleanup[", cleanupFilter) // smtpd's: the PREPENDed header
		logged(t, beforeMilter, 1, milterFilter)                // pickup's: the milter's header
	})
}
