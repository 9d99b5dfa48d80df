package sieve

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

// testConfig loads a binding file with bindings "default" (optional), A
// (Match_Domain a.example), B, C, and sticky group G {G1 weight 3, G2}.
func testConfig(t testing.TB, script string, withDefault bool, onErr config.PolicyErrorAction) *config.Config {
	t.Helper()
	var f strings.Builder
	fmt.Fprintf(&f, "On_Policy_Error = %s\nMax_Body_Bytes = 1048576\n", onErr)
	if withDefault {
		f.WriteString(`Binding "default" { Bind_Address = 192.0.2.1 }` + "\n")
	}
	f.WriteString(`Binding "A" { Bind_Address = 192.0.2.2  Match_Domain = a.example }
Binding "B" { Bind_Address = 192.0.2.3 }
Binding "C" { Bind_Address = 192.0.2.4 }
Binding_Group "G" {
  Selection = sticky
  Binding "G1" { Bind_Address = 192.0.2.5  Weight = 3 }
  Binding "G2" { Bind_Address = 192.0.2.6 }
}
`)
	return loadConfig(t, f.String(), script)
}

// loadConfig writes a binding file (and the script it then names) and
// loads it as vipmilter does.
func loadConfig(t testing.TB, bindings, script string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	if script != "" {
		if err := os.WriteFile(filepath.Join(dir, "policy.sieve"), []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		bindings = "Sieve_Script = \"policy.sieve\"\n" + bindings
	}
	path := filepath.Join(dir, "vipmilter.conf")
	if err := os.WriteFile(path, []byte(bindings), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		t.Fatalf("binding file: %v", err)
	}
	return cfg
}

func mustPolicy(t testing.TB, cfg *config.Config, opts Options) *Policy {
	t.Helper()
	p, err := New(cfg, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return p
}

func rules(d Decision) string {
	var s []string
	for _, st := range d.Trace {
		s = append(s, st.Rule)
	}
	return strings.Join(s, ",")
}

const req = `require ["envelope", "variables", "environment", "body", "relational", "reject", "ereject"];` + "\n"

func TestDecide(t *testing.T) {
	hdr := textproto.MIMEHeader{"Subject": {"hello kw7"}, "List-Id": {"<l.example>"}, "Content-Type": {"text/plain"}}
	base := Message{From: "x@a.example", To: []string{"r@dest.example"}, Auth: "alice", RemoteIP: "127.0.0.9",
		RemoteHost: "client.example", Helo: "helo.example", QueueID: "4ABC", Daemon: "submission",
		Header: hdr, Size: 1234, Body: []byte("buy now\n")}
	host, _ := os.Hostname()
	tests := []struct {
		name        string
		script      string
		noDefault   bool
		onErr       config.PolicyErrorAction
		edit        func(m *Message)
		wantBinding string
		wantReason  Reason
		wantAction  Action
		wantRules   string
	}{
		{name: "script beats match_domain", script: req + `set "binding" "B";`, wantBinding: "B", wantReason: ReasonScript, wantRules: "script"},
		{name: "match_domain when script silent", script: req + `if false { set "binding" "B"; }`, wantBinding: "A", wantReason: ReasonMatchDomain, wantRules: "match_domain"},
		{name: "match_domain case-insensitive", edit: func(m *Message) { m.From = "x@A.Example" }, wantBinding: "A", wantReason: ReasonMatchDomain, wantRules: "match_domain"},
		{name: "fallback declared", edit: func(m *Message) { m.From = "x@other.example" }, wantBinding: "default", wantReason: ReasonFallback, wantRules: "fallback"},
		{name: "fallback undeclared", noDefault: true, edit: func(m *Message) { m.From = "" }, wantBinding: "default", wantReason: ReasonFallback, wantRules: "fallback"},
		{name: "list of one with spaces", script: req + `set "binding" " B , ";`, wantBinding: "B", wantReason: ReasonScript, wantRules: "script,list"},
		{name: "group by name", script: req + `set "binding" "G";`, wantBinding: "", wantReason: ReasonScript, wantRules: "script,group"},
		{name: "envelope auth", script: req + `if envelope :is "auth" "alice" { set "binding" "B"; }`, wantBinding: "B", wantReason: ReasonScript, wantRules: "script"},
		{name: "envelope from domain", script: req + `if envelope :domain :is "from" "a.example" { set "binding" "C"; }`, wantBinding: "C", wantReason: ReasonScript, wantRules: "script"},
		{name: "envelope to", script: req + `if envelope :is "to" "r@dest.example" { set "binding" "C"; }`, wantBinding: "C", wantReason: ReasonScript, wantRules: "script"},
		{name: "header contains", script: req + `if header :contains "Subject" "kw7" { set "binding" "B"; }`, wantBinding: "B", wantReason: ReasonScript, wantRules: "script"},
		{name: "exists", script: req + `if exists "List-Id" { set "binding" "B"; }`, wantBinding: "B", wantReason: ReasonScript, wantRules: "script"},
		{name: "exists missing", script: req + `if exists "X-None" { set "binding" "B"; }`, wantBinding: "A", wantReason: ReasonMatchDomain, wantRules: "match_domain"},
		{name: "size over", script: req + `if size :over 1000 { set "binding" "B"; }`, wantBinding: "B", wantReason: ReasonScript, wantRules: "script"},
		{name: "size under", script: req + `if size :under 1000 { set "binding" "B"; }`, wantBinding: "A", wantReason: ReasonMatchDomain, wantRules: "match_domain"},
		{name: "body", script: req + `if body :contains "buy now" { set "binding" "C"; }`, wantBinding: "C", wantReason: ReasonScript, wantRules: "script"},
		{name: "reject", script: req + `reject "no thanks";`, wantReason: ReasonReject, wantAction: Reject, wantRules: "script"},
		{name: "ereject", script: req + `ereject "go away";`, wantReason: ReasonReject, wantAction: Reject, wantRules: "script"},
		{name: "keep is a no-op", script: req + `keep; set "binding" "B";`, wantBinding: "B", wantReason: ReasonScript, wantRules: "script"},
		{name: "unknown name default", script: req + `set "x" "Nope"; set "binding" "${x}";`, onErr: config.PolicyErrorDefault, wantBinding: "default", wantReason: ReasonPolicyError, wantRules: "script,error,fallback"},
		{name: "unknown name tempfail", script: req + `set "x" "Nope"; set "binding" "${x}";`, onErr: config.PolicyErrorTempfail, wantReason: ReasonPolicyError, wantAction: Tempfail, wantRules: "script,error"},
		{name: "runtime error default", script: req + `if envelope "${x}" "y" { set "binding" "B"; }`, onErr: config.PolicyErrorDefault, wantBinding: "default", wantReason: ReasonPolicyError, wantRules: "error,fallback"},
		{name: "runtime error tempfail", script: req + `if envelope "${x}" "y" { set "binding" "B"; }`, onErr: config.PolicyErrorTempfail, wantReason: ReasonPolicyError, wantAction: Tempfail, wantRules: "error"},
	}
	envItems := map[string]string{
		"remote-ip": "127.0.0.9", "remote-host": "client.example", "host": host, "name": "vipmilter",
		"version": buildVersion(), "phase": "during", "vnd.vipmilter.helo": "helo.example",
		"vnd.vipmilter.queue-id": "4ABC", "vnd.vipmilter.daemon": "submission",
	}
	if _, d, ok := strings.Cut(host, "."); ok {
		envItems["domain"] = d
	}
	for item, val := range envItems {
		tests = append(tests, struct {
			name        string
			script      string
			noDefault   bool
			onErr       config.PolicyErrorAction
			edit        func(m *Message)
			wantBinding string
			wantReason  Reason
			wantAction  Action
			wantRules   string
		}{name: "environment " + item, script: req + fmt.Sprintf(`if environment :is %q %q { set "binding" "C"; }`, item, val),
			wantBinding: "C", wantReason: ReasonScript, wantRules: "script"})
	}
	tests = append(tests, struct {
		name        string
		script      string
		noDefault   bool
		onErr       config.PolicyErrorAction
		edit        func(m *Message)
		wantBinding string
		wantReason  Reason
		wantAction  Action
		wantRules   string
	}{name: "unknown environment item not present", script: req + `if environment :count "ge" :comparator "i;ascii-numeric" "vnd.other" "1" { set "binding" "C"; }`,
		wantBinding: "A", wantReason: ReasonMatchDomain, wantRules: "match_domain"})

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			onErr := tt.onErr
			if onErr == "" {
				onErr = config.PolicyErrorDefault
			}
			p := mustPolicy(t, testConfig(t, tt.script, !tt.noDefault, onErr), Options{})
			m := base
			if tt.edit != nil {
				tt.edit(&m)
			}
			d := p.Decide(context.Background(), &m)
			if tt.wantBinding != "" && d.Binding != tt.wantBinding {
				t.Errorf("binding = %q, want %q (trace %+v)", d.Binding, tt.wantBinding, d.Trace)
			}
			if tt.wantBinding == "" && tt.wantReason == ReasonScript && d.Group != "G" {
				t.Errorf("group = %q, want G (trace %+v)", d.Group, d.Trace)
			}
			if d.Reason != tt.wantReason || d.Action != tt.wantAction {
				t.Errorf("reason/action = %s/%d, want %s/%d (trace %+v)", d.Reason, d.Action, tt.wantReason, tt.wantAction, d.Trace)
			}
			if got := rules(d); got != tt.wantRules {
				t.Errorf("trace rules = %q, want %q (%+v)", got, tt.wantRules, d.Trace)
			}
			if (d.Reason == ReasonPolicyError) != (d.Err != nil) {
				t.Errorf("Err = %v with reason %s", d.Err, d.Reason)
			}
			if d.Action == Reject && d.RejectText == "" {
				t.Errorf("reject without text")
			}
		})
	}
}

func TestCommaListPicksEveryEntry(t *testing.T) {
	p := mustPolicy(t, testConfig(t, req+`set "binding" "B, C,G";`, true, config.PolicyErrorDefault), Options{})
	seen := map[string]int{}
	for range 300 {
		d := p.Decide(context.Background(), &Message{From: "x@z.example", To: []string{"r@d.example"}})
		if d.Reason != ReasonScript {
			t.Fatalf("reason %s: %+v", d.Reason, d.Trace)
		}
		key := d.Binding
		if d.Group != "" {
			key = d.Group
		}
		seen[key]++
	}
	for _, want := range []string{"B", "C", "G"} {
		if seen[want] < 50 {
			t.Errorf("entry %s picked %d/300 times, want about 100 (%v)", want, seen[want], seen)
		}
	}
}

type deadSet map[string]bool

func (s deadSet) Live(b *config.Binding) bool { return !s[b.Name] }

func TestGroups(t *testing.T) {
	tests := []struct {
		name      string
		selection config.Selection
		suspend   string
		dead      deadSet
		wantOnly  string // every pick must be this member; "" = no constraint
		wantShare float64
		wantTrace string
	}{
		{name: "sticky weights", selection: config.SelectSticky, wantShare: 0.75},
		{name: "random weights", selection: config.SelectRandom, wantShare: 0.75},
		{name: "round_robin weights", selection: config.SelectRoundRobin, wantShare: 0.75},
		{name: "suspended skipped", selection: config.SelectSticky, suspend: "G1", wantOnly: "G2", wantTrace: "G1 (suspended)"},
		{name: "not live skipped", selection: config.SelectRandom, dead: deadSet{"G2": true}, wantOnly: "G1", wantTrace: "G2 (address not on host)"},
		{name: "all suspended picks among all", selection: config.SelectRoundRobin, suspend: "G1,G2", wantShare: 0.75, wantTrace: "picked among all"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, req+`set "binding" "G";`, true, config.PolicyErrorDefault)
			cfg.Groups[0].Selection = tt.selection
			for name := range strings.SplitSeq(tt.suspend, ",") {
				if name != "" {
					cfg.Binding(name).SuspendDelivery = true
				}
			}
			var opts Options
			if tt.dead != nil {
				opts.Liveness = tt.dead
			}
			p := mustPolicy(t, cfg, opts)
			const n = 4000
			g1 := 0
			for i := range n {
				d := p.Decide(context.Background(), &Message{From: "x@z.example", To: []string{fmt.Sprintf("r@d%d.example", i)}})
				if d.Group != "G" {
					t.Fatalf("group %q: %+v", d.Group, d.Trace)
				}
				if tt.wantOnly != "" && d.Binding != tt.wantOnly {
					t.Fatalf("picked %s, want only %s", d.Binding, tt.wantOnly)
				}
				if tt.wantTrace != "" && !strings.Contains(d.Trace[len(d.Trace)-1].Detail, tt.wantTrace) {
					t.Fatalf("trace %q lacks %q", d.Trace[len(d.Trace)-1].Detail, tt.wantTrace)
				}
				if d.Binding == "G1" {
					g1++
				}
			}
			if tt.wantShare > 0 {
				share := float64(g1) / n
				if share < tt.wantShare-0.05 || share > tt.wantShare+0.05 {
					t.Errorf("G1 share %.3f, want %.2f±0.05 (weights 3:1)", share, tt.wantShare)
				}
			}
		})
	}
}

func TestStickyIsStable(t *testing.T) {
	cfg := testConfig(t, req+`set "binding" "G";`, true, config.PolicyErrorDefault)
	p1 := mustPolicy(t, cfg, Options{})
	p2 := mustPolicy(t, cfg, Options{})
	for i := range 200 {
		dom := fmt.Sprintf("d%d.example", i)
		a := p1.Decide(context.Background(), &Message{To: []string{"a@" + dom, "x@other.example"}})
		b := p2.Decide(context.Background(), &Message{To: []string{"b@" + strings.ToUpper(dom)}})
		if a.Binding != b.Binding {
			t.Fatalf("domain %s: %s then %s", dom, a.Binding, b.Binding)
		}
	}
	// Suspending G2 must move only G2's domains: G1's stay put.
	before := map[string]string{}
	for i := range 200 {
		dom := fmt.Sprintf("d%d.example", i)
		before[dom] = p1.Decide(context.Background(), &Message{To: []string{"a@" + dom}}).Binding
	}
	cfg.Binding("G2").SuspendDelivery = true
	for dom, was := range before {
		after := p1.Decide(context.Background(), &Message{To: []string{"a@" + dom}}).Binding
		if after != "G1" || (was == "G1") != (after == was) {
			t.Errorf("domain %s: %s before suspending G2, %s after", dom, was, after)
		}
	}
}

func TestSplit(t *testing.T) {
	tests := []struct {
		name      string
		script    string
		to        []string
		wantSplit bool
		wantBind  string
	}{
		{name: "same binding", script: req + `if envelope :domain :is "to" ["x.example", "y.example"] { set "binding" "B"; }`, to: []string{"a@x.example", "b@y.example"}, wantBind: "B"},
		{name: "different binding", script: req + `if envelope :domain :is "to" "x.example" { set "binding" "B"; }`, to: []string{"a@x.example", "b@y.example"}, wantSplit: true, wantBind: "B"},
		{name: "first decides", script: req + `if envelope :domain :is "to" "y.example" { set "binding" "B"; }`, to: []string{"a@x.example", "b@y.example"}, wantSplit: true, wantBind: "A"},
		{name: "via variable", script: req + `if string :is "${envelope.to}" "a@x.example" { set "binding" "C"; }`, to: []string{"a@x.example", "b@y.example"}, wantSplit: true, wantBind: "C"},
		{name: "script ignores to", script: req + `set "binding" "B";`, to: []string{"a@x.example", "b@y.example"}, wantBind: "B"},
		// Sticky members by recipient domain (rendezvous, G1 weight 3):
		// d1 and d2 go to G1, d5 to G2.
		{name: "sticky group, domains on different members", script: req + `set "binding" "G";`, to: []string{"a@d1.example", "b@d5.example"}, wantSplit: true, wantBind: "G1"},
		{name: "sticky group, domains on one member", script: req + `set "binding" "G";`, to: []string{"a@d1.example", "b@d2.example"}, wantBind: "G1"},
		{name: "sticky group, one domain two spellings", script: req + `set "binding" "G";`, to: []string{"a@d5.example", "b@D5.Example."}, wantBind: "G2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPolicy(t, testConfig(t, tt.script, true, config.PolicyErrorDefault), Options{})
			d := p.Decide(context.Background(), &Message{From: "s@a.example", To: tt.to})
			if d.Split != tt.wantSplit || d.Binding != tt.wantBind {
				t.Errorf("split/binding = %v/%s, want %v/%s (%+v)", d.Split, d.Binding, tt.wantSplit, tt.wantBind, d.Trace)
			}
			if tt.wantSplit && !strings.Contains(rules(d), "recipients") {
				t.Errorf("no recipients step: %+v", d.Trace)
			}
		})
	}
}

func TestLoadErrorsAndNeeds(t *testing.T) {
	tests := []struct {
		name    string
		script  string
		wantErr string
		want    Needs
		readsTo bool
	}{
		{name: "discard refused", script: req + "\nif true {\n  discard;\n}", wantErr: "policy.sieve:4:3: discard would lose mail"},
		{name: "redirect refused", script: req + `redirect "a@b.example";`, wantErr: "policy.sieve:2:1: redirect"},
		{name: "fileinto refused", script: `require "fileinto"; fileinto "x";`, wantErr: "policy.sieve:1:21: fileinto"},
		{name: "syntax error", script: req + "if header \"a\" {\n", wantErr: "policy.sieve:"},
		{name: "unknown command", script: req + "frobnicate;", wantErr: "policy.sieve:2:1:"},
		{name: "missing require", script: `set "binding" "B";`, wantErr: `policy.sieve:1:1: command "set" needs require "variables"`},
		{name: "unsupported extension", script: `require ["variables", "vacation"];`, wantErr: `policy.sieve:1:9: extension "vacation" is not supported`},
		{name: "undeclared binding", script: req + `set "binding" "Nope";`, wantErr: `policy.sieve:2:15: binding "Nope" is not declared`},
		{name: "typo names the closest", script: req + "if true {\n  set \"binding\" \"g1\";\n}", wantErr: `policy.sieve:3:17: binding "g1" is not declared in vipmilter.conf (did you mean "G1"?)`},
		{name: "each list member", script: req + `set "binding" "B, Cc";`, wantErr: `policy.sieve:2:15: binding "Cc" is not declared in vipmilter.conf (did you mean "C"?)`},
		{name: "tag without extension", script: `require "envelope"; if envelope :count "eq" "from" "1" { keep; }`, wantErr: `policy.sieve:1:33: tag :count needs require "relational"`},
		{name: "unknown test", script: req + `if frob "x" { keep; }`, wantErr: `policy.sieve:2:4: unknown test "frob"`},
		{name: "interpreter wording replaced", script: req + `if header :frob "a" "b" { keep; }`, wantErr: `policy.sieve:2:11: unknown tag :frob`},
		{name: "string never closed", script: req + "set \"binding\" \"B;\n", wantErr: `policy.sieve:2:15: string is never closed`},
		{name: "comment never closed", script: req + "/* note\nset \"binding\" \"B\";\n", wantErr: `policy.sieve:2:1: comment is never closed`},
		{name: "text never closed", script: req + "set \"binding\" text:\nB\n", wantErr: `policy.sieve:2:15: text: is never closed`},
		{name: "lone CR", script: req + "keep;\rkeep;\n", wantErr: `policy.sieve:2:6: CR not followed by LF`},
		{name: "stray character", script: req + "keep; @\n", wantErr: `policy.sieve:2:7: unexpected character '@'`},
		{name: "quote forgotten earlier", script: req + "if exists \"List-Id {\n  set \"binding\" \"B\";\n}\nif header :contains \"Subject\" \"x.y\" { keep; }\n",
			wantErr: `policy.sieve:5:33: unexpected character '.' (the string opened at line 2, column 11 runs over several lines: is a closing " missing there?)`},
		{name: "block never closed", script: req + "if true {\n  if false { keep; }\n", wantErr: `policy.sieve:2:9: "{" is never closed`},
		// go-sieve would silently drop everything after a stray "}".
		{name: "stray closing brace", script: req + "keep; }\nset \"binding\" \"B\";\n", wantErr: `policy.sieve:2:7: unexpected "}": nothing to close here`},
		{name: "name as a list", script: req + `set ["binding"] "Nope";`, wantErr: `policy.sieve:2:17: binding "Nope" is not declared`},
		{name: "variable value checked at run time", script: req + `set "x" "Nope"; set "binding" "${x}";`},
		{name: "addflag allowed", script: `require "imap4flags"; addflag "x";`},
		{name: "headers", script: req + `if address :domain "From" "x" { keep; }`, want: Needs{Headers: true}},
		{name: "body", script: req + `if body :contains "x" { keep; }`, want: Needs{Body: true, Headers: true}}, // :text picks parts by Content-Type
		{name: "raw body", script: req + `if body :raw :contains "x" { keep; }`, want: Needs{Body: true}},
		{name: "size", script: req + `if size :over 10 { keep; }`, want: Needs{Size: true}},
		{name: "envelope only", script: req + `if envelope "from" "x" { keep; }`, want: Needs{}},
		{name: "envelope to", script: req + `if anyof(false, envelope "to" "x") { keep; }`, readsTo: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := testConfig(t, tt.script, true, config.PolicyErrorDefault)
			p, err := New(cfg, Options{})
			if tt.wantErr != "" {
				// Errors name the files as the binding file does (absolute
				// here), so they open from wherever the command ran.
				dir := filepath.Dir(cfg.File) + string(filepath.Separator)
				if err == nil || !strings.HasPrefix(err.Error(), dir) || !strings.HasPrefix(strings.ReplaceAll(err.Error(), dir, ""), tt.wantErr) || strings.Contains(strings.ReplaceAll(err.Error(), dir, ""), "Load") {
					t.Fatalf("err = %v, want prefix %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			// testConfig's sticky group G picks by recipient domain.
			tt.want.Recipients = true
			if p.Needs() != tt.want || p.readsTo != tt.readsTo {
				t.Errorf("needs %+v readsTo %v, want %+v %v", p.Needs(), p.readsTo, tt.want, tt.readsTo)
			}
		})
	}
	p, err := New(testConfig(t, "", true, config.PolicyErrorDefault), Options{})
	if err != nil || p.Needs() != (Needs{Recipients: true}) {
		t.Errorf("no script: %v %+v", err, p)
	}
	cfg := testConfig(t, "", true, config.PolicyErrorDefault)
	cfg.SieveScript = filepath.Join(t.TempDir(), "missing.sieve")
	if _, err := New(cfg, Options{}); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing script: %v", err)
	}
}

// TestGroupNoMemberCanSend: when every member is suspended or lacks its
// address, and at least one lacks its address, the message follows
// On_Policy_Error instead of waiting behind an address that may never
// come back.
func TestGroupNoMemberCanSend(t *testing.T) {
	for _, tt := range []struct {
		onErr   config.PolicyErrorAction
		binding string
		action  Action
	}{
		{config.PolicyErrorDefault, "default", Accept},
		{config.PolicyErrorTempfail, "", Tempfail},
	} {
		t.Run(string(tt.onErr), func(t *testing.T) {
			cfg := testConfig(t, `require "variables"; set "binding" "G";`, true, tt.onErr)
			cfg.Binding("G1").SuspendDelivery = true
			p := mustPolicy(t, cfg, Options{Liveness: deadSet{"G2": true}})
			d := p.Decide(context.Background(), &Message{From: "x@z.example", To: []string{"r@d.example"}})
			if d.Binding != tt.binding || d.Action != tt.action || d.Reason != ReasonPolicyError {
				t.Fatalf("got binding %q action %v reason %s; want %q %v policy_error\n%+v", d.Binding, d.Action, d.Reason, tt.binding, tt.action, d.Trace)
			}
			if d.Unavailable != 1 {
				t.Errorf("Decision.Unavailable = %d, want 1", d.Unavailable)
			}
			if p.missing.Load() != 1 {
				t.Errorf("missing = %d, want 1", p.missing.Load())
			}
		})
	}
}

// TestLogsThroughOptionsLog: the policy's own lines go to the logger it
// is given, in that logger's format.
func TestLogsThroughOptionsLog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	cfg := testConfig(t, req+`set "binding" "G";`, true, config.PolicyErrorDefault)
	cfg.Binding("G1").SuspendDelivery = true
	p := mustPolicy(t, cfg, Options{Log: log})
	p.Decide(context.Background(), &Message{From: "x@z.example", To: []string{"r@d.example"}})
	var line struct{ Msg, Group string }
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil || line.Msg != "group members skipped" || line.Group != "G" {
		t.Errorf("log %q (%v), want one JSON line about group G", buf.String(), err)
	}
}

// TestReadsHeader: the policy names the header fields its script can read,
// so the milter can drop the others; a name it cannot know before the run
// means every field.
func TestReadsHeader(t *testing.T) {
	tests := []struct {
		name   string
		script string
		reads  []string // answered true, in any letter case
		skips  []string // answered false
	}{
		{"no script", "", nil, []string{"Subject", "From", "Content-Type"}},
		{"envelope only", req + `if envelope :domain "from" "x.example" { set "binding" "B"; }`, nil, []string{"From", "To", "Subject"}},
		{"header", req + `if header :contains "Subject" "x" { set "binding" "B"; }`, []string{"Subject", "subject", "SUBJECT"}, []string{"From", "Received", "X-Subject", "Content-Type"}},
		{"header list", req + `if header :is ["X-Tag", "List-Id"] "x" { keep; }`, []string{"x-tag", "List-ID"}, []string{"Subject"}},
		{"comparator value is no field", req + `if header :comparator "i;octet" :is "X-Tag" "x" { keep; }`, []string{"X-Tag"}, []string{"i;octet", "x"}},
		{"relational value is no field", req + `if header :count "ge" :comparator "i;ascii-numeric" "Received" "3" { keep; }`, []string{"Received"}, []string{"ge", "3"}},
		{"keys are no fields", req + `if header :is "X-Tag" "Subject" { keep; }`, []string{"X-Tag"}, []string{"Subject"}},
		{"address", req + `if address :domain :is ["From", "Sender"] "x.example" { keep; }`, []string{"From", "Sender"}, []string{"To"}},
		{"exists", req + `if exists "List-Unsubscribe" { keep; }`, []string{"List-Unsubscribe"}, []string{"Subject"}},
		{"nested in anyof and not", req + `if anyof(not header :is "A" "1", exists "B") { keep; }`, []string{"A", "B"}, []string{"C"}},
		{"body by type reads Content-Type", req + `if body :content "text" :contains "x" { keep; }`, []string{"Content-Type"}, []string{"Subject"}},
		{"raw body reads no field", req + `if body :raw :contains "x" { keep; }`, nil, []string{"Content-Type"}},
		{"variable name reads all", req + `set "h" "Subject"; if header :is "${h}" "x" { keep; }`, []string{"Subject", "Anything"}, nil},
		{"encoded character reads all", `require ["encoded-character"]; if exists "${hex:41}" { keep; }`, []string{"A", "Anything"}, nil},
		{"variable key reads only the name", req + `set "k" "x"; if header :is "X-Tag" "${k}" { keep; }`, []string{"X-Tag"}, []string{"Subject"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := New(testConfig(t, tt.script, true, config.PolicyErrorDefault), Options{})
			if err != nil {
				t.Fatal(err)
			}
			for _, h := range tt.reads {
				if !p.ReadsHeader(h) {
					t.Errorf("ReadsHeader(%q) = false, want true", h)
				}
			}
			for _, h := range tt.skips {
				if p.ReadsHeader(h) {
					t.Errorf("ReadsHeader(%q) = true, want false", h)
				}
			}
		})
	}
}

// TestSplitBound: split detection re-runs the script per distinct
// recipient, within MaxSplitRecipients and, for body tests that must be
// evaluated on every run, MaxSplitBodyBytes; body tests with constant keys
// are evaluated once per message and do not limit it. Where it stops
// without an answer the decision is still the first recipient's, Split is
// false and SplitUnknown true, and the trace says why.
func TestSplitBound(t *testing.T) {
	const constBody = req + `if body :contains "PROMO" { set "binding" "C"; stop; }
if envelope :domain :is "to" "b.example" { set "binding" "B"; }`
	const varBody = req + `set "k" "PROMO";
if body :contains "${k}" { set "binding" "C"; stop; }
if envelope :domain :is "to" "b.example" { set "binding" "B"; }`
	const envOnly = req + `if envelope :domain :is "to" "b.example" { set "binding" "B"; }`
	big := bytes.Repeat([]byte("0123456789abcdef\r\n"), (1<<20)/18)
	promo := append(bytes.Clone(big), "PROMO\r\n"...)
	small := []byte("hello\r\n")
	// rcpts returns n recipients in distinct domains, b.example at index
	// at (none when at < 0).
	rcpts := func(n, at int) []string {
		var to []string
		for i := range n {
			to = append(to, fmt.Sprintf("r@d%d.example", i))
		}
		if at >= 0 {
			to[at] = "r@b.example"
		}
		return to
	}
	runs := MaxSplitBodyBytes / len(big) // re-runs the budget allows
	tests := []struct {
		name           string
		script         string
		body           []byte
		to             []string
		binding        string
		split, unknown bool
		trace          string
	}{
		{"constant body test: every recipient placed", constBody, big, rcpts(50, -1), "default", false, false, ""},
		{"constant body test: split found at the last", constBody, big, rcpts(50, 49), "default", true, false, "r@b.example would get B"},
		{"variable body key: split within the budget", varBody, big, rcpts(50, runs), "default", true, false, "r@b.example would get B"},
		{"variable body key: cut by the body budget", varBody, big, rcpts(50, runs+1), "default", false, true, "MaxSplitBodyBytes: 4 runs"},
		{"variable body key: first recipient's match decides", varBody, promo, rcpts(50, -1), "C", false, true, "get C, as the message does"},
		{"variable body key, small body: every recipient placed", varBody, small, rcpts(50, 49), "default", true, false, "r@b.example would get B"},
		{"envelope only: cut by MaxSplitRecipients", envOnly, nil, rcpts(60, 55), "default", false, true, "MaxSplitRecipients, 50 distinct recipients"},
		{"envelope only: repeats are no new recipients", envOnly, nil, append(rcpts(50, -1), "r@d1.example", "r@D2.example"), "default", false, false, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPolicy(t, testConfig(t, tt.script, true, config.PolicyErrorDefault), Options{})
			d := p.Decide(context.Background(), &Message{From: "s@x.example", To: tt.to, Body: tt.body})
			if d.Binding != tt.binding || d.Split != tt.split || d.SplitUnknown != tt.unknown {
				t.Errorf("binding %s split %v unknown %v, want %s %v %v\ntrace %+v", d.Binding, d.Split, d.SplitUnknown, tt.binding, tt.split, tt.unknown, d.Trace)
			}
			last := ""
			if len(d.Trace) > 0 {
				last = d.Trace[len(d.Trace)-1].Detail
			}
			if tt.trace != "" && !strings.Contains(last, tt.trace) {
				t.Errorf("last step %q, want it to say %q", last, tt.trace)
			}
			js, err := json.Marshal(d)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(string(js), `"split_unknown":true`); got != tt.unknown {
				t.Errorf("JSON %s: split_unknown shown %v, want %v", js, got, tt.unknown)
			}
		})
	}
}

// TestBodyOnce: a script whose body tests have constant keys runs with each
// test evaluated once per message, and decides as the script written; a
// key with a variable keeps its test in the script.
func TestBodyOnce(t *testing.T) {
	tests := []struct {
		name     string
		script   string
		once     int  // body tests evaluated once per message
		everyRun bool // a body test left in the script
		body     string
		ctype    string
		wantBind string
	}{
		{"match", req + `if body :contains "PROMO" { set "binding" "C"; }`, 1, false, "buy PROMO now", "", "C"},
		{"no match", req + `if body :contains "PROMO" { set "binding" "C"; }`, 1, false, "nothing", "", "default"},
		{"in not and anyof", req + `if anyof(not body :contains "x", false) { set "binding" "C"; }`, 1, false, "x", "", "default"},
		{"two tests, second decides", req + `if body :is "no" { set "binding" "B"; } elsif body :matches "*PRO?O*" { set "binding" "C"; }`, 2, false, "a PROMO b", "", "C"},
		{"content type still read", req + `if body :content "text/html" :contains "PROMO" { set "binding" "C"; }`, 1, false, "PROMO", "text/html; charset=utf-8", "C"},
		{"content type differs", req + `if body :content "text/html" :contains "PROMO" { set "binding" "C"; }`, 1, false, "PROMO", "text/plain", "default"},
		{"without require environment", `require ["body", "variables"]; if body :contains "PROMO" { set "binding" "C"; }`, 1, false, "PROMO", "", "C"},
		{"variable key stays", req + `set "k" "PROMO"; if body :contains "${k}" { set "binding" "C"; }`, 0, true, "PROMO", "", "C"},
		{"mixed", req + `set "k" "PROMO"; if body :contains "${k}" { set "binding" "C"; } if body :contains "zzz" { set "binding" "B"; }`, 1, true, "PROMO zzz", "", "B"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := mustPolicy(t, testConfig(t, tt.script, true, config.PolicyErrorDefault), Options{})
			if len(p.bodyTests) != tt.once || p.bodyEveryRun != tt.everyRun {
				t.Errorf("%d tests once, every run %v; want %d, %v", len(p.bodyTests), p.bodyEveryRun, tt.once, tt.everyRun)
			}
			m := &Message{From: "s@x.example", To: []string{"r@y.example"}, Body: []byte(tt.body)}
			if tt.ctype != "" {
				m.AddHeader("Content-Type", tt.ctype)
			}
			if d := p.Decide(context.Background(), m); d.Binding != tt.wantBind || d.Err != nil {
				t.Errorf("binding %s (err %v), want %s; trace %+v", d.Binding, d.Err, tt.wantBind, d.Trace)
			}
		})
	}
}

// TestNeedsRecipients: recipients matter when the script may read envelope
// "to" or a sticky group exists (it picks by recipient domain); otherwise
// the policy service is asked at DATA alone.
func TestNeedsRecipients(t *testing.T) {
	const plain = `Binding "default" { Bind_Address = 192.0.2.1 }
Binding "B" { Bind_Address = 192.0.2.3 }
Binding_Group "R" { Selection = random  Binding "R1" { Bind_Address = 192.0.2.5 } }
`
	const sticky = plain + `Binding_Group "S" { Binding "S1" { Bind_Address = 192.0.2.6 } }
`
	for _, c := range []struct {
		name, bindings, script string
		want                   bool
	}{
		{"sender only", plain, req + `if envelope :domain "from" "x.example" { set "binding" "B"; }`, false},
		{"no script", plain, "", false},
		{"envelope to", plain, req + `if envelope :domain "to" "x.example" { set "binding" "B"; }`, true},
		{"envelope part from a variable", plain, req + `set "p" "to"; if envelope :domain "${p}" "x.example" { set "binding" "B"; }`, true},
		{"random group", plain, req + `set "binding" "R";`, false},
		{"sticky group (the default selection)", sticky, req + `if envelope :domain "from" "x.example" { set "binding" "B"; }`, true},
		{"sticky group, no script", sticky, "", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := New(loadConfig(t, c.bindings, c.script), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if got := p.Needs().Recipients; got != c.want {
				t.Errorf("Needs().Recipients = %v, want %v", got, c.want)
			}
		})
	}
}

// TestReadsHeaderAllocs: the milter asks for every header field of every
// message; the answer must not allocate.
func TestReadsHeaderAllocs(t *testing.T) {
	p, err := New(testConfig(t, req+`if header :contains "Subject" "x" { set "binding" "B"; }`, true, config.PolicyErrorDefault), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() {
		if !p.ReadsHeader("SUBJECT") || p.ReadsHeader("Received") {
			t.Fatal("wrong answer")
		}
	}); n != 0 {
		t.Errorf("ReadsHeader allocates %.0f times per call", n)
	}
}
