package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestReportGoals checks the verdicts from two rounds of bursts whose
// figures are known: a policy variant at 0.90× Postfix alone fails, a
// Match_Domain variant at 1.00× passes, and a milter at 1.2× the floor's
// CPU passes its ≤ 1.5× goal while one at 2× fails.
func TestReportGoals(t *testing.T) {
	b := func(name string, round int, secs, postfix, milter float64) burst {
		return burst{variant: name, round: round, n: 1000, secs: secs, use: usage{postfix: postfix, milter: milter}}
	}
	var bursts []burst
	for r := range 2 {
		bursts = append(bursts,
			b("no milter", r, 10, 9, 0),
			b("vipmilter Match_Domain (no hook)", r, 10, 9, 0),
			b("vipmilter policy unix", r, 10/0.9, 9, 1), // 0.90× throughput, CPU ratio 0.90
			b("floor milter unix", r, 10, 9, 1),
			b("vipmilter 50 rules unix", r, 10, 8.8, 1.2), // CPU ratio 1.00, milter CPU 1.2×
			b("floor milter inet", r, 10, 9, 1),
			b("vipmilter 50 rules inet", r, 10, 8, 2),   // milter CPU 2×
			b("policy floor unix", r, 10/0.9, 9.5, 0.5), // CPU ratio 0.90; vipmilter's 1.00× of it
		)
	}
	var out bytes.Buffer
	report(&out, variants(t.TempDir()), bursts, 0.10)
	got := out.String()
	for _, want := range []string{
		"Match_Domain only, no hook × Postfix alone  throughput, median of 2 rounds  1.00×",
		"envelope-only, policy hook unix × Postfix alone  throughput, median of 2 rounds  0.90×",
		"envelope-only, policy hook unix × Postfix alone  CPU ratio, pooled  0.900",
		"vipmilter's milter CPU/msg unix × floor milter's  milter CPU ms/msg, pooled  1.20×",
		"vipmilter's milter CPU/msg inet × floor milter's  milter CPU ms/msg, pooled  2.00×",
	} {
		if !strings.Contains(squeeze(got), want) {
			t.Errorf("report lacks %q:\n%s", want, got)
		}
	}
	verdicts := map[string]string{}
	for _, l := range strings.Split(got, "\n") {
		f := strings.Split(squeeze(l), "  ")
		if len(f) == 5 {
			verdicts[f[0]+" / "+f[1]] = f[4]
		}
	}
	for what, want := range map[string]string{
		"Match_Domain only, no hook × Postfix alone / CPU ratio, pooled":                   "pass",
		"envelope-only, policy hook unix × Postfix alone / CPU ratio, pooled":              "FAIL",
		"envelope-only, policy hook unix × Postfix alone / throughput, median of 2 rounds": "FAIL",
		"50 header rules, milter unix × floor milter unix / CPU ratio, pooled":             "pass",
		"vipmilter's milter CPU/msg unix × floor milter's / milter CPU ms/msg, pooled":     "pass",
		"vipmilter's milter CPU/msg inet × floor milter's / milter CPU ms/msg, pooled":     "FAIL",
		"(bound) policy floor unix × Postfix alone / CPU ratio, pooled":                    "below (not a goal)",
		"(bound) policy hook unix × policy floor unix / CPU ratio, pooled":                 "above (not a goal)",
	} {
		if verdicts[what] != want {
			t.Errorf("%s: %q, want %q", what, verdicts[what], want)
		}
	}
	if strings.Contains(got, "policy hook inet") || strings.Contains(got, "policy floor inet") {
		t.Error("a goal whose variant did not run is reported")
	}
}

// squeeze turns tabwriter's column padding (two or more spaces) into
// exactly two spaces.
func squeeze(s string) string {
	for strings.Contains(s, "   ") {
		s = strings.ReplaceAll(s, "   ", "  ")
	}
	return s
}

func TestDecided(t *testing.T) {
	policy := `time=x level=INFO msg="policy decision" queue_id=A binding=Example reason=match_domain hook=policy` + "\n"
	milter := `time=x level=INFO msg="milter decision" queue_id=A binding=Example reason=match_domain` + "\n"
	misplaced := `time=x level=ERROR msg="policy decision" queue_id=B binding=default reason=error` + "\n"
	for _, c := range []struct {
		name string
		log  string
		k    kind
		n    int
		err  string // "" = no error
	}{
		{"every message decided", strings.Repeat(policy, 3), kindPolicy, 3, ""},
		{"too few decisions", strings.Repeat(policy, 2), kindPolicy, 3, "logged 2"},
		{"a message placed elsewhere", strings.Repeat(policy, 3) + misplaced, kindPolicy, 3, "did not choose binding Example"},
		{"smtpd mail on the milter too", strings.Repeat(policy, 3) + milter, kindPolicy, 3, "other hook"},
		{"milter hook", strings.Repeat(milter, 3), kindMilter, 3, ""},
		{"milter variant on the policy service", strings.Repeat(policy, 3), kindMilter, 3, "logged 0"},
	} {
		err := decided(c.log, c.k, c.n)
		if (c.err == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: %v, want %q", c.name, err, c.err)
		}
	}
}

// TestKeeper: the -max-other filter applies to every variant or to none.
func TestKeeper(t *testing.T) {
	vs := variants(t.TempDir())
	b := func(name string, others float64) burst { return burst{variant: name, use: usage{others: others}} }
	for _, c := range []struct {
		name        string
		bursts      []burst
		wantSpoiler string
		keptLoaded  bool // is a loaded burst kept
	}{
		{"every variant has a quiet burst", []burst{b("no milter", 0.05), b("no milter", 0.5), b("floor milter unix", 0.08)}, "", false},
		{"one variant has none", []burst{b("no milter", 0.05), b("floor milter unix", 0.5)}, "floor milter unix", true},
	} {
		keep, spoiler := keeper(vs, c.bursts, 0.10)
		if spoiler != c.wantSpoiler || keep(b("no milter", 0.5)) != c.keptLoaded || !keep(b("no milter", 0.05)) {
			t.Errorf("%s: spoiler %q, loaded burst kept %t; want %q, %t", c.name, spoiler, keep(b("no milter", 0.5)), c.wantSpoiler, c.keptLoaded)
		}
	}
}

func TestReadLog(t *testing.T) {
	log := `time=2026-11-30T14:52:13Z level=INFO msg=start variants=8 n=800 rounds=10 machine="Postfix 3.7.11, 2 CPUs"
time=2026-11-30T14:52:17Z level=DEBUG msg=setup variant="no milter" setup_s=1.2e-06 restart_s=4.09
time=2026-11-30T14:52:22Z level=INFO msg=burst round=2 variant="vipmilter policy inet" msgs_per_s=200 postfix_ms_per_msg=5.50 milter_ms_per_msg=0.40 others_share=34% busy=96%
`
	bursts, n, err := readLog(strings.NewReader(log))
	if err != nil || n != 800 || len(bursts) != 1 {
		t.Fatalf("readLog: %v, n %d, %d bursts; want 800, 1", err, n, len(bursts))
	}
	b := bursts[0]
	want := burst{variant: "vipmilter policy inet", round: 1, n: 800, secs: 4, use: usage{postfix: 4.4, milter: 0.32, others: 0.34, busy: 0.96}}
	near := func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 }
	if b.variant != want.variant || b.round != want.round || b.n != want.n || !near(b.secs, want.secs) ||
		!near(b.use.postfix, want.use.postfix) || !near(b.use.milter, want.use.milter) || !near(b.use.others, want.use.others) {
		t.Errorf("burst %+v, want %+v", b, want)
	}
	two, _, err := readLog(strings.NewReader(log + log))
	if err != nil || len(two) != 2 || two[0].round != 1 || two[1].round != 3 {
		t.Errorf("two runs' logs: %v, %+v; want rounds 1 and 3 (the second run's numbered on)", err, two)
	}
	for _, bad := range []string{
		"",
		`msg=burst round=1 variant="no milter" msgs_per_s=200 postfix_ms_per_msg=5 milter_ms_per_msg=0 others_share=3% busy=9%`,
		"msg=start n=800\n" + `msg=burst round=1 variant="no milter" msgs_per_s=fast postfix_ms_per_msg=5 milter_ms_per_msg=0 others_share=3% busy=9%`,
	} {
		if _, _, err := readLog(strings.NewReader(bad)); err == nil {
			t.Errorf("readLog accepted %q", bad)
		}
	}
}
