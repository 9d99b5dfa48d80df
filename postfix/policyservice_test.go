package postfix

import (
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

func TestPolicyService(t *testing.T) {
	const prev = "check_policy_service { inet:127.0.0.1:9999, default_action=DUNNO }"
	for _, c := range []struct {
		name      string
		listen    string
		down      config.MilterDownAction
		chrooted  bool
		mixed     bool // some smtpd services chrooted, some not
		rcpts     bool // PolicyRecipients
		host      map[string]string
		daemons   map[string]string
		wantRcpt  string
		wantData  string
		wantParam string
		wantUnset string
		err       string
	}{
		{name: "fresh host", listen: "inet:127.0.0.1:8895", down: config.MilterDownAccept, rcpts: true,
			wantRcpt: "check_policy_service { inet:127.0.0.1:8895, default_action=DUNNO }",
			wantData: "check_policy_service { inet:127.0.0.1:8895, default_action=DUNNO }"},
		{name: "host restrictions kept after ours, earlier entry replaced", listen: "inet:127.0.0.1:8895", down: config.MilterDownTempfail, rcpts: true,
			host: map[string]string{
				"smtpd_recipient_restrictions": prev + ", permit_mynetworks, check_policy_service { unix:private/spf, timeout=10s }, reject_unauth_destination",
				"smtpd_data_restrictions":      "reject_unauth_pipelining " + prev,
			},
			wantRcpt: "check_policy_service { inet:127.0.0.1:8895, default_action=DEFER_IF_PERMIT }, permit_mynetworks, check_policy_service { unix:private/spf, timeout=10s }, reject_unauth_destination",
			wantData: "check_policy_service { inet:127.0.0.1:8895, default_action=DEFER_IF_PERMIT }, reject_unauth_pipelining"},
		{name: "chrooted smtpd, socket in the queue directory", listen: "unix:/var/spool/postfix/vipmilter/policy.sock", down: config.MilterDownAccept, chrooted: true, rcpts: true,
			daemons:   map[string]string{"submission/inet": "submission"},
			wantRcpt:  "check_policy_service { unix:/vipmilter/policy.sock, default_action=DUNNO }",
			wantData:  "check_policy_service { unix:/vipmilter/policy.sock, default_action=DUNNO }",
			wantParam: "submission/inet/smtpd_policy_service_policy_context=submission"},
		{name: "DATA only, fresh host", listen: "inet:127.0.0.1:8895", down: config.MilterDownAccept,
			wantData: "check_policy_service { inet:127.0.0.1:8895, default_action=DUNNO }"},
		{name: "DATA only: an earlier run's RCPT entry taken back, the host's kept", listen: "inet:127.0.0.1:8895", down: config.MilterDownAccept,
			host: map[string]string{
				"smtpd_recipient_restrictions": "check_policy_service { inet:127.0.0.1:8895, default_action=DUNNO }, permit_mynetworks, reject_unauth_destination",
				"smtpd_data_restrictions":      "check_policy_service { inet:127.0.0.1:8895, default_action=DUNNO }",
			},
			wantRcpt: "permit_mynetworks, reject_unauth_destination",
			wantData: "check_policy_service { inet:127.0.0.1:8895, default_action=DUNNO }"},
		{name: "DATA only: a RCPT list that held only ours is unset", listen: "inet:127.0.0.1:8895", down: config.MilterDownAccept,
			host:      map[string]string{"smtpd_recipient_restrictions": prev},
			wantData:  "check_policy_service { inet:127.0.0.1:8895, default_action=DUNNO }",
			wantUnset: "smtpd_recipient_restrictions"},
		{name: "smtpd services differ in chroot: a unix socket is refused", listen: "unix:/var/spool/postfix/vipmilter/policy.sock", mixed: true, err: "some smtpd services in master.cf run chrooted and some not"},
		{name: "smtpd services differ in chroot: inet is fine", listen: "inet:127.0.0.1:8895", mixed: true, rcpts: true,
			wantRcpt: "check_policy_service { inet:127.0.0.1:8895, default_action=DUNNO }",
			wantData: "check_policy_service { inet:127.0.0.1:8895, default_action=DUNNO }"},
		{name: "chrooted smtpd, socket outside", listen: "unix:/run/vipmilter/policy.sock", chrooted: true, err: "Policy_Listen \"unix:/run/vipmilter/policy.sock\": smtpd runs chrooted"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := &config.Config{PolicyListen: config.MustParseListen(c.listen), OnMilterDown: c.down}
			h, err := PolicyService(cfg, Options{QueueDir: "/var/spool/postfix", SMTPDChrooted: c.chrooted, SMTPDChrootMixed: c.mixed, PolicyRecipients: c.rcpts}, c.host, prev, c.daemons)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]string{}
			for _, p := range h.Main {
				got[p.Name] = p.Value
			}
			if got["smtpd_recipient_restrictions"] != c.wantRcpt || got["smtpd_data_restrictions"] != c.wantData {
				t.Errorf("got\n rcpt %q\n data %q\nwant\n rcpt %q\n data %q", got["smtpd_recipient_restrictions"], got["smtpd_data_restrictions"], c.wantRcpt, c.wantData)
			}
			if strings.Join(h.Unset, " ") != c.wantUnset {
				t.Errorf("unset %v, want %q", h.Unset, c.wantUnset)
			}
			if h.SMTPDMilter || !h.NonSMTPDMilter {
				t.Errorf("milter in smtpd_milters %v, non_smtpd_milters %v; want false, true (sendmail mail needs it)", h.SMTPDMilter, h.NonSMTPDMilter)
			}
			var params []string
			for _, p := range h.ServiceParams {
				params = append(params, p.Key()+"="+p.Value)
			}
			if strings.Join(params, " ") != c.wantParam {
				t.Errorf("service params %v, want %q", params, c.wantParam)
			}
		})
	}
}

// TestStateChroot: which smtpd services run chrooted, from master.cf's
// chroot column: all, none, or some (then no unix policy socket works).
func TestStateChroot(t *testing.T) {
	svc := func(name, typ, chroot, cmd string) []string {
		return []string{name, typ, "n", "-", chroot, "-", "-", cmd}
	}
	for _, c := range []struct {
		name                          string
		services                      [][]string
		wantChrooted, wantMixed, milt bool
	}{
		{"Debian: all chrooted", [][]string{svc("smtp", "inet", "y", "smtpd"), svc("submission", "inet", "y", "smtpd"), svc("cleanup", "unix", "y", "cleanup")}, true, false, true},
		{"upstream: none chrooted", [][]string{svc("smtp", "inet", "n", "smtpd"), svc("cleanup", "unix", "n", "cleanup")}, false, false, false},
		{"submission not chrooted", [][]string{svc("smtp", "inet", "y", "smtpd"), svc("submission", "inet", "n", "smtpd"), svc("cleanup", "unix", "y", "cleanup")}, false, true, true},
		{"the default chroot (-) is not chrooted", [][]string{svc("smtp", "inet", "-", "smtpd"), svc("127.0.0.1:10025", "inet", "y", "smtpd")}, false, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			st := &State{Services: map[string][]string{}}
			for _, f := range c.services {
				st.Services[f[0]+"/"+f[1]] = f
			}
			o := st.Options()
			if o.SMTPDChrooted != c.wantChrooted || o.SMTPDChrootMixed != c.wantMixed || o.MilterChrooted != c.milt {
				t.Errorf("SMTPDChrooted %v, SMTPDChrootMixed %v, MilterChrooted %v; want %v, %v, %v", o.SMTPDChrooted, o.SMTPDChrootMixed, o.MilterChrooted, c.wantChrooted, c.wantMixed, c.milt)
			}
		})
	}
}
