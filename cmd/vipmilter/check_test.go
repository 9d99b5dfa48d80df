package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckCommand(t *testing.T) {
	needLoad(t)
	dir := t.TempDir()
	ex, err := os.ReadFile("../../examples/vipmilter.conf")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := os.ReadFile("../../examples/policy.sieve")
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.conf", string(ex))
	write("policy.sieve", string(pol))
	badDir := filepath.Join(dir, "bad")
	if err := os.Mkdir(badDir, 0o755); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(badDir, "bad.conf")
	if err := os.WriteFile(bad, ex, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(badDir, "policy.sieve"), []byte("require \"variables\";\nif true {\n  discard;\n}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	write("envelope.sieve", "require \"envelope\";\nif envelope :domain :is \"from\" \"a.test\" { keep; }\n")
	envelope := write("envelope.conf", "Sieve_Script = \"envelope.sieve\"\nBinding \"a\" { Bind_Address = 192.0.2.10 }\n")
	domains := write("domains.conf", "Binding \"a\" {\n  Bind_Address = 192.0.2.10\n  Match_Domain = a.test\n}\n")
	forced := write("forced.conf", "Hook = policy\n"+string(ex))
	tests := []struct {
		name     string
		conf     string
		wantCode int
		wantOut  []string
		wantErr  []string
	}{
		{"example", good, 0, []string{": OK\n", "  Example: addresses 192.0.2.10/32 2001:db8::10/128", "  Pool: selection sticky; members Pool1 Pool2\n", "match_domain entries: 1\n", "(reads headers: true, body: false, size: false)"}, nil},
		{"example: the milter", good, 0, []string{"hook: milter (the Sieve script reads headers: only the milter sees them)\n", "  \"vipmilter postfix\" renders vipmilter's milter in smtpd_milters and non_smtpd_milters\n"}, nil},
		{"envelope-only: the policy service", envelope, 0, []string{"hook: policy (the Sieve script reads only the envelope", "renders check_policy_service first in smtpd_recipient_restrictions"}, nil},
		{"Match_Domain only: no hook", domains, 0, []string{"hook: none (no Sieve script", "renders no milter and no policy service"}, nil},
		{"policy forced on a header test", forced, 1, nil, []string{"Hook = policy, but the Sieve script reads headers"}},
		{"refused discard", bad, 1, nil, []string{"error: policy.sieve:3:3: discard would lose mail"}},
		{"missing file", filepath.Join(dir, "none.conf"), 1, nil, []string{"error: "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := run("check", "-c", tt.conf)
			errOut = strings.ReplaceAll(errOut, filepath.Dir(tt.conf)+string(filepath.Separator), "")
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d\nstdout %s\nstderr %s", code, tt.wantCode, out, errOut)
			}
			for _, w := range tt.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(errOut, w) {
					t.Errorf("stderr lacks %q:\n%s", w, errOut)
				}
			}
		})
	}
}

// TestCheckSendmailLimitations: with Sendmail_Socketmap set, check says what
// Sendmail cannot honour; without it, it says nothing about Sendmail.
func TestCheckSendmailLimitations(t *testing.T) {
	dir := t.TempDir()
	const bindings = `
Binding "Mail" {
  Bind_Address = 192.0.2.10
  EHLO_Hostname = mail.example.net
  Max_Outbound_Connections = 5
}
`
	tests := []struct {
		name   string
		global string
		want   []string
		absent []string
	}{
		{"sendmail host", "Sendmail_Socketmap = \"inet:127.0.0.1:8895\"\n",
			[]string{`sendmail: binding "Mail": Sendmail greets with the name 192.0.2.10 resolves to`, `sendmail: binding "Mail": Max_Outbound_Connections = 5 cannot be honoured`}, nil},
		{"postfix host", "", nil, []string{"sendmail:"}},
	}
	// A site whose sendmail.mc defines a ruleset the fragment needs is refused.
	mail := t.TempDir()
	if err := os.WriteFile(filepath.Join(mail, "sendmail.mc"), []byte("divert(0)dnl\nFEATURE(`compat_check')dnl\nMAILER(smtp)dnl\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "site.conf")
	if err := os.WriteFile(bad, []byte("Sendmail_Socketmap = \"inet:127.0.0.1:8895\"\n"+bindings), 0o644); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := run("check", "-c", bad, "--sendmail-dir", mail); code != 1 || !strings.Contains(errOut, "sendmail.mc:2: FEATURE(`compat_check')") {
		t.Errorf("conflicting sendmail.mc: exit %d\nstdout %s\nstderr %s", code, out, errOut)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "_")+".conf")
			if err := os.WriteFile(p, []byte(tt.global+bindings), 0o644); err != nil {
				t.Fatal(err)
			}
			code, out, errOut := run("check", "-c", p, "--sendmail-dir", t.TempDir())
			if code != 0 {
				t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tt.absent {
				if strings.Contains(out, w) {
					t.Errorf("stdout has %q:\n%s", w, out)
				}
			}
		})
	}
}
