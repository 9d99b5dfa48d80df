package config

import (
	"strings"
	"testing"
)

func TestPolicySettings(t *testing.T) {
	for _, c := range []struct {
		src        string
		hook       Hook
		listen     string
		errContain string
	}{
		{src: "", hook: HookAuto, listen: DefaultPolicyListen},
		{src: "Hook = POLICY\nPolicy_Listen = unix:/var/spool/postfix/private/vipmilter-policy", hook: HookPolicy, listen: "unix:/var/spool/postfix/private/vipmilter-policy"},
		{src: "Hook = milter\nPolicy_Listen = inet6:[::1]:8895", hook: HookMilter, listen: "inet:[::1]:8895"},
		{src: "Hook = none", errContain: `t.conf:1:8: Hook: "none": want auto, milter or policy`},
		{src: "Policy_Listen = unix:relative", errContain: "t.conf:1:17: Policy_Listen:"},
	} {
		cfg, err := Parse("t.conf", []byte(c.src))
		if c.errContain != "" {
			if err == nil || !strings.Contains(err.Error(), c.errContain) {
				t.Errorf("%q: error %v, want one containing %q", c.src, err, c.errContain)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q: %v", c.src, err)
			continue
		}
		if cfg.Hook != c.hook || cfg.PolicyListen.String() != c.listen {
			t.Errorf("%q: Hook %q, Policy_Listen %q; want %q, %q", c.src, cfg.Hook, cfg.PolicyListen, c.hook, c.listen)
		}
	}
}
