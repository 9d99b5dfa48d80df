package postfix

import (
	"os/exec"
	"slices"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

// TestRenderDaemonNames: --daemon-name overrides are vipmilter's only when
// a run of it set them (recorded in the stamp); a later run that drops the
// option removes exactly those, and never one the administrator wrote.
func TestRenderDaemonNames(t *testing.T) {
	const (
		milterKey = "submission/inet/milter_macro_daemon_name"
		policyKey = "submission/inet/smtpd_policy_service_policy_context"
	)
	services := map[string][]string{"submission/inet": strings.Fields("submission inet n - y - - smtpd")}
	flag := map[string]string{"submission/inet": "submission"}
	tests := []struct {
		name    string
		hook    config.Hook
		flag    map[string]string
		current map[string]string // master.cf -o overrides now
		prev    map[string]string // the last run's stamp
		set     []string          // overrides the plan renders
		stamped []string          // the stamp's daemon-names line
		drop    []string
		err     string
	}{
		{name: "first run: set and recorded", flag: flag,
			set: []string{milterKey + "=submission"}, stamped: []string{milterKey + "=submission"}},
		{name: "re-run: still recorded", flag: flag, current: map[string]string{milterKey: "submission"}, prev: map[string]string{milterKey: "submission"},
			set: []string{milterKey + "=submission"}, stamped: []string{milterKey + "=submission"}},
		{name: "option dropped: removed", current: map[string]string{milterKey: "submission"}, prev: map[string]string{milterKey: "submission"},
			drop: []string{milterKey}},
		{name: "option dropped, value changed by hand since: kept", current: map[string]string{milterKey: "msa"}, prev: map[string]string{milterKey: "submission"}},
		{name: "option dropped, override already gone", prev: map[string]string{milterKey: "submission"}},
		{name: "the administrator's own, no option: untouched", current: map[string]string{milterKey: "submission"}},
		{name: "the administrator's own, same value: not recorded", flag: flag, current: map[string]string{milterKey: "submission"},
			set: []string{milterKey + "=submission"}},
		{name: "the administrator's own, other value: refused", flag: flag, current: map[string]string{milterKey: "msa"},
			err: "already sets milter_macro_daemon_name=msa (not set by vipmilter)"},
		{name: "ours, changed by hand, option still given: set again", flag: flag, current: map[string]string{milterKey: "msa"}, prev: map[string]string{milterKey: "submission"},
			set: []string{milterKey + "=submission"}, stamped: []string{milterKey + "=submission"}},
		{name: "policy hook: both overrides recorded", hook: config.HookPolicy, flag: flag,
			set: []string{milterKey + "=submission", policyKey + "=submission"}, stamped: []string{milterKey + "=submission", policyKey + "=submission"}},
		{name: "policy hook to milter hook: the policy context goes", hook: config.HookMilter, flag: flag,
			current: map[string]string{milterKey: "submission", policyKey: "submission"}, prev: map[string]string{milterKey: "submission", policyKey: "submission"},
			set: []string{milterKey + "=submission"}, stamped: []string{milterKey + "=submission"}, drop: []string{policyKey}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := Options{ConfigDir: "/etc/postfix", Key: testKey, Hook: tt.hook, Services: services,
				ServiceParams: tt.current, DaemonNames: tt.flag, PrevDaemonNames: tt.prev}
			plan := renderOne(t, opts, tt.err)
			if plan == nil {
				return
			}
			var set []string
			for _, p := range plan.ServiceParams {
				if slices.Contains(daemonNameParams, p.Name) {
					set = append(set, p.Key()+"="+p.Value)
				}
			}
			stamped := strings.Fields(stampField(tableContent(plan, StampFile), "daemon-names"))
			if !slices.Equal(set, tt.set) || !slices.Equal(stamped, tt.stamped) || !slices.Equal(plan.DropParams, tt.drop) {
				t.Fatalf("set %q, stamped %q, dropped %q;\nwant %q, %q, %q", set, stamped, plan.DropParams, tt.set, tt.stamped, tt.drop)
			}
		})
	}
}

// TestApplyDaemonNamesIdempotent: on a private Postfix, runs with and
// without --daemon-name each change master.cf once, a repeated run changes
// nothing, and the administrator's own override survives every run.
func TestApplyDaemonNamesIdempotent(t *testing.T) {
	needPostfix(t)
	dir := privateDir(t, "")
	// Two smtpd services: "submission" gets the option, "smtps" carries the
	// administrator's own setting.
	for _, svc := range []string{
		"submission/inet=submission inet n - n - - smtpd",
		"smtps/inet=smtps inet n - n - - smtpd -o milter_macro_daemon_name=mine",
	} {
		if out, err := exec.Command("postconf", "-c", dir, "-Me", svc).CombinedOutput(); err != nil {
			t.Fatalf("postconf -Me %s: %v %s", svc, err, out)
		}
	}
	cfg := testConfig(binding("a", "127.0.0.2"))
	const ours, theirs = "submission/inet/milter_macro_daemon_name = submission", "smtps/inet/milter_macro_daemon_name = mine"
	steps := []struct {
		name    string
		names   map[string]string
		changed bool
		has     bool // ours present afterwards
	}{
		{"without the option", nil, true, false},
		{"option given", map[string]string{"submission/inet": "submission"}, true, true},
		{"option given again", map[string]string{"submission/inet": "submission"}, false, true},
		{"the administrator's value passed as is", map[string]string{"submission/inet": "submission", "smtps/inet": "mine"}, false, true},
		{"option dropped", nil, true, false},
		{"option dropped again", nil, false, false},
	}
	for _, s := range steps {
		res, out := applyWith(t, dir, cfg, func(o *Options) { o.DaemonNames = s.names })
		if changed := len(res.Changes) > 0; changed != s.changed {
			t.Fatalf("%s: changes %q, want changed=%v\n%s", s.name, res.Changes, s.changed, out)
		}
		p := postconfP(t, dir)
		if strings.Contains(p, ours) != s.has || !strings.Contains(p, theirs) {
			t.Fatalf("%s: want ours=%v and the administrator's kept:\n%s", s.name, s.has, p)
		}
	}
}
