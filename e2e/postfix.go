package e2e

import (
	"context"
	"slices"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// postfixMain is what the harness's Postfix adds to a private main.cf: it
// accepts mail from loopback only, relays it by address literal without DNS,
// and retries deferred mail quickly.
var postfixMain = []string{
	"myhostname = mta.e2e.test",
	"mydestination =",
	"inet_interfaces = loopback-only",
	"inet_protocols = all",
	"mynetworks = 127.0.0.0/8 [::1]/128",
	"smtpd_relay_restrictions = permit_mynetworks, reject",
	"smtp_dns_support_level = disabled",
	"smtp_connect_timeout = 5s",
	// Deferred mail must come back quickly in tests that hold and release it.
	"queue_run_delay = 2s",
	"minimal_backoff_time = 2s",
	"maximal_backoff_time = 4s",
	"smtputf8_enable = no",
}

// NewPostfix writes the harness's private Postfix under dir and starts it in
// namespace ns; extra lines are appended to main.cf.
func NewPostfix(ctx context.Context, dir string, ns *testenv.NS, extra ...string) (*testenv.Postfix, error) {
	pf, err := testenv.NewPostfix(dir, ns, slices.Concat(postfixMain, extra)...)
	if err != nil {
		return nil, err
	}
	if err := pf.Start(ctx); err != nil {
		return nil, err
	}
	return pf, nil
}
