package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/milter"
	"github.com/vipmilter/vipmilter/sieve"
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

// fixedDecider answers every message with d.
type fixedDecider struct {
	milter.Decider
	d sieve.Decision
}

func (f fixedDecider) Decide(context.Context, *sieve.Message) sieve.Decision { return f.d }

func TestRecordingDecider(t *testing.T) {
	for _, tc := range []struct {
		name   string
		d      sieve.Decision
		record bool
	}{
		{"accept", sieve.Decision{Binding: "A", Action: sieve.Accept}, true},
		{"reject", sieve.Decision{Action: sieve.Reject}, false},
		{"tempfail", sieve.Decision{Binding: "default", Action: sieve.Tempfail}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			r := recordingDecider{Decider: fixedDecider{d: tc.d}, record: func(q, b string) { got = append(got, q+"="+b) }}
			r.Decide(context.Background(), &sieve.Message{QueueID: "6AUCEO1c006420"})
			want := []string(nil)
			if tc.record {
				want = []string{"6AUCEO1c006420=" + tc.d.Binding}
			}
			if !slices.Equal(got, want) {
				t.Errorf("recorded %v, want %v", got, want)
			}
		})
	}
	// Without Sendmail_Socketmap the policy is passed through untouched.
	var none *sendmailSide
	d := &fixedDecider{}
	if got := none.policy(d); got != milter.Decider(d) {
		t.Errorf("policy wrapped without a socketmap: %T", got)
	}
}
