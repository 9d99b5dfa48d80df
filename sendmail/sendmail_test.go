package sendmail

import (
	"bufio"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/config"
)

const testConf = `Sendmail_Socketmap = "inet:127.0.0.1:8895"
Milter_Listen = "inet:127.0.0.1:8894"
%s
Binding "default" { Bind_Address = 192.0.2.1  EHLO_Hostname = mta.example.net }
Binding "Example" {
  Bind_Address = 192.0.2.10
  Bind_Address = 2001:db8::10
  EHLO_Hostname = mta1.example.com
  Match_Domain = example.com
  Match_Domain = example.org
  Server_Max_Outbound_Connections = 4
}
Binding "Six" { Bind_Address = 2001:db8::6  EHLO_Hostname = __hostname__  Suspend_Delivery = true }
Binding "dnl" { Bind_Address = 192.0.2.7  Match_Domain = a.example.net  Max_Outbound_Connections = 3 }
`

func load(t *testing.T, text string) *config.Config {
	t.Helper()
	p := filepath.Join(t.TempDir(), "vipmilter.conf")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(p)
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func confWith(global string) string { return strings.Replace(testConf, "%s", global, 1) }

func render(t *testing.T, cfg *config.Config) map[string]string {
	t.Helper()
	files, err := Render(cfg, Options{ConfigDir: "/etc/mail", QueueDir: "/var/spool/mqueue"})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, f := range files {
		out[filepath.Base(f.Path)] = string(f.Data)
	}
	return out
}

func TestRenderFragment(t *testing.T) {
	for _, tc := range []struct {
		name, global string
		want, not    []string
	}{
		{"accept", "On_Milter_Down = accept",
			[]string{
				"INPUT_MAIL_FILTER(`vipmilter', `S=inet:8894@127.0.0.1, T=",
				"`Kvipmilter socket -f -T<TMPF> inet:8895@127.0.0.1'",
				"`Kvipdomain text -v1 -T<TMPF> /etc/mail/vipmilter-domains'",
				"`Kvipsuspend text -f -v1 -T<TMPF> /etc/mail/vipmilter-suspended'",
				"`C{persistentMacros}{vip_binding} {vip_route}'",
				"QUEUE_GROUP(`vip_Example', `P=/var/spool/mqueue/vip_Example, R=4')",
				"QUEUE_GROUP(`vip_Six', `P=/var/spool/mqueue/vip_Six')",
				"undefine(`confHOST_STATUS_DIRECTORY')",
				"CLIENT_OPTIONS(`Family=inet, Modifiers=h')",
				"`# vipmilter: the source address of each message'\n`Squeuegroup'",
				"`# vipmilter: Suspend_Delivery defers the mail of a binding, which stays queued'\n`Scheck_compat'",
				"<N> < vip_default/default/192.0.2.1 >",
				"`R<G> < $+ >\t$# $1\t'",
			},
			[]string{"F=T"}},
		{"tempfail", "On_Milter_Down = tempfail", []string{"S=inet:8894@127.0.0.1, F=T, T="}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			frag := render(t, load(t, confWith(tc.global)))[FragmentFile]
			for _, w := range tc.want {
				if !strings.Contains(frag, w) {
					t.Errorf("fragment lacks %q:\n%s", w, frag)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(frag, n) {
					t.Errorf("fragment has %q", n)
				}
			}
			// Every line that reaches sendmail.cf is quoted whole, so no
			// word in it (a binding called dnl) is taken for a macro.
			inCF := false
			for _, l := range strings.Split(frag, "\n") {
				switch {
				case l == "LOCAL_CONFIG" || l == "LOCAL_RULESETS":
					inCF = true
				case l == "divert(0)dnl":
					inCF = false
				case inCF && !(strings.HasPrefix(l, "`") && strings.HasSuffix(l, "'")):
					t.Errorf("unquoted sendmail.cf line %q", l)
				}
			}
		})
	}
}

func TestRenderMaps(t *testing.T) {
	files := render(t, load(t, confWith("")))
	dom := files[DomainsFile]
	var rows []string
	for _, l := range strings.Split(dom, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			rows = append(rows, l)
		}
	}
	want := []string{
		"a.example.net\tvip_dnl/dnl/192.0.2.7",
		"example.com\tvip_Example/Example/192.0.2.10",
		"example.org\tvip_Example/Example/192.0.2.10",
	}
	if !slices.Equal(rows, want) {
		t.Errorf("domains map rows %q, want %q", rows, want)
	}
	if s := files[SuspendedFile]; !strings.Contains(s, "\nSix\tSix\n") || strings.Contains(s, "Example\t") {
		t.Errorf("suspended map:\n%s", s)
	}
}

func TestRenderRefuses(t *testing.T) {
	for _, tc := range []struct{ name, conf, want string }{
		{"no socketmap", strings.Replace(confWith(""), `Sendmail_Socketmap = "inet:127.0.0.1:8895"`, "", 1), "Sendmail_Socketmap is not set"},
		{"queue group collision", confWith(`Binding "a.b" { Bind_Address = 192.0.2.50 }
Binding "a_b" { Bind_Address = 192.0.2.51 }`), `"a.b" and "a_b" both become Sendmail queue group vip_a_b`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(load(t, tc.conf), Options{ConfigDir: "/etc/mail"})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestSendmailSocket(t *testing.T) {
	for in, want := range map[string]string{
		"inet:127.0.0.1:8895":  "inet:8895@127.0.0.1",
		"inet6:[::1]:8895":     "inet6:8895@::1",
		"unix:/run/vip/sm.map": "unix:/run/vip/sm.map",
		"inet:localhost:99":    "inet:99@localhost",
	} {
		if got := SendmailSocket(config.MustParseListen(in)); got != want {
			t.Errorf("SendmailSocket(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestAnswerFamily(t *testing.T) {
	cfg := load(t, confWith(""))
	for _, tc := range []struct {
		name, want string
		ok         bool
	}{
		{"Example", "vip_Example/Example/192.0.2.10", true}, // dual stack: IPv4
		{"Six", "vip_Six/Six/2001:db8::6", true},
		{"default", "vip_default/default/192.0.2.1", true},
		{"Nope", "", false},
	} {
		if got, ok := Answer(cfg, tc.name); got != tc.want || ok != tc.ok {
			t.Errorf("Answer(%s) = %q, %v; want %q, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
	// Without a declared default binding, "default" is ordinary delivery.
	noDefault := load(t, `Sendmail_Socketmap = "inet:127.0.0.1:8895"
Binding "A" { Bind_Address = 192.0.2.9 }`)
	if got, ok := Answer(noDefault, "default"); got != "mqueue/default/" || !ok {
		t.Errorf("Answer(default) without a default binding = %q, %v", got, ok)
	}
}

// socketmap sends one request on c and returns the reply netstring's data.
func socketmap(t *testing.T, c net.Conn, r *bufio.Reader, req string) string {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(netstring(req))); err != nil {
		t.Fatal(err)
	}
	resp, err := readNetstring(r, 1<<16)
	if err != nil {
		t.Fatalf("reply to %q: %v", req, err)
	}
	return resp
}

func TestSocketmapServer(t *testing.T) {
	cfg := load(t, confWith(""))
	store := NewStore(cfg, nil)
	srv := NewSocketmapServer(store, nil)
	ln, err := Listen(config.Listen{Network: "tcp", Address: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	store.Record("6AUCEO1c006420", "Example")
	store.Record("6AUCEO1c006421", "Gone") // not in the config: not recorded
	store.Record("", "Example")            // no queue id: not recorded

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := bufio.NewReader(c)
	// Several requests on one connection, as Sendmail keeps the map open.
	for _, tc := range []struct{ req, want string }{
		{"vipmilter 6AUCEO1c006420", "OK vip_Example/Example/192.0.2.10"},
		{"vipmilter 6aucEO1c006420", "NOTFOUND "}, // queue ids are case-sensitive
		{"vipmilter 6AUCEO1c006421", "NOTFOUND "},
		{"other 6AUCEO1c006420", `PERM unknown map "other"; vipmilter serves vipmilter`},
		{"vipmilter", `PERM request is not "map key"`},
	} {
		if got := socketmap(t, c, r, tc.req); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.req, got, tc.want)
		}
	}
	if n := store.Len(); n != 1 {
		t.Errorf("store holds %d decisions, want 1", n)
	}
	// A malformed netstring ends the connection.
	c2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.Write([]byte("5:vipmilter x,"))
	c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c2.Read(make([]byte, 10)); err == nil {
		t.Errorf("malformed request answered with %d bytes", n)
	}
}

func TestStoreExpiry(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := NewStore(load(t, confWith("")), nil)
	s.now = func() time.Time { return now }
	s.Record("A", "Example")
	now = now.Add(DefaultTTL / 2)
	s.Record("B", "Six")
	if _, ok := s.Lookup("A"); !ok {
		t.Error("A expired early")
	}
	now = now.Add(DefaultTTL/2 + time.Second)
	if _, ok := s.Lookup("A"); ok {
		t.Error("A outlived its TTL")
	}
	s.Record("C", "dnl") // sweeps A
	if s.Len() != 2 {
		t.Errorf("store holds %d, want 2 (B, C)", s.Len())
	}
	if v, ok := s.Lookup("B"); !ok || v != "vip_Six/Six/2001:db8::6" {
		t.Errorf("B = %q, %v", v, ok)
	}
}

func TestCheckSite(t *testing.T) {
	for _, tc := range []struct {
		name, mc string
		lines    []int
		included bool
	}{
		{"debian stock", "FEATURE(`access_db', , `skip')dnl\nMAILER(`smtp')dnl\n", nil, false},
		{"included", "MAILER(`smtp')dnl\ninclude(`/etc/mail/vipmilter.m4')dnl\n", nil, true},
		{"queuegroup feature", "FEATURE(`access_db')dnl\nFEATURE(`queuegroup', `slow')dnl\n", []int{2}, false},
		{"commented out", "dnl FEATURE(`queuegroup')\n", nil, false},
		{"own rulesets", "LOCAL_RULESETS\nScheck_compat\nR$* $@ ok\nSqueuegroup\n", []int{2, 4}, false},
		{"helo name, client options", "define(`confHELO_NAME', `mx.example')dnl\nCLIENT_OPTIONS(`Family=inet, Addr=192.0.2.9')dnl\n", []int{1, 2}, false},
		{"host status dir", "define(`confHOST_STATUS_DIRECTORY', `/var/hs')dnl\n", []int{1}, false},
		{"second milter", "INPUT_MAIL_FILTER(`vipmilter', `S=inet:1@127.0.0.1')dnl\n", []int{1}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cs, inc := CheckSite("sendmail.mc", []byte(tc.mc))
			var lines []int
			for _, c := range cs {
				lines = append(lines, c.Line)
				if !strings.HasPrefix(c.Error(), "sendmail.mc:") {
					t.Errorf("conflict %q does not name the file", c.Error())
				}
			}
			if !slices.Equal(lines, tc.lines) || inc != tc.included {
				t.Errorf("conflicts at %v, included %v; want %v, %v (%v)", lines, inc, tc.lines, tc.included, cs)
			}
		})
	}
}

func TestCheckCF(t *testing.T) {
	ours := render(t, load(t, confWith("")))[FragmentFile]
	// The rulesets as they reach sendmail.cf: quotes stripped by m4.
	var cf []string
	for _, l := range strings.Split(ours, "\n") {
		if strings.HasPrefix(l, "`") && strings.HasSuffix(l, "'") {
			cf = append(cf, l[1:len(l)-1])
		}
	}
	if got := CheckCF("sendmail.cf", []byte(strings.Join(cf, "\n"))); len(got) != 0 {
		t.Errorf("our own rulesets reported: %v", got)
	}
	foreign := "SLocal_check_mail\nSqueuegroup\nR< $+ >\t$1\n"
	if got := CheckCF("sendmail.cf", []byte(foreign)); len(got) != 1 || got[0].Line != 2 {
		t.Errorf("foreign queuegroup: %v", got)
	}
}

func TestLimitations(t *testing.T) {
	got := strings.Join(Limitations(load(t, confWith(""))), "\n")
	for _, w := range []string{
		`binding "default": Sendmail greets with the name 192.0.2.1 resolves to`,
		`binding "Six": EHLO_Hostname = __hostname__ cannot be honoured`,
		`binding "Example": Sendmail binds one address per message: its mail leaves over IPv4 from 192.0.2.10, never from 2001:db8::10`,
		`binding "dnl": Max_Outbound_Connections = 3 cannot be honoured`,
		`binding "Example": Server_Max_Outbound_Connections = 4 becomes the Runners of queue group vip_Example`,
	} {
		if !strings.Contains(got, w) {
			t.Errorf("limitations lack %q:\n%s", w, got)
		}
	}
	if strings.Contains(got, "binding header") {
		t.Errorf("the binding header reported, though none is written on Sendmail:\n%s", got)
	}
	if strings.Contains(got, `binding "Six": Sendmail binds one address`) {
		t.Errorf("an IPv6-only binding reported as dual stack:\n%s", got)
	}
}

func TestApplyIdempotent(t *testing.T) {
	cfg := load(t, confWith(""))
	dir, queue := t.TempDir(), t.TempDir()
	o := Options{ConfigDir: dir, QueueDir: queue}
	files, err := Render(cfg, o)
	if err != nil {
		t.Fatal(err)
	}
	dry, err := Apply(files, QueueDirs(cfg, o), true)
	if err != nil {
		t.Fatal(err)
	}
	if len(dry.Written) != 3 || len(dry.Created) != 4 {
		t.Errorf("dry run: %+v", dry)
	}
	if _, err := os.Stat(filepath.Join(dir, FragmentFile)); !os.IsNotExist(err) {
		t.Errorf("dry run wrote the fragment (%v)", err)
	}
	first, err := Apply(files, QueueDirs(cfg, o), false)
	if err != nil {
		t.Fatal(err)
	}
	second, err := Apply(files, QueueDirs(cfg, o), false)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.Written) != 3 || len(first.Created) != 4 || len(second.Written) != 0 || len(second.Created) != 0 || len(second.Unchanged) != 3 {
		t.Errorf("first %+v, second %+v", first, second)
	}
	for _, d := range QueueDirs(cfg, o) {
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			t.Errorf("queue group directory %s: %v", d, err)
		}
	}
}
