package policyd

import (
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

func TestChooseHook(t *testing.T) {
	for _, c := range []struct {
		name, script, hook string
		want               config.Hook
		why                string // in the reason, or in the error when want is ""
	}{
		{"Match_Domain only", "", "", config.HookNone, "sender_dependent_default_transport_maps"},
		{"envelope and environment", testScript, "", config.HookPolicy, "envelope and the connection"},
		{"header test", `require "variables"; if header :is "X-Campaign" "a" { set "binding" "News"; }`, "", config.HookMilter, "reads headers"},
		{"exists", `require "variables"; if exists "List-Id" { set "binding" "News"; }`, "", config.HookMilter, "reads headers"},
		{"body", `require ["body", "variables"]; if body :contains "x" { set "binding" "News"; }`, "", config.HookMilter, "the body"},
		{"size", `require "variables"; if size :over 1M { set "binding" "News"; }`, "", config.HookMilter, "the message size"},
		{"forced milter", testScript, "Hook = milter", config.HookMilter, "forces"},
		{"forced policy", testScript, "Hook = policy", config.HookPolicy, "forces"},
		{"forced policy without a script", "", "Hook = policy", config.HookPolicy, "forces"},
		{"forced policy on a header script", `require "variables"; if header :is "X-C" "a" { set "binding" "News"; }`, "Hook = policy", "", "reads headers"},
	} {
		t.Run(c.name, func(t *testing.T) {
			pol := testPolicy(t, c.script, c.hook)
			hook, why, err := ChooseHook(pol.Config(), pol.Needs())
			if c.want == "" {
				if err == nil || !strings.Contains(err.Error(), c.why) || !strings.Contains(err.Error(), "t.conf") {
					t.Fatalf("got %q (%s), err %v; want an error naming the file and %q", hook, why, err, c.why)
				}
				return
			}
			if err != nil || hook != c.want || !strings.Contains(why, c.why) {
				t.Fatalf("got %q (%s), err %v; want %q with %q", hook, why, err, c.want, c.why)
			}
		})
	}
}
