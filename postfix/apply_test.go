package postfix

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

// snapshot is everything Apply may touch: main.cf, master.cf and the tables.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	s := map[string]string{}
	for _, f := range []string{"main.cf", "master.cf", HeaderChecksFile, RequeueChecksFile, StripChecksFile, SenderTransportFile, SenderTransportFile + ".db"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err == nil {
			s[f] = string(b)
		}
	}
	return s
}

func TestApplyIdempotentAndDryRun(t *testing.T) {
	needPostfix(t)
	dir := privateDir(t, "")
	a := binding("A.b", "127.0.0.2")
	a.MatchDomains = []string{"example.com"}
	d := binding("default", "127.0.0.3", "::1")
	d.EHLOHostname = "d.test"
	cfg := testConfig(a, d)

	before := snapshot(t, dir)
	res, out := apply(t, dir, cfg, true)
	if len(res.Changes) == 0 || !strings.Contains(out, "+ vip_A.b unix") {
		t.Fatalf("dry run shows no diff:\n%s", out)
	}
	if after := snapshot(t, dir); !equalMaps(before, after) {
		t.Fatal("dry run changed files")
	}

	res, _ = apply(t, dir, cfg, false)
	if len(res.Changes) == 0 {
		t.Fatal("first apply changed nothing")
	}
	first := snapshot(t, dir)
	res, out = apply(t, dir, cfg, false)
	if len(res.Changes) != 0 || !strings.Contains(out, "no changes") {
		t.Fatalf("second apply changed %v:\n%s", res.Changes, out)
	}
	if second := snapshot(t, dir); !equalMaps(first, second) {
		t.Fatal("second apply rewrote files")
	}
}

func TestApplyRoutesAndRemoval(t *testing.T) {
	needPostfix(t)
	dir := privateDir(t, "smtp_dns_support_level = disabled\nrelayhost = [relay.test]\n")
	a := binding("A.b", "127.0.0.2")
	a.MatchDomains = []string{"example.com"}
	held := binding("held", "127.0.0.4")
	held.SuspendDelivery = true
	c := binding("c", "127.0.0.5")
	apply(t, dir, testConfig(a, held, c), false)

	q := func(table, key string) string {
		out, _ := exec.Command("postmap", "-c", dir, "-q", key, table).Output()
		return strings.TrimSpace(string(out))
	}
	hc := "regexp:" + filepath.Join(dir, HeaderChecksFile)
	st := "hash:" + filepath.Join(dir, SenderTransportFile)
	for _, tt := range []struct{ table, key, want string }{
		{hc, "X-Binding: A.b " + testKey, "FILTER vip_A.b:"},
		// As the milter writes it: the key past what Postfix logs.
		{hc, "X-Binding: " + config.BindingHeaderValue("X-Binding", "A.b", testKey), "FILTER vip_A.b:"},
		{hc, "X-Binding: A.b\n\t" + testKey, "FILTER vip_A.b:"}, // folded
		{hc, "X-Binding: " + config.BindingHeaderValue("X-Binding", "new", testKey), "HOLD"},
		{"regexp:" + filepath.Join(dir, RequeueChecksFile), "X-Binding: " + config.BindingHeaderValue("X-Binding", "c", testKey), "DUNNO"},
		{hc, "X-Binding: A.b", "IGNORE"},                                  // no key: a client's copy
		{hc, "X-Binding: A.b 0123456789abcdef0123456789abcdee", "IGNORE"}, // wrong key
		{hc, "X-Binding: AxB " + testKey, "HOLD"},                         // '.' is literal; unknown names wait
		{hc, "X-Binding: a.b " + testKey, "HOLD"},                         // names are case-sensitive
		{hc, "X-Binding: A.b extra " + testKey, "IGNORE"},                 // anchored
		{hc, "X-Binding: held " + testKey, "FILTER vip_held:"},
		{hc, "x-binding: c " + testKey, "IGNORE"}, // the milter writes the name as configured
		{"regexp:" + filepath.Join(dir, RequeueChecksFile), "X-Binding: c " + testKey, "DUNNO"},
		{"regexp:" + filepath.Join(dir, RequeueChecksFile), "X-Binding: c", "IGNORE"},
		{"regexp:" + filepath.Join(dir, StripChecksFile), "X-Binding: c " + testKey, "IGNORE"},
		{"regexp:" + filepath.Join(dir, StripChecksFile), "x-BINDING: c", "IGNORE"},
		{st, "@example.com", "vip_A.b:"},
		{st, "@other.com", ""},
	} {
		// HOLD carries a text after the action: compare the start.
		if got := q(tt.table, tt.key); (tt.want == "") != (got == "") || !strings.HasPrefix(got, tt.want) {
			t.Errorf("postmap -q %q %s = %q, want %q", tt.key, tt.table, got, tt.want)
		}
	}
	m := master(t, dir)
	if !strings.Contains(m, "vip_A.b ") || !strings.Contains(m, "vip_c ") || strings.Contains(m, "vip_held ") {
		t.Fatalf("master.cf transports wrong (held must be absent):\n%s", m)
	}
	n := postconfN(t, dir)
	if !strings.Contains(n, "relayhost = [relay.test]") || !strings.Contains(n, "smtpd_banner = hello") {
		t.Fatalf("unrelated settings lost:\n%s", n)
	}

	// Unsuspend held, drop c: held's transport returns, c's goes everywhere.
	held2 := binding("held", "127.0.0.4")
	apply(t, dir, testConfig(a, held2), false)
	m, n = master(t, dir), postconfN(t, dir)
	if !strings.Contains(m, "vip_held ") || strings.Contains(m, "vip_c ") {
		t.Fatalf("master.cf after removal:\n%s", m)
	}
	if strings.Contains(n, "vip_c_") || !strings.Contains(n, "vip_held_destination_concurrency_limit = 32") {
		t.Fatalf("main.cf after removal:\n%s", n)
	}
	if got := q(hc, "X-Binding: c "+testKey); !strings.HasPrefix(got, "HOLD") {
		t.Fatalf("rule for removed binding still there: %q", got)
	}

	// Removing everything but one binding and the default's stock
	// overrides: smtp/unix is restored to its plain form.
	d := binding("default", "127.0.0.3")
	apply(t, dir, testConfig(a, d), false)
	if p := postconfP(t, dir); !strings.Contains(p, "smtp/unix/smtp_bind_address = 127.0.0.3") {
		t.Fatalf("default did not bind stock smtp:\n%s", p)
	}
	apply(t, dir, testConfig(a), false)
	if p := postconfP(t, dir); strings.Contains(p, "smtp/unix/smtp_bind_address") || strings.Contains(p, "smtp/unix/inet_protocols") {
		t.Fatalf("stock smtp overrides not removed:\n%s", p)
	}
}

func TestReadStateLocalDomains(t *testing.T) {
	needPostfix(t)
	for _, tt := range []struct {
		name, main string
		local      bool
	}{
		{"send-only", "mydestination =\n", false},
		{"stock mydestination", "", false},
		{"virtual mailboxes", "virtual_mailbox_domains = example.net\n", true},
		{"own domain", "mydestination = example.org, localhost\n", true},
		// What Debian's "Internet Site" writes: the stock value by meaning.
		{"Debian Internet Site", "myhostname = mail.example.com\nmydomain = localdomain\nmydestination = $myhostname, mail.example.com, localhost.localdomain, localhost\n", false},
		{"stock entries in another order", "mydestination = localhost $myhostname\n", false},
		{"stock plus the mail domain", "myhostname = mail.example.com\nmydestination = $myhostname, localhost.$mydomain, localhost, example.com\n", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			st, err := ReadState(context.Background(), privateDir(t, tt.main))
			if err != nil {
				t.Fatal(err)
			}
			if got := len(st.LocalDomains) > 0; got != tt.local {
				t.Fatalf("LocalDomains = %q, want local=%v", st.LocalDomains, tt.local)
			}
			// The refusal names what goes beyond the stock value.
			if tt.local && !strings.Contains(strings.Join(st.LocalDomains, ";"), "beyond the stock value: example.") {
				t.Errorf("LocalDomains = %q does not name the non-stock entry", st.LocalDomains)
			}
		})
	}
}

func master(t *testing.T, dir string) string    { return pc(t, dir, "-M") }
func postconfN(t *testing.T, dir string) string { return pc(t, dir, "-n") }
func postconfP(t *testing.T, dir string) string { return pc(t, dir, "-P") }

func pc(t *testing.T, dir, arg string) string {
	t.Helper()
	out, err := exec.Command("postconf", "-c", dir, arg).Output()
	if err != nil {
		t.Fatalf("postconf %s: %v", arg, err)
	}
	return string(out)
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestParseMainAsPostconf: main.cf read without postconf gives what
// "postconf -n" gives.
func TestParseMainAsPostconf(t *testing.T) {
	needPostfix(t)
	dir := privateDir(t, "# a comment\nheader_checks = regexp:/a,\n    regexp:/b\n\tpcre:/c\nmydestination =\nmyhostname = first\nmyhostname = last.example\nsmtpd_milters = { inet:127.0.0.1:8891, default_action=accept }, inet:x:1\n")
	want := map[string]string{}
	parseParams(postconfN(t, dir), want)
	delete(want, "config_directory") // postconf -c adds it
	b, err := os.ReadFile(filepath.Join(dir, "main.cf"))
	if err != nil {
		t.Fatal(err)
	}
	got := parseMain(string(b))
	if !equalMaps(got, want) {
		t.Fatalf("parseMain:\n%q\npostconf -n:\n%q", got, want)
	}
}
