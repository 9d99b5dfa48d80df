package postfix

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// TestSuspendSurvivesFlush runs a private Postfix: mail for a suspended
// binding defers as "mail transport unavailable", stays queued through
// postqueue -f, and leaves from the binding's address once unsuspended.
// It also exercises the requeue trap: after postsuper -r the message is
// routed only by the pickup cleanup's header_checks (no milter is running),
// and must not leave by the stock smtp transport, which could reach the sink.
func TestSuspendSurvivesFlush(t *testing.T) {
	needPostfix(t)
	dir := privateDir(t, "smtp_dns_support_level = disabled\nsmtp_tcp_port = 2526\nmyorigin = sender.test\nmydestination =\n")
	if out, err := exec.Command("postconf", "-c", dir, "-MX", "smtp/inet").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	sinkDir := testenv.StartTestSink(t, nil, "127.0.0.77:2526").Dir

	held := binding("held", "127.0.0.4")
	held.SuspendDelivery = true
	apply(t, dir, testConfig(held), false)
	if out, err := exec.Command("postfix", "-c", dir, "start").CombinedOutput(); err != nil {
		b, _ := os.ReadFile(filepath.Join(dir, "maillog"))
		t.Fatalf("postfix start: %v: %s\n%s", err, out, b)
	}
	t.Cleanup(func() { exec.Command("postfix", "-c", dir, "stop").Run() })

	send := exec.Command("sendmail", "-C", dir, "-f", "s@sender.test", "u@[127.0.0.77]")
	send.Stdin = strings.NewReader("X-Binding: held\nSubject: t\n\nbody\n")
	if out, err := send.CombinedOutput(); err != nil {
		t.Fatalf("sendmail: %v: %s", err, out)
	}
	logf := filepath.Join(dir, "maillog")
	count := func(s string) int {
		b, _ := os.ReadFile(logf)
		return strings.Count(string(b), s)
	}
	// Each wait also ends when the message left the queue, so a routing
	// bug fails the test instead of hanging it.
	left := func() bool { return count("status=bounced") > 0 || count("status=sent") > 0 }
	waitFor := func(what string, ok func() bool) {
		t.Helper()
		testenv.Eventually(t, what, func() bool { return ok() || (what != "delivery" && left()) }, func() string {
			b, _ := os.ReadFile(logf)
			return string(b)
		})
	}
	const unavailable = "mail transport unavailable"
	waitFor("first deferral", func() bool { return count(unavailable) >= 1 })
	n := count(unavailable)
	if out, err := exec.Command("postqueue", "-c", dir, "-f").CombinedOutput(); err != nil {
		t.Fatalf("postqueue -f: %v: %s", err, out)
	}
	waitFor("deferral after flush", func() bool { return count(unavailable) > n })
	// postsuper -r drops the FILTER record and skips milters: the pickup
	// cleanup must route the requeued message to the binding again.
	n = count(unavailable)
	if out, err := exec.Command("postsuper", "-c", dir, "-r", "ALL").CombinedOutput(); err != nil {
		t.Fatalf("postsuper -r: %v: %s", err, out)
	}
	exec.Command("postqueue", "-c", dir, "-f").Run()
	waitFor("deferral after requeue", func() bool { return count(unavailable) > n })
	if left() {
		b, _ := os.ReadFile(logf)
		t.Fatalf("suspended mail left the queue:\n%s", b)
	}

	apply(t, dir, testConfig(binding("held", "127.0.0.4")), false) // reloads the running Postfix
	exec.Command("postqueue", "-c", dir, "-f").Run()
	var got string
	waitFor("delivery", func() bool {
		// Only complete dumps: smtp-sink creates the file before the
		// message is in it.
		msgs, _ := testenv.ReadDumps(sinkDir)
		for _, m := range msgs {
			b, _ := os.ReadFile(m.File)
			got = string(b)
			return true
		}
		return false
	})
	if !strings.Contains(got, "X-Client-Addr: 127.0.0.4") {
		t.Fatalf("released mail did not leave from the binding's address:\n%s", got)
	}
	if strings.Contains(got, "X-Binding:") {
		t.Fatalf("binding header not stripped on egress:\n%s", got)
	}
}
