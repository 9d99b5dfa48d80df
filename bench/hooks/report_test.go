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
			b("vipmilter 50 rules inet", r, 10, 8, 2), // milter CPU 2×
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
	} {
		if verdicts[what] != want {
			t.Errorf("%s: %q, want %q", what, verdicts[what], want)
		}
	}
	if strings.Contains(got, "policy hook inet") {
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
