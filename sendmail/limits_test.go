package sendmail

import (
	"strings"
	"testing"
)

// TestEHLONotes: which EHLO_Hostname a resolved address name can deliver,
// and what the note says for each kind: a host name with a dot names the
// hosts-file fix; one Sendmail would ignore says it cannot be honoured.
func TestEHLONotes(t *testing.T) {
	cases := []struct {
		ehlo     string
		resolved bool
		want     string
	}{
		{"out.example.com", true, `binding "B": Sendmail greets with the name 192.0.2.10 resolves to, not with EHLO_Hostname itself: make 192.0.2.10 resolve to out.example.com (vipmilter provision --hosts-file /etc/hosts writes it into the hosts file, or publish a PTR record)`},
		{"mta.Müller.example", true, "resolve to mta.xn--mller-kva.example (vipmilter provision --hosts-file /etc/hosts"},
		{"mailout", false, `binding "B": EHLO_Hostname = mailout cannot be honoured on Sendmail as such`},
		{"192.0.2.10", false, "EHLO_Hostname = 192.0.2.10 cannot be honoured"},
		{"[192.0.2.10]", false, "EHLO_Hostname = [192.0.2.10] cannot be honoured"},
		{"__hostname__", false, "EHLO_Hostname = __hostname__ cannot be honoured on Sendmail as such: it greets with the name 192.0.2.10 resolves to (ClientPortOptions Modifiers=h), and with its own name ($j) only when that is no name with a dot"},
		{"__message__", false, "give the binding a host name with a dot and run vipmilter provision --hosts-file /etc/hosts"},
	}
	for _, c := range cases {
		cfg := load(t, "Binding \"B\" { Bind_Address = 192.0.2.10  EHLO_Hostname = \""+c.ehlo+"\"  Match_Domain = b.example }\n")
		if got := ResolvedEHLO(cfg.Bindings[0].EHLOHostname); got != c.resolved {
			t.Errorf("ResolvedEHLO(%q) = %v, want %v", c.ehlo, got, c.resolved)
		}
		if got := strings.Join(Limitations(cfg), "\n"); !strings.Contains(got, c.want) {
			t.Errorf("%s: notes lack %q:\n%s", c.ehlo, c.want, got)
		}
	}
}
