package main

import (
	"fmt"
	"io"
	"slices"
	"text/tabwriter"

	"github.com/vipmilter/vipmilter/e2e"
)

// pooled is one variant's figures over the bursts that count.
type pooled struct {
	counted map[int]burst // by round
	all     []burst
	msgs    int
	postfix float64 // seconds
	milter  float64 // seconds
}

func pool(name string, bursts []burst, keep func(burst) bool) pooled {
	p := pooled{counted: map[int]burst{}}
	for _, b := range bursts {
		if b.variant == name {
			p.all = append(p.all, b)
		}
	}
	for _, b := range p.all {
		if keep(b) {
			p.counted[b.round] = b
			p.msgs += b.n
			p.postfix += b.use.postfix
			p.milter += b.use.milter
		}
	}
	return p
}

// keeper says which bursts count: those where processes outside the
// benchmark used at most maxOther of the machine, unless some variant
// that ran has no such burst; then every burst of every variant counts
// (one rule for all variants, so no ratio compares a quiet burst with a
// loaded one) and spoiler names that variant.
func keeper(vs []variant, bursts []burst, maxOther float64) (keep func(burst) bool, spoiler string) {
	quiet := func(b burst) bool { return b.use.others <= maxOther }
	for _, v := range vs {
		ran := slices.ContainsFunc(bursts, func(b burst) bool { return b.variant == v.name })
		if ran && !slices.ContainsFunc(bursts, func(b burst) bool { return b.variant == v.name && quiet(b) }) {
			return func(burst) bool { return true }, v.name
		}
	}
	return quiet, ""
}

// perMsg is seconds per message → milliseconds per message.
func (p pooled) perMsg(s float64) float64 {
	if p.msgs == 0 {
		return 0
	}
	return 1000 * s / float64(p.msgs)
}

// ratios are the rate ratios to base in the rounds where both counted.
func (p pooled) ratios(base pooled) []float64 {
	var rs []float64
	for r, b := range p.counted {
		if o, ok := base.counted[r]; ok {
			rs = append(rs, b.rate()/o.rate())
		}
	}
	return rs
}

// cpuRatios are, per round where both counted, base's Postfix+milter CPU
// per message over p's: how much slower p would be if CPU were the only
// limit (both cores are saturated during a burst).
func (p pooled) cpuRatios(base pooled) []float64 {
	var rs []float64
	for r, b := range p.counted {
		if o, ok := base.counted[r]; ok {
			rs = append(rs, (o.use.postfix+o.use.milter)/float64(o.n)/((b.use.postfix+b.use.milter)/float64(b.n)))
		}
	}
	return rs
}

// cpuRatio is the same over the pooled bursts.
func (p pooled) cpuRatio(base pooled) float64 {
	return (base.postfix + base.milter) / float64(base.msgs) / ((p.postfix + p.milter) / float64(p.msgs))
}

func fmtCPURatio(pooled float64, rs []float64) string {
	if len(rs) == 0 {
		return "–"
	}
	s := fmt.Sprintf("%.3f", pooled)
	if len(rs) > 1 {
		s += fmt.Sprintf(" (%.2f–%.2f)", slices.Min(rs), slices.Max(rs))
	}
	return s
}

func fmtRatio(rs []float64) string {
	if len(rs) == 0 {
		return "–"
	}
	s := fmt.Sprintf("%.2f×", e2e.Median(rs))
	if len(rs) > 1 {
		s += fmt.Sprintf(" (%.2f–%.2f)", slices.Min(rs), slices.Max(rs))
	}
	return s
}

// report prints one row per variant that ran.
func report(w io.Writer, vs []variant, bursts []burst, maxOther float64) {
	keep, spoiler := keeper(vs, bursts, maxOther)
	pools := map[string]pooled{}
	for _, v := range vs {
		pools[v.name] = pool(v.name, bursts, keep)
	}
	base := pools["no milter"]
	basePF := base.perMsg(base.postfix)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "VARIANT\tMSG/S\t× NO MILTER\t× FLOOR\tPOSTFIX CPU s/1000 msg\tHOOK CPU ms/msg\tADDED CPU ms/msg\tCPU RATIO\tCPU RATIO × FLOOR\tHOOK CPU × FLOOR\tBURSTS KEPT\tOTHERS' CPU SHARE")
	for _, v := range vs {
		p := pools[v.name]
		if len(p.all) == 0 {
			continue
		}
		var rates, others []float64
		for _, b := range p.counted {
			rates = append(rates, b.rate())
		}
		for _, b := range p.all {
			others = append(others, 100*b.use.others)
		}
		pf, ml := p.perMsg(p.postfix), p.perMsg(p.milter)
		vsFloor, cpuVsFloor, milterVsFloor := "–", "–", "–"
		if v.kind == kindMilter || v.kind == kindPolicy {
			f := pools[floorOf(v)]
			vsFloor = fmtRatio(p.ratios(f))
			cpuVsFloor = fmtCPURatio(p.cpuRatio(f), p.cpuRatios(f))
			if fm := f.perMsg(f.milter); fm > 0 {
				milterVsFloor = fmt.Sprintf("%.2f×", ml/fm)
			}
		}
		kept := fmt.Sprintf("%d/%d", len(p.counted), len(p.all))
		fmt.Fprintf(tw, "%s\t%.0f\t%s\t%s\t%.2f\t%.2f\t%+.2f\t%s\t%s\t%s\t%s\t%.0f–%.0f%%\n",
			v.name, e2e.Median(rates), fmtRatio(p.ratios(base)), vsFloor,
			pf, ml, pf+ml-basePF, fmtCPURatio(p.cpuRatio(base), p.cpuRatios(base)), cpuVsFloor, milterVsFloor,
			kept, slices.Min(others), slices.Max(others))
	}
	tw.Flush()
	fmt.Fprintf(w, "× NO MILTER / × FLOOR: median (range) of per-round throughput ratios to the same round's burst;\n"+
		"HOOK CPU: the milter's, or the policy service's (vipmilter serve, the policy floor);\n"+
		"CPU RATIO: Postfix alone's CPU per message / the variant's Postfix+hook CPU per message, pooled (range of rounds);\n"+
		"CPU RATIO × FLOOR: the same against the floor on the same socket kind (the floor milter; the policy floor for the policy hook);\n"+
		"a burst is kept when processes outside the benchmark used ≤ %.0f%% of the machine's CPU", 100*maxOther)
	if spoiler != "" {
		fmt.Fprintf(w, "; no burst of %q was, so every burst of every variant is kept", spoiler)
	}
	fmt.Fprintln(w, ".")
	reportGoals(w, pools)
}

// goal is one of issue 11's goals: variant against base, at least (or,
// for the milter CPU, at most) limit.
type goal struct {
	what          string
	variant, base string
	milterCPU     bool // milter CPU per message ≤ limit × base's; otherwise the ratios ≥ limit
	limit         float64
	// bound marks a line that is not one of the goals but bounds
	// one: what the policy floor reaches, and vipmilter against it.
	bound bool
}

var goals = []goal{
	{what: "Match_Domain only, no hook × Postfix alone", variant: "vipmilter Match_Domain (no hook)", base: "no milter", limit: 0.95},
	{what: "envelope-only, policy hook unix × Postfix alone", variant: "vipmilter policy unix", base: "no milter", limit: 0.95},
	{what: "envelope-only, policy hook inet × Postfix alone", variant: "vipmilter policy inet", base: "no milter", limit: 0.95},
	{what: "50 header rules, milter unix × floor milter unix", variant: "vipmilter 50 rules unix", base: "floor milter unix", limit: 0.95},
	{what: "50 header rules, milter inet × floor milter inet", variant: "vipmilter 50 rules inet", base: "floor milter inet", limit: 0.95},
	{what: "vipmilter's milter CPU/msg unix × floor milter's", variant: "vipmilter 50 rules unix", base: "floor milter unix", milterCPU: true, limit: 1.5},
	{what: "vipmilter's milter CPU/msg inet × floor milter's", variant: "vipmilter 50 rules inet", base: "floor milter inet", milterCPU: true, limit: 1.5},
	{what: "(bound) policy floor unix × Postfix alone", variant: "policy floor unix", base: "no milter", limit: 0.95, bound: true},
	{what: "(bound) policy floor inet × Postfix alone", variant: "policy floor inet", base: "no milter", limit: 0.95, bound: true},
	{what: "(bound) policy hook unix × policy floor unix", variant: "vipmilter policy unix", base: "policy floor unix", limit: 0.95, bound: true},
	{what: "(bound) policy hook inet × policy floor inet", variant: "vipmilter policy inet", base: "policy floor inet", limit: 0.95, bound: true},
}

// reportGoals prints, for each goal whose variants ran, the figure, the
// goal and pass or fail: for the throughput goals both the median
// per-round throughput ratio and the pooled CPU ratio (on a shared
// machine the CPU ratio is the steadier of the two).
func reportGoals(w io.Writer, pools map[string]pooled) {
	ran := func(name string) bool { return len(pools[name].counted) > 0 }
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nGOAL (issue 11)\tMEASURE\tFIGURE\tGOAL\tRESULT")
	for _, g := range goals {
		if !ran(g.variant) || !ran(g.base) {
			continue
		}
		verdict := func(ok bool) string {
			switch {
			case g.bound && ok:
				return "above (not a goal)"
			case g.bound:
				return "below (not a goal)"
			case ok:
				return "pass"
			}
			return "FAIL"
		}
		p, base := pools[g.variant], pools[g.base]
		if g.milterCPU {
			r := p.perMsg(p.milter) / base.perMsg(base.milter)
			fmt.Fprintf(tw, "%s\tmilter CPU ms/msg, pooled\t%.2f×\t≤ %.2f×\t%s\n", g.what, r, g.limit, verdict(r <= g.limit))
			continue
		}
		if rs := p.ratios(base); len(rs) > 0 {
			m := e2e.Median(rs)
			fmt.Fprintf(tw, "%s\tthroughput, median of %d rounds\t%.2f×\t≥ %.2f×\t%s\n", g.what, len(rs), m, g.limit, verdict(m >= g.limit))
		}
		c := p.cpuRatio(base)
		fmt.Fprintf(tw, "%s\tCPU ratio, pooled\t%.3f\t≥ %.2f\t%s\n", g.what, c, g.limit, verdict(c >= g.limit))
	}
	tw.Flush()
}
