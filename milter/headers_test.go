package milter

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// recordingPolicy is a real *sieve.Policy (its Needs and ReadsHeader are
// what the milter asks) that keeps the last message it was shown.
type recordingPolicy struct {
	*sieve.Policy
	last atomic.Pointer[sieve.Message]
}

func (r *recordingPolicy) Decide(ctx context.Context, m *sieve.Message) sieve.Decision {
	cp := *m
	r.last.Store(&cp)
	return r.Policy.Decide(ctx, m)
}

// TestUnreadHeadersNotKept: 400 header fields of 1 KiB that the policy's
// script does not read are counted in the size but not kept, so they
// neither cost memory nor use up Max_Header_Bytes: the Subject after them
// still decides. When the script reads that field too, the same message
// fills Max_Header_Bytes and the Subject is cut.
func TestUnreadHeadersNotKept(t *testing.T) {
	const n, fieldBytes = 400, 1 << 10
	var fields [][2]string
	for i := range n {
		fields = append(fields, [2]string{"Received", fmt.Sprintf("%04d%s", i, strings.Repeat("r", fieldBytes-4-len("Received")))})
	}
	fields = append(fields, [2]string{"Subject", "tagged"})
	const subject = `if header :contains "Subject" "tagged" { set "binding" "Tagged"; }` + "\n"
	cases := []struct {
		name             string
		script           string
		binding          string
		minKept, maxKept int64 // bytes of header names and values the policy saw
		capped           float64
	}{
		{"unread field dropped", subject, "Tagged", 1, 100, 0},
		{"read field kept up to the cap", `if header :is "Received" "x" { keep; }` + "\n" + subject, "default",
			config.DefaultMaxHeaderBytes - fieldBytes, config.DefaultMaxHeaderBytes, 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "p.sieve"), []byte(`require ["variables"];`+"\n"+tc.script), 0o644); err != nil {
				t.Fatal(err)
			}
			cfg, err := config.Parse(filepath.Join(dir, "vipmilter.conf"), []byte(`Sieve_Script = "p.sieve"
Binding "default" { Bind_Address = 192.0.2.1 }
Binding "Tagged" { Bind_Address = 192.0.2.2 }`))
			if err != nil {
				t.Fatal(err)
			}
			pol, err := sieve.New(cfg, sieve.Options{})
			if err != nil {
				t.Fatal(err)
			}
			rec := &recordingPolicy{Policy: pol}
			s := New(rec, testSettings(), quietLog())
			c := newSess(t, start(t, s, "unix"), "h")
			_, added := summarize(c.send(t, msg{from: "a@x.example", headers: fields}).mods)
			if want := "X-Binding: " + tc.binding + " " + testKey; len(added) != 1 || added[0] != want {
				t.Errorf("added %q, want %q", added, want)
			}
			last := rec.last.Load()
			var kept int64
			for name, vs := range last.Header {
				for _, v := range vs {
					kept += int64(len(name) + len(v))
				}
			}
			if kept < tc.minKept || kept > tc.maxKept {
				t.Errorf("policy saw %d header bytes, want %d to %d", kept, tc.minKept, tc.maxKept)
			}
			if last.Size < n*fieldBytes {
				t.Errorf("size %d: the dropped fields must still count (≥ %d)", last.Size, n*fieldBytes)
			}
			if got := testutilCount(s.Metrics().headersCapped); got != tc.capped {
				t.Errorf("headers_capped_total = %v, want %v", got, tc.capped)
			}
		})
	}
}
