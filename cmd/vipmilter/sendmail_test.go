package main

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sendmail"
)

func TestCmdSendmail(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "vipmilter.conf")
	if err := os.WriteFile(conf, []byte(`Sendmail_Socketmap = "inet:127.0.0.1:8895"
Binding "default" { Bind_Address = 192.0.2.1 }
Binding "A" { Bind_Address = 192.0.2.2  Match_Domain = a.example }
`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "queue"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, mc string
		code     int
		out, err []string // substrings of stdout, stderr
		written  bool
	}{
		{"conflicting mc", "FEATURE(`access_db')dnl\nFEATURE(`queuegroup')dnl\n", 1,
			nil, []string{"sendmail.mc:2: FEATURE(`queuegroup')", "nothing written"}, false},
		{"fresh", "MAILER(`smtp')dnl\n", 0,
			[]string{"wrote " + filepath.Join(dir, "etc", "vipmilter.m4"), "next: add this line", "include(`" + filepath.Join(dir, "etc", "vipmilter.m4") + "')dnl"}, nil, true},
		{"second run", "MAILER(`smtp')dnl\ninclude(`" + filepath.Join(dir, "etc", "vipmilter.m4") + "')dnl\n", 0,
			[]string{"no changes"}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			etc := filepath.Join(dir, "etc")
			os.MkdirAll(etc, 0o755)
			if err := os.WriteFile(filepath.Join(etc, "sendmail.mc"), []byte(tc.mc), 0o644); err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			c := &cli{stdout: &out, stderr: &errb}
			code := c.main([]string{"sendmail", "-c", conf, "--config-dir", etc, "--queue-dir", filepath.Join(dir, "queue")})
			if code != tc.code {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tc.code, out.String(), errb.String())
			}
			for _, w := range tc.out {
				if !strings.Contains(out.String(), w) {
					t.Errorf("stdout lacks %q:\n%s", w, out.String())
				}
			}
			for _, w := range tc.err {
				if !strings.Contains(errb.String(), w) {
					t.Errorf("stderr lacks %q:\n%s", w, errb.String())
				}
			}
			if _, err := os.Stat(filepath.Join(etc, "vipmilter.m4")); (err == nil) != tc.written {
				t.Errorf("vipmilter.m4 exists: %v, want %v", err == nil, tc.written)
			}
		})
	}
}

// TestSendmailDecided: the socketmap records what the milter reports
// through Settings.Decided (the milter calls it once per accepted message,
// milter.TestDecided); without a socketmap nothing is recorded.
func TestSendmailDecided(t *testing.T) {
	var none *sendmailSide
	if none.decided() != nil {
		t.Error("Decided set without a socketmap")
	}
	cfg, err := config.Parse("vipmilter.conf", []byte("Binding \"A\" { Bind_Address = 192.0.2.10 }\n"))
	if err != nil {
		t.Fatal(err)
	}
	s := &sendmailSide{store: sendmail.NewStore(cfg, slog.New(slog.DiscardHandler))}
	s.decided()("6AUCEO1c006420", "A")
	if got, ok := s.store.Lookup("6AUCEO1c006420"); !ok || !strings.Contains(got, "A") {
		t.Errorf("socketmap answer %q (%v), want binding A", got, ok)
	}
}
