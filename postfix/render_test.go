package postfix

import (
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

const testKey = "0123456789abcdef0123456789abcdef"

func TestRender(t *testing.T) {
	opts := Options{ConfigDir: "/etc/postfix", QueueDir: "/var/spool/postfix", SMTPChroot: "y", CleanupChroot: "y", Key: testKey}
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
				"service vip_news unix - - y - 50 smtp -o syslog_name=postfix/vip_news -o smtp_bind_address=192.0.2.20 -o smtp_bind_address_enforce=yes -o inet_protocols=ipv4 -o smtp_helo_name=news.example.org -o smtp_header_checks=regexp:/etc/postfix/vipmilter_strip_checks -o smtp_mime_header_checks=regexp:/etc/postfix/vipmilter_strip_checks -o smtp_nested_header_checks=regexp:/etc/postfix/vipmilter_strip_checks",
				"main vip_news_destination_concurrency_limit = 8",
				"table /etc/postfix/vipmilter_header_checks: /^X-Binding: news[[:space:]]+KEY$/i FILTER vip_news:",
				"table /etc/postfix/vipmilter_header_checks: /^X-Binding: (\\S+)[[:space:]]+KEY$/i HOLD vipmilter: binding $1 is unknown to Postfix",
				"table /etc/postfix/vipmilter_header_checks: /^X-Binding:/ IGNORE",
				"table /etc/postfix/vipmilter_strip_checks: /^X-Binding:/ IGNORE",
				"main smtpd_milters = { inet:127.0.0.1:8894, default_action=accept }",
				"main non_smtpd_milters = { inet:127.0.0.1:8894, default_action=accept }",
				"main milter_header_checks = regexp:/etc/postfix/vipmilter_header_checks",
				"main header_checks = regexp:/etc/postfix/vipmilter_strip_checks",
				"main sender_dependent_default_transport_maps = hash:/etc/postfix/vipmilter_sender_transport",
				"param pickup/unix/cleanup_service_name = vip_cleanup",
				"service vip_cleanup unix n - y - 0 cleanup -o syslog_name=postfix/vip_cleanup -o header_checks=regexp:/etc/postfix/vipmilter_header_checks -o mime_header_checks=regexp:/etc/postfix/vipmilter_strip_checks -o nested_header_checks=regexp:/etc/postfix/vipmilter_strip_checks",
				"param smtp/unix/smtp_header_checks = regexp:/etc/postfix/vipmilter_strip_checks",
				"param smtp/unix/smtp_nested_header_checks = regexp:/etc/postfix/vipmilter_strip_checks",
			},
			notWant: []string{"param smtp/unix/smtp_bind_address", "milter_protocol", "milter_default_action", "vip_filtered"},
		},
		{
			name: "no default binding: the milter's default header still ends forged FILTERs",
			cfg: func() *config.Config {
				return testConfig(binding("news", "192.0.2.20"))
			},
			want: []string{"table /etc/postfix/vipmilter_header_checks: /^X-Binding: default[[:space:]]+KEY$/i FILTER smtp:"},
		},
		{
			name: "no default binding on a host that delivers locally: no default rule",
			cfg: func() *config.Config {
				return testConfig(binding("news", "192.0.2.20"))
			},
			opts:    Options{ConfigDir: "/etc/postfix", LocalDelivery: true},
			want:    []string{"/^X-Binding: default[[:space:]]+KEY$/i DUNNO"},
			notWant: []string{"FILTER smtp:"},
		},
		{
			name: "ipv6 only binding never uses ipv4, metachars escaped",
			cfg: func() *config.Config {
				return testConfig(binding("a.b_c", "2001:db8::10"))
			},
			want: []string{
				"-o smtp_bind_address6=2001:db8::10 -o smtp_bind_address_enforce=yes -o inet_protocols=ipv6",
				`/^X-Binding: a\.b_c[[:space:]]+KEY$/i FILTER vip_a.b_c:`,
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
				b.MatchDomains = []string{"example.com"} // config.Load canonicalises (config.Domain)
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
			want: []string{"main smtpd_milters = { inet:127.0.0.1:8894, default_action=tempfail }", "/^X-Out: x[[:space:]]+KEY$/i FILTER out-x:", "service out-x unix", "/^X-Out:/ IGNORE", "cleanup_service_name = out-cleanup"},
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
			want: []string{"main smtpd_milters = { unix:/vipmilter/milter.sock, default_action=accept }"},
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
			want: []string{"main non_smtpd_milters = { unix:/run/vipmilter/milter.sock, default_action=accept }"},
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
		{
			name: "a default binding without an address is Postfix's ordinary delivery",
			cfg: func() *config.Config {
				c, err := config.Parse("/etc/vipmilter/vipmilter.conf", []byte("Binding \"default\" {\n  EHLO_Hostname = out.example\n  Match_Domain = d.example\n}\nBinding \"a\" { Bind_Address = 192.0.2.11 }\n"))
				if err != nil {
					t.Fatal(err)
				}
				return c
			},
			want:    []string{"/^X-Binding: default[[:space:]]+KEY$/i FILTER smtp:", "@d.example smtp:", "param smtp/unix/smtp_helo_name = out.example"},
			notWant: []string{"vip_default", "smtp/unix/smtp_bind_address"},
		},
		{
			name: "relative config directory refused",
			cfg:  func() *config.Config { return testConfig(binding("a", "192.0.2.11")) },
			opts: Options{ConfigDir: "pf"},
			err:  "not an absolute path",
		},
		{
			name: "the host's milters, checks and sender maps are kept, vipmilter's milter goes last, once",
			cfg:  func() *config.Config { return testConfig(binding("a", "192.0.2.11")) },
			opts: Options{ConfigDir: "/etc/postfix", PrevMilter: "{ inet:127.0.0.1:7000, default_action=accept }", Main: map[string]string{
				"smtpd_milters":                           "inet:127.0.0.1:8891, { inet:127.0.0.1:7000, default_action=accept }",
				"non_smtpd_milters":                       "$smtpd_milters",
				"header_checks":                           "regexp:/etc/postfix/vipmilter_strip_checks, pcre:/etc/postfix/hc",
				"smtp_header_checks":                      "regexp:/etc/postfix/secret",
				"smtp_mime_header_checks":                 "pcre:/etc/postfix/mime",
				"milter_header_checks":                    "regexp:/etc/postfix/mhc",
				"sender_dependent_default_transport_maps": "hash:/etc/postfix/sdt",
			}},
			want: []string{
				"main smtpd_milters = inet:127.0.0.1:8891, { inet:127.0.0.1:8894, default_action=accept }",
				"main non_smtpd_milters = $smtpd_milters, { inet:127.0.0.1:8894, default_action=accept }",
				"main header_checks = regexp:/etc/postfix/vipmilter_strip_checks, pcre:/etc/postfix/hc",
				"main milter_header_checks = regexp:/etc/postfix/vipmilter_header_checks, regexp:/etc/postfix/mhc",
				"main sender_dependent_default_transport_maps = hash:/etc/postfix/vipmilter_sender_transport, hash:/etc/postfix/sdt",
				"-o smtp_header_checks=regexp:/etc/postfix/vipmilter_strip_checks,regexp:/etc/postfix/secret -o smtp_mime_header_checks=regexp:/etc/postfix/vipmilter_strip_checks,pcre:/etc/postfix/mime",
				"param smtp/unix/smtp_header_checks = regexp:/etc/postfix/vipmilter_strip_checks,regexp:/etc/postfix/secret",
				"-o header_checks=regexp:/etc/postfix/vipmilter_header_checks,pcre:/etc/postfix/hc -o mime_header_checks=regexp:/etc/postfix/vipmilter_strip_checks,pcre:/etc/postfix/hc",
			},
			notWant: []string{"7000"},
		},
		{
			name: "a host value that cannot go into master.cf is refused, naming it",
			cfg:  func() *config.Config { return testConfig(binding("a", "192.0.2.11")) },
			opts: Options{ConfigDir: "/etc/postfix", Main: map[string]string{"smtp_header_checks": "inline:{ { /^X-A:/ IGNORE } }"}},
			err:  "main.cf smtp_header_checks contains",
		},
		{
			name: "mime_header_checks = $header_checks is resolved, never left to expand to the routing table",
			cfg:  func() *config.Config { return testConfig(binding("a", "192.0.2.11")) },
			opts: Options{ConfigDir: "/etc/postfix", Main: map[string]string{"header_checks": "pcre:/h", "mime_header_checks": "$header_checks, pcre:/m"}},
			want: []string{"-o mime_header_checks=regexp:/etc/postfix/vipmilter_strip_checks,pcre:/h,pcre:/m"},
		},
		{
			name: "content filter: routing moves to the re-injection smtpd",
			cfg:  func() *config.Config { return testConfig(binding("a", "192.0.2.11")) },
			opts: Options{ConfigDir: "/etc/postfix", ContentFilter: "smtp-amavis:[127.0.0.1]:10024",
				Main:     map[string]string{"content_filter": "smtp-amavis:[127.0.0.1]:10024"},
				Services: map[string][]string{"127.0.0.1:10025/inet": strings.Fields("127.0.0.1:10025 inet n - n - - smtpd"), "pickup/unix": strings.Fields("pickup unix n - n 60 1 pickup")},
				ServiceParams: map[string]string{"127.0.0.1:10025/inet/content_filter": "",
					"127.0.0.1:10025/inet/receive_override_options": "no_unknown_recipient_checks,no_header_body_checks,no_milters"}},
			want: []string{
				"unset milter_header_checks",
				"param 127.0.0.1:10025/inet/cleanup_service_name = vip_filtered",
				"param 127.0.0.1:10025/inet/receive_override_options = no_unknown_recipient_checks,no_milters",
				"service vip_filtered unix n - - - 0 cleanup -o syslog_name=postfix/vip_filtered -o header_checks=regexp:/etc/postfix/vipmilter_header_checks -o mime_header_checks=regexp:/etc/postfix/vipmilter_strip_checks -o nested_header_checks=regexp:/etc/postfix/vipmilter_strip_checks -o body_checks=",
				"-o header_checks=regexp:/etc/postfix/vipmilter_requeue_checks",
				"table /etc/postfix/vipmilter_requeue_checks: /^X-Binding: \\S+[[:space:]]+KEY$/i DUNNO",
			},
			notWant: []string{"main milter_header_checks"},
		},
		{
			name: "content filter without a re-injection smtpd refused",
			cfg:  func() *config.Config { return testConfig(binding("a", "192.0.2.11")) },
			opts: Options{ConfigDir: "/etc/postfix", ContentFilter: "smtp-amavis:[127.0.0.1]:10024"},
			err:  "no re-injection smtpd",
		},
		{
			name: "a per-service content filter refused",
			cfg:  func() *config.Config { return testConfig(binding("a", "192.0.2.11")) },
			opts: Options{ConfigDir: "/etc/postfix",
				Services:      map[string][]string{"smtp/inet": strings.Fields("smtp inet n - n - - smtpd")},
				ServiceParams: map[string]string{"smtp/inet/content_filter": "filter:dummy"}},
			err: "master.cf smtp/inet sets content_filter=filter:dummy",
		},
		{
			name: "an smtpd overriding smtpd_milters refused",
			cfg:  func() *config.Config { return testConfig(binding("a", "192.0.2.11")) },
			opts: Options{ConfigDir: "/etc/postfix",
				Services:      map[string][]string{"submission/inet": strings.Fields("submission inet n - n - - smtpd")},
				ServiceParams: map[string]string{"submission/inet/smtpd_milters": "inet:127.0.0.1:8891"}},
			err: "overrides smtpd_milters",
		},
		{
			name: "pickup with another cleanup refused",
			cfg:  func() *config.Config { return testConfig(binding("a", "192.0.2.11")) },
			opts: Options{ConfigDir: "/etc/postfix", ServiceParams: map[string]string{"pickup/unix/cleanup_service_name": "mycleanup"}},
			err:  "pickup/unix sets cleanup_service_name=mycleanup",
		},
		{
			name: "daemon names per smtpd service",
			cfg:  func() *config.Config { return testConfig(binding("a", "192.0.2.11")) },
			opts: Options{ConfigDir: "/etc/postfix", DaemonNames: map[string]string{"submission/inet": "submission"}},
			want: []string{"param submission/inet/milter_macro_daemon_name = submission"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := opts
			if tt.opts.ConfigDir != "" {
				o = tt.opts
				o.Key = testKey
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
			got := plan.dump()
			for _, w := range tt.want {
				w = strings.ReplaceAll(w, "KEY", testKey)
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

func TestParseMaster(t *testing.T) {
	text := `# comment
smtp      inet  n       -       y       -       -       smtpd
  -o smtpd_milters=inet:127.0.0.1:8891
#  -o commented=out
  -o { smtpd_client_restrictions = permit_mynetworks, reject }
pickup    unix  n       -       y       60      1       pickup -o cleanup_service_name=vip_cleanup
127.0.0.1:10025 inet n - n - - smtpd -o content_filter= -o receive_override_options=no_milters
broken line
`
	services, params := parseMaster(text)
	for _, tt := range []struct{ key, want string }{
		{"smtp/inet/smtpd_milters", "inet:127.0.0.1:8891"},
		{"smtp/inet/smtpd_client_restrictions", "permit_mynetworks, reject"},
		{"pickup/unix/cleanup_service_name", "vip_cleanup"},
		{"127.0.0.1:10025/inet/content_filter", ""},
		{"127.0.0.1:10025/inet/receive_override_options", "no_milters"},
	} {
		if got, ok := params[tt.key]; !ok || got != tt.want {
			t.Errorf("%s = %q (%v), want %q", tt.key, got, ok, tt.want)
		}
	}
	if _, ok := params["smtp/inet/commented"]; ok {
		t.Error("a comment line was read as an override")
	}
	if len(services) != 3 || services["pickup/unix"][7] != "pickup" || services["smtp/inet"][4] != "y" {
		t.Errorf("services = %q", services)
	}
}

// TestRenderHooks: what each hook (policyd.ChooseHook's choice) renders,
// on a host with its own milter, restrictions and header checks.
func TestRenderHooks(t *testing.T) {
	host := map[string]string{
		"smtpd_milters":                "inet:127.0.0.1:8891",
		"non_smtpd_milters":            "$smtpd_milters",
		"smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
		"header_checks":                "pcre:/etc/postfix/hc",
	}
	filter := Options{ContentFilter: "smtp-amavis:[127.0.0.1]:10024",
		Services: map[string][]string{"127.0.0.1:10025/inet": strings.Fields("127.0.0.1:10025 inet n - n - - smtpd"), "pickup/unix": strings.Fields("pickup unix n - n 60 1 pickup")},
		ServiceParams: map[string]string{"127.0.0.1:10025/inet/content_filter": "",
			"127.0.0.1:10025/inet/receive_override_options": "no_unknown_recipient_checks,no_header_body_checks,no_milters"}}
	const (
		routes  = "regexp:/etc/postfix/vipmilter_header_checks"
		requeue = "regexp:/etc/postfix/vipmilter_requeue_checks"
		strip   = "regexp:/etc/postfix/vipmilter_strip_checks"
		milter  = "{ inet:127.0.0.1:8894, default_action=accept }"
		policy  = "check_policy_service { inet:127.0.0.1:8896, default_action=DUNNO }"
	)
	for _, tt := range []struct {
		name     string
		hook     config.Hook
		rcpts    bool // PolicyRecipients
		filtered bool
		services map[string]string // more master.cf overrides
		want     []string
		notWant  []string
		err      string
	}{
		{name: "none: no milter, no policy service, nothing routes by the header", hook: config.HookNone,
			want: []string{
				"main smtpd_milters = inet:127.0.0.1:8891\n",
				"main non_smtpd_milters = $smtpd_milters\n",
				"main header_checks = " + strip + ", pcre:/etc/postfix/hc\n",
				"main sender_dependent_default_transport_maps = hash:/etc/postfix/vipmilter_sender_transport\n",
				"-o header_checks=" + strip + ",pcre:/etc/postfix/hc -o mime_header_checks=" + strip,
				"unset milter_header_checks",
			},
			notWant: []string{"8894", "check_policy_service", "=" + routes, routes + ",", "main smtpd_recipient_restrictions", "main mime_header_checks"}},
		{name: "none behind a content filter: the re-injection routes nothing either", hook: config.HookNone, filtered: true,
			want:    []string{"service vip_filtered unix n - - - 0 cleanup -o syslog_name=postfix/vip_filtered -o header_checks=" + strip + " "},
			notWant: []string{"8894", "=" + routes, "=" + requeue}},
		{name: "policy: the policy service first, the milter for sendmail only, smtpd's cleanup routes", hook: config.HookPolicy, rcpts: true,
			want: []string{
				"main smtpd_milters = inet:127.0.0.1:8891\n",
				"main non_smtpd_milters = $smtpd_milters, " + milter + "\n",
				"main smtpd_recipient_restrictions = " + policy + ", permit_mynetworks, reject_unauth_destination\n",
				"main smtpd_data_restrictions = " + policy + "\n",
				"main header_checks = " + routes + ", pcre:/etc/postfix/hc\n",
				"main mime_header_checks = " + strip + ", pcre:/etc/postfix/hc\n",
				"main nested_header_checks = " + strip + ", pcre:/etc/postfix/hc\n",
				"main milter_header_checks = " + routes + "\n",
				"-o header_checks=" + routes + ",pcre:/etc/postfix/hc -o mime_header_checks=" + strip + ",pcre:/etc/postfix/hc",
			},
			notWant: []string{"main smtpd_milters = inet:127.0.0.1:8891, {"}},
		{name: "policy, no recipient changes the decision: asked at DATA only", hook: config.HookPolicy,
			want:    []string{"main smtpd_data_restrictions = " + policy + "\n", "main non_smtpd_milters = $smtpd_milters, " + milter + "\n"},
			notWant: []string{"main smtpd_recipient_restrictions", "unset smtpd_recipient_restrictions"}},
		{name: "policy behind a content filter: first pass keeps the header, the re-injection routes", hook: config.HookPolicy, filtered: true,
			want: []string{
				"main header_checks = " + requeue + ", pcre:/etc/postfix/hc\n",
				"service vip_filtered unix n - - - 0 cleanup -o syslog_name=postfix/vip_filtered -o header_checks=" + routes + " ",
				"unset milter_header_checks",
			},
			notWant: []string{"main header_checks = " + routes}},
		{name: "policy: an smtpd overriding smtpd_data_restrictions would skip the service", hook: config.HookPolicy,
			services: map[string]string{"submission/inet/smtpd_data_restrictions": "reject_unauth_pipelining"},
			err:      "master.cf submission/inet overrides smtpd_data_restrictions"},
		{name: "milter: the milter on both lists, no policy service", hook: config.HookMilter,
			want: []string{
				"main smtpd_milters = inet:127.0.0.1:8891, " + milter + "\n",
				"main header_checks = " + strip + ", pcre:/etc/postfix/hc\n",
				"main milter_header_checks = " + routes + "\n",
			},
			notWant: []string{"check_policy_service", "main mime_header_checks"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			opts := Options{ConfigDir: "/etc/postfix", Key: testKey, Hook: tt.hook, PolicyRecipients: tt.rcpts, Main: host,
				Services: map[string][]string{"submission/inet": strings.Fields("submission inet n - y - - smtpd")}, ServiceParams: map[string]string{}}
			if tt.filtered {
				opts.ContentFilter, opts.Services, opts.ServiceParams = filter.ContentFilter, filter.Services, filter.ServiceParams
			}
			for k, v := range tt.services {
				opts.ServiceParams[k] = v
			}
			plan := renderOne(t, opts, tt.err)
			if plan == nil {
				return
			}
			got := plan.dump()
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
			if stamp := tableContent(plan, StampFile); stampField(stamp, "hook") != string(tt.hook) {
				t.Errorf("stamp does not record hook %s:\n%s", tt.hook, stamp)
			}
		})
	}
}

// TestRenderHookChanges applies each hook's main.cf in turn to one host
// (as Apply would, carrying the stamp forward): coming back to a hook
// gives exactly the main.cf that hook rendered before, with the host's
// own settings and nothing left of the other hooks.
func TestRenderHookChanges(t *testing.T) {
	host := map[string]string{
		"smtpd_milters":                "inet:127.0.0.1:8891",
		"smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
		"smtpd_data_restrictions":      "reject_unauth_pipelining",
		"header_checks":                "pcre:/etc/postfix/hc",
		"nested_header_checks":         "pcre:/etc/postfix/nested",
	}
	main := map[string]string{}
	for k, v := range host {
		main[k] = v
	}
	var prevMilter, prevPolicy string
	var prevDefaulted []string
	seen := map[config.Hook]string{}
	for i, hook := range []config.Hook{config.HookMilter, config.HookPolicy, config.HookMilter, config.HookNone, config.HookPolicy, config.HookNone, config.HookMilter} {
		plan, err := Render(testConfig(binding("a", "192.0.2.11")), Options{ConfigDir: "/etc/postfix", Key: testKey, Hook: hook, Main: main,
			PrevMilter: prevMilter, PrevPolicy: prevPolicy, PrevDefaulted: prevDefaulted})
		if err != nil {
			t.Fatal(err)
		}
		next := map[string]string{}
		for k, v := range main {
			next[k] = v
		}
		for _, p := range plan.Main {
			next[p.Name] = p.Value
		}
		for _, u := range plan.Unset {
			delete(next, u)
		}
		main = next
		stamp := tableContent(plan, StampFile)
		prevMilter, prevPolicy, prevDefaulted = stampField(stamp, "milter"), stampField(stamp, "policy"), strings.Fields(stampField(stamp, "defaulted"))
		got := dumpMain(main)
		if before, ok := seen[hook]; ok && got != before {
			t.Errorf("step %d, %s again: main.cf differs from the first time\nfirst:\n%s\nnow:\n%s", i, hook, before, got)
		}
		seen[hook] = got
		if hook != config.HookPolicy && (strings.Contains(got, "check_policy_service") || strings.Contains(got, "mime_header_checks")) {
			t.Errorf("step %d, %s: the policy hook's entries remain:\n%s", i, hook, got)
		}
		if hook == config.HookNone && strings.Contains(got, "8894") {
			t.Errorf("step %d, none: vipmilter's milter remains:\n%s", i, got)
		}
		for k, v := range host {
			if k == "header_checks" || k == "nested_header_checks" {
				continue // vipmilter's tables go in front of the host's
			}
			if !strings.Contains(main[k], v) {
				t.Errorf("step %d, %s: the host's %s = %s lost: %q", i, hook, k, v, main[k])
			}
		}
		if !strings.HasSuffix(main["header_checks"], "pcre:/etc/postfix/hc") || !strings.HasSuffix(main["nested_header_checks"], "pcre:/etc/postfix/nested") {
			t.Errorf("step %d, %s: the host's header checks lost:\n%s", i, hook, got)
		}
	}
}

func tableContent(p *Plan, name string) string {
	for _, t := range p.Tables {
		if strings.HasSuffix(t.Path, "/"+name) {
			return t.Content
		}
	}
	return ""
}

func dumpMain(m map[string]string) string {
	var b strings.Builder
	for _, k := range sortedKeys(m) {
		b.WriteString(k + " = " + m[k] + "\n")
	}
	return b.String()
}

// renderOne renders a file of one binding with opts. With wantErr it fails
// unless Render's error contains it, and returns nil.
func renderOne(t *testing.T, opts Options, wantErr string) *Plan {
	t.Helper()
	plan, err := Render(testConfig(binding("a", "192.0.2.11")), opts)
	switch {
	case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
		t.Fatalf("err %v, want %q", err, wantErr)
	case wantErr != "":
		return nil
	case err != nil:
		t.Fatal(err)
	}
	return plan
}
