package postfix

import (
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

func TestRender(t *testing.T) {
	opts := Options{ConfigDir: "/etc/postfix", QueueDir: "/var/spool/postfix", SMTPChroot: "y", CleanupChroot: "y"}
	tests := []struct {
		name    string
		cfg     func() *config.Config
		opts    Options
		want    []string // substrings that must appear in the rendered plan
		notWant []string
		err     string
	}{
		{
			name: "transport per binding",
			cfg: func() *config.Config {
				b := binding("news", "192.0.2.20")
				b.EHLOHostname = "news.example.org"
				b.MaxOutboundConnections = 8
				b.ServerMaxOutboundConnections = 50
				return testConfig(b)
			},
			want: []string{
				"service vip_news unix - - y - 50 smtp -o syslog_name=postfix/vip_news -o smtp_bind_address=192.0.2.20 -o smtp_bind_address_enforce=yes -o inet_protocols=ipv4 -o smtp_helo_name=news.example.org -o smtp_header_checks=regexp:/etc/postfix/vipmilter_egress_checks",
				"main vip_news_destination_concurrency_limit = 8",
				"table /etc/postfix/vipmilter_header_checks: /^X-Binding: news$/i FILTER vip_news:",
				"table /etc/postfix/vipmilter_requeue_checks: /^X-Binding: news$/i FILTER vip_news:",
				"table /etc/postfix/vipmilter_egress_checks: /^X-Binding:/ IGNORE",
				"main milter_default_action = accept",
				"main milter_protocol = 6",
				"main smtpd_milters = inet:127.0.0.1:8894",
				"main non_smtpd_milters = inet:127.0.0.1:8894",
				"param pickup/unix/cleanup_service_name = vip_cleanup",
				"service vip_cleanup unix n - y - 0 cleanup -o syslog_name=postfix/vip_cleanup -o header_checks=regexp:/etc/postfix/vipmilter_requeue_checks",
				"param smtp/unix/smtp_header_checks = regexp:/etc/postfix/vipmilter_egress_checks",
			},
			notWant: []string{"param smtp/unix/smtp_bind_address"},
		},
		{
			name: "no default binding: the milter's default header still ends forged FILTERs",
			cfg: func() *config.Config {
				return testConfig(binding("news", "192.0.2.20"))
			},
			want:    []string{"table /etc/postfix/vipmilter_header_checks: /^X-Binding: default$/i FILTER smtp:"},
			notWant: []string{"vipmilter_requeue_checks: /^X-Binding: default$/"},
		},
		{
			name: "no default binding on a host that delivers locally: no default rule",
			cfg: func() *config.Config {
				return testConfig(binding("news", "192.0.2.20"))
			},
			opts:    Options{ConfigDir: "/etc/postfix", LocalDelivery: true},
			notWant: []string{"X-Binding: default$/i FILTER smtp:"},
		},
		{
			name: "ipv6 only binding never uses ipv4, metachars escaped",
			cfg: func() *config.Config {
				return testConfig(binding("a.b_c", "2001:db8::10"))
			},
			want: []string{
				"-o smtp_bind_address6=2001:db8::10 -o smtp_bind_address_enforce=yes -o inet_protocols=ipv6",
				`/^X-Binding: a\.b_c$/i FILTER vip_a.b_c:`,
			},
			notWant: []string{"smtp_bind_address=", "ipv4"},
		},
		{
			name: "default binds the stock smtp for bounces",
			cfg: func() *config.Config {
				return testConfig(binding("default", "192.0.2.1", "2001:db8::1"))
			},
			want: []string{
				"param smtp/unix/smtp_bind_address = 192.0.2.1",
				"param smtp/unix/smtp_bind_address6 = 2001:db8::1",
				"param smtp/unix/smtp_bind_address_enforce = yes",
				"param smtp/unix/inet_protocols = ipv4,ipv6",
				"FILTER vip_default:",
			},
			notWant: []string{"param smtp/unix/syslog_name"},
		},
		{
			name: "suspended binding keeps its rule but loses its transport",
			cfg: func() *config.Config {
				b := binding("held", "192.0.2.5")
				b.SuspendDelivery = true
				b.MatchDomains = []string{"held.example"}
				return testConfig(b)
			},
			want:    []string{"FILTER vip_held:", "@held.example vip_held:", "suspended vip_held"},
			notWant: []string{"service vip_held", "vip_held_destination_concurrency_limit"},
		},
		{
			name: "relay is the next hop of FILTER and sender maps",
			cfg: func() *config.Config {
				b := binding("smart", "192.0.2.6")
				b.Relay = "[smarthost.example]:587"
				b.MatchDomains = []string{"Example.COM"}
				return testConfig(b)
			},
			want: []string{"FILTER vip_smart:[smarthost.example]:587", "@example.com vip_smart:[smarthost.example]:587"},
		},
		{
			name: "keep header: no egress stripping",
			cfg: func() *config.Config {
				c := testConfig(binding("k", "192.0.2.7"))
				c.KeepHeader = true
				return c
			},
			notWant: []string{"smtp_header_checks"},
		},
		{
			name: "tempfail, custom prefix and header",
			cfg: func() *config.Config {
				c := testConfig(binding("x", "192.0.2.8"))
				c.OnMilterDown, c.TransportPrefix, c.BindingHeader = config.MilterDownTempfail, "out-", "X-Out"
				return c
			},
			want: []string{"main milter_default_action = tempfail", "/^X-Out: x$/i FILTER out-x:", "service out-x unix", "/^X-Out:/ IGNORE", "cleanup_service_name = out-cleanup"},
		},
		{
			name: "EHLO __message__ with one Match_Domain",
			cfg: func() *config.Config {
				b := binding("m", "192.0.2.9")
				b.EHLOHostname, b.MatchDomains = config.EHLOMessage, []string{"m.example"}
				return testConfig(b)
			},
			want: []string{"-o smtp_helo_name=m.example"},
		},
		{
			name: "unix socket inside the chroot is named as the jail sees it",
			cfg: func() *config.Config {
				c := testConfig(binding("u", "192.0.2.10"))
				c.MilterListen = config.MustParseListen("unix:/var/spool/postfix/vipmilter/milter.sock")
				return c
			},
			opts: Options{ConfigDir: "/etc/postfix", QueueDir: "/var/spool/postfix", MilterChrooted: true},
			want: []string{"main smtpd_milters = unix:/vipmilter/milter.sock"},
		},
		{
			name: "unix socket outside the chroot is refused",
			cfg: func() *config.Config {
				c := testConfig(binding("u", "192.0.2.10"))
				c.MilterListen = config.MustParseListen("unix:/run/vipmilter/milter.sock")
				return c
			},
			opts: Options{ConfigDir: "/etc/postfix", QueueDir: "/var/spool/postfix", MilterChrooted: true},
			err:  "cannot reach a socket outside it",
		},
		{
			name: "unix socket without chroot is rendered as is",
			cfg: func() *config.Config {
				c := testConfig(binding("u", "192.0.2.10"))
				c.MilterListen = config.MustParseListen("unix:/run/vipmilter/milter.sock")
				return c
			},
			want: []string{"main non_smtpd_milters = unix:/run/vipmilter/milter.sock"},
		},
		{
			name: "mixed chroot refused",
			cfg: func() *config.Config {
				c := testConfig(binding("u", "192.0.2.10"))
				c.MilterListen = config.MustParseListen("unix:/var/spool/postfix/m.sock")
				return c
			},
			opts: Options{ConfigDir: "/etc/postfix", QueueDir: "/var/spool/postfix", MilterChrootMixed: true},
			err:  "differ in chroot",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := opts
			if tt.opts.ConfigDir != "" {
				o = tt.opts
			}
			plan, err := Render(tt.cfg(), o)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := dump(plan)
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("missing %q in\n%s", w, got)
				}
			}
			for _, w := range tt.notWant {
				if strings.Contains(got, w) {
					t.Errorf("unexpected %q in\n%s", w, got)
				}
			}
		})
	}
}

// dump flattens a plan into one line per item for substring checks.
func dump(p *Plan) string {
	var b strings.Builder
	for _, m := range p.Main {
		b.WriteString("main " + m.Name + " = " + m.Value + "\n")
	}
	for _, s := range p.Services {
		b.WriteString("service " + s.Line + "\n")
	}
	for _, s := range p.ServiceParams {
		b.WriteString("param " + s.Key() + " = " + s.Value + "\n")
	}
	for _, s := range p.Suspended {
		b.WriteString("suspended " + s + "\n")
	}
	for _, t := range p.Tables {
		for _, l := range strings.Split(t.Content, "\n") {
			b.WriteString("table " + t.Path + ": " + l + "\n")
		}
	}
	return b.String()
}
