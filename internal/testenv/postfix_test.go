package testenv

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestPostfixToSink runs a private Postfix and an smtp-sink in a namespace:
// a message submitted with sendmail must reach the sink from the configured
// source address and EHLO name, and the queue must end empty.
func TestPostfixToSink(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	Require(t, Namespaces, PostfixServer, SMTPSink)
	ns := NewTestNS(t, "vipt-p")
	sink := StartTestSink(t, ns, "127.0.0.2:25")
	pf := StartTestPostfix(t, ns, "mydestination =", "inet_interfaces = loopback-only",
		"smtp_dns_support_level = disabled", "smtp_bind_address = 127.0.0.3", "smtp_helo_name = source.test")
	if got := pf.LogTail(100); strings.Contains(got, "overriding earlier entry") {
		t.Errorf("main.cf repeats a setting:\n%s", got)
	}
	msg := "From: <a@sender.test>\nSubject: testenv\n\nbody\n"
	if err := pf.Sendmail(ctx, "a@sender.test", []string{"u@[127.0.0.2]"}, []byte(msg)); err != nil {
		t.Fatal(err)
	}
	var got []Received
	Eventually(t, "the message at the sink", func() bool {
		var err error
		got, err = sink.Received()
		return err == nil && len(got) > 0
	}, func() string { return pf.LogTail(30) })
	if len(got) != 1 || got[0].ClientAddr != "127.0.0.3" || got[0].Helo != "source.test" || got[0].Header.Get("Subject") != "testenv" {
		t.Errorf("sink received %+v", got)
	}
	Eventually(t, "an empty queue", func() bool { return pf.QueueEmpty(ctx) }, func() string { return pf.Queue(ctx) })
	if !strings.Contains(pf.Log(), "status=sent") {
		t.Errorf("maillog has no delivery:\n%s", pf.LogTail(30))
	}
}
