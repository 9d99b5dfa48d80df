package sieve

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/foxcpp/go-sieve/interp"
	"github.com/foxcpp/go-sieve/lexer"
	"github.com/foxcpp/go-sieve/parser"

	"github.com/vipmilter/vipmilter/config"
)

// Version is reported to scripts as the environment item "version";
// cmd/vipmilter sets it at start-up.
var Version = "dev"

// MaxSplitRecipients caps how many distinct recipients are re-run to
// detect a split decision; beyond it the cost would grow with the
// recipient list while the answer (split or not) is usually known.
const MaxSplitRecipients = 50

// Options tune a Policy.
type Options struct {
	Liveness Liveness // nil: every binding is live
}

// Policy is a loaded binding file plus its compiled script. It is safe for
// concurrent use; a reload builds a new Policy.
type Policy struct {
	cfg      *config.Config
	opts     Options
	script   *interp.Script // nil without a script
	needs    Needs
	readsTo  bool           // the script may read envelope "to"; split detection needed
	setLines map[string]int // literal ${binding} value -> line of its only set, 0 if ambiguous
	host     string
	domain   string
	counters map[string]*atomic.Uint64 // round_robin position per group
	missing  atomic.Uint64             // members skipped for a missing address

	// flagBinding: script is the flag-based copy (literal.go), and the
	// binding is read from the flags instead of the variable.
	flagBinding bool
}

// refused are commands that would make the policy act on the mailbox;
// vipmilter only chooses a source address, it never drops or diverts mail.
var refused = map[string]string{
	"discard":  "discard would lose mail",
	"redirect": "redirect would divert mail; vipmilter only picks a source address",
	"fileinto": "fileinto has no meaning for outgoing mail",
}

// New compiles cfg.SieveScript (if any) against cfg. A script that does not
// load is an error naming file, line and reason.
func New(cfg *config.Config, opts Options) (*Policy, error) {
	p := &Policy{cfg: cfg, opts: opts, counters: make(map[string]*atomic.Uint64)}
	for _, g := range cfg.Groups {
		p.counters[g.Name] = new(atomic.Uint64)
	}
	p.host, _ = os.Hostname()
	if _, d, ok := strings.Cut(p.host, "."); ok {
		p.domain = d
	}
	if cfg.SieveScript == "" {
		return p, nil
	}
	src, err := os.ReadFile(cfg.SieveScript)
	if err != nil {
		return nil, fmt.Errorf("sieve script: %w", err)
	}
	script, cmds, err := compile(cfg.SieveScript, src)
	if err != nil {
		return nil, err
	}
	p.script = script
	p.scan(cmds)
	if fast := literalBindingScript(src, cmds, loadOptions()); fast != nil {
		p.script, p.flagBinding = fast, true
	}
	return p, nil
}

var posRE = regexp.MustCompile(`(\d+):(\d+): `)

func loadOptions() *interp.Options {
	return &interp.Options{
		MaxRedirects:       0,
		MaxVariableCount:   128,
		MaxVariableNameLen: 32,
		MaxVariableLen:     4000,
	}
}

// compile lexes, parses and loads a script. go-sieve reports positions as
// "LINE:COL: reason", sometimes behind a "LoadCmd x: " prefix and without
// the file name; the error is rewritten to "file:LINE:COL: reason".
func compile(path string, src []byte) (*interp.Script, []parser.Cmd, error) {
	name := filepath.Base(path)
	wrap := func(err error) error {
		msg := err.Error()
		if loc := posRE.FindStringSubmatchIndex(msg); loc != nil {
			pos := msg[loc[2]:loc[5]]
			rest := msg[:loc[0]] + msg[loc[1]:]
			return fmt.Errorf("%s:%s: %s", name, pos, rest)
		}
		return fmt.Errorf("%s: %s", name, msg)
	}
	toks, err := lexer.Lex(bytes.NewReader(src), &lexer.Options{Filename: name, MaxTokens: 100000})
	if err != nil {
		return nil, nil, wrap(err)
	}
	cmds, err := parser.Parse(lexer.NewStream(toks), &parser.Options{MaxBlockNesting: 15, MaxTestNesting: 15})
	if err != nil {
		return nil, nil, wrap(err)
	}
	if err := refuse(name, cmds); err != nil {
		return nil, nil, err
	}
	script, err := interp.LoadScript(cmds, loadOptions())
	if err != nil {
		return nil, nil, wrap(err)
	}
	return script, cmds, nil
}

func refuse(name string, cmds []parser.Cmd) error {
	for _, c := range cmds {
		if why, ok := refused[strings.ToLower(c.Id)]; ok {
			return fmt.Errorf("%s:%d:%d: %s", name, c.Line, c.Col, why)
		}
		if err := refuse(name, c.Block); err != nil {
			return err
		}
	}
	return nil
}

// scan derives Needs and whether envelope "to" can matter from the parsed
// tree. It errs on the side of "needed": a wrong "no" would silently
// change decisions, a wrong "yes" only costs time.
func (p *Policy) scan(cmds []parser.Cmd) {
	var test func(t parser.Test)
	strs := func(args []parser.Arg) {
		for _, a := range args {
			for _, v := range argStrings(a) {
				if strings.Contains(strings.ToLower(v), "envelope.to") {
					p.readsTo = true
				}
			}
		}
	}
	test = func(t parser.Test) {
		switch strings.ToLower(t.Id) {
		case "header", "address", "exists":
			p.needs.Headers = true
		case "size":
			p.needs.Size = true
		case "body":
			p.needs.Body = true
		case "environment":
			// Any string naming the HELO item, or a variable that could
			// expand to it.
			for _, a := range t.Args {
				for _, v := range argStrings(a) {
					if lv := strings.ToLower(v); strings.Contains(lv, "helo") || strings.Contains(lv, "${") {
						p.needs.Helo = true
					}
				}
			}
		case "envelope":
			for _, a := range t.Args {
				vals := argStrings(a)
				// The first string list names the envelope parts; a
				// variable there could expand to "to".
				for _, v := range vals {
					lv := strings.ToLower(v)
					if lv == "to" || strings.Contains(lv, "${") {
						p.readsTo = true
					}
				}
				if len(vals) > 0 {
					break
				}
			}
		}
		strs(t.Args)
		for _, sub := range t.Tests {
			test(sub)
		}
	}
	var walk func(cs []parser.Cmd)
	p.setLines = map[string]int{}
	walk = func(cs []parser.Cmd) {
		for _, c := range cs {
			if strings.EqualFold(c.Id, "set") {
				p.noteSet(c)
			}
			strs(c.Args)
			for _, t := range c.Tests {
				test(t)
			}
			walk(c.Block)
		}
	}
	walk(cmds)
}

// argStrings returns the strings of a string or string-list argument.
func argStrings(a parser.Arg) []string {
	switch a := a.(type) {
	case parser.StringArg:
		return []string{a.Value}
	case parser.StringListArg:
		return a.Value
	}
	return nil
}

// noteSet remembers where a literal value is given to ${binding}, so the
// trace can point at the line without instrumenting the interpreter.
func (p *Policy) noteSet(c parser.Cmd) {
	var str []parser.StringArg
	for _, a := range c.Args {
		if sa, ok := a.(parser.StringArg); ok {
			str = append(str, sa)
		}
	}
	if len(str) != 2 || !strings.EqualFold(str[0].Value, "binding") || strings.Contains(str[1].Value, "${") {
		return
	}
	for _, a := range c.Args {
		if _, ok := a.(parser.TagArg); ok {
			return // modifiers change the value
		}
	}
	v := strings.TrimSpace(str[1].Value)
	if _, dup := p.setLines[v]; dup {
		p.setLines[v] = 0
		return
	}
	p.setLines[v] = c.Line
}

// Config returns the binding file the policy was built from.
func (p *Policy) Config() *config.Config { return p.cfg }

// Needs reports which message stages the policy reads.
func (p *Policy) Needs() Needs { return p.needs }

// outcome is what one script run says.
type outcome struct {
	value      string // ${binding} at the end, trimmed
	reject     bool
	rejectText string
}

// Decide places one message. It never fails: errors become a Decision
// with Reason ReasonPolicyError and Action per On_Policy_Error.
func (p *Policy) Decide(ctx context.Context, m *Message) Decision {
	start := time.Now()
	d := p.decide(ctx, m)
	d.Elapsed = time.Since(start)
	return d
}

func (p *Policy) decide(ctx context.Context, m *Message) (d Decision) {
	first := ""
	if len(m.To) > 0 {
		first = m.To[0]
	}
	var out outcome
	if p.script != nil {
		var err error
		out, err = p.run(ctx, m, first)
		if err != nil {
			return p.policyError(d, fmt.Errorf("sieve script: %w", err))
		}
		if out.reject {
			d.Binding = ""
			d.Reason = ReasonReject
			d.Action = Reject
			d.RejectText = out.rejectText
			d.Trace = append(d.Trace, Step{Rule: "script", Detail: "reject: " + out.rejectText})
			return d
		}
		if p.readsTo {
			// Recorded after the decision's own steps so the trace
			// reads in order.
			defer func() {
				if step, split := p.splitCheck(ctx, m, out.value); split {
					d.Split = true
					d.Trace = append(d.Trace, step)
				}
			}()
		}
	}
	switch {
	case out.value != "":
		d.Reason = ReasonScript
		d.Trace = append(d.Trace, Step{Rule: "script", Line: p.setLines[out.value], Detail: "binding = " + out.value})
		if err := p.resolve(out.value, m, &d); err != nil {
			return p.policyError(d, err)
		}
	default:
		if b := p.cfg.MatchDomain(domainOf(m.From)); b != nil && m.From != "" {
			d.Reason = ReasonMatchDomain
			d.Trace = append(d.Trace, Step{Rule: "match_domain", Detail: domainOf(m.From) + " -> " + b.Name})
			if err := p.resolve(b.Name, m, &d); err != nil {
				return p.policyError(d, err)
			}
			return d
		}
		p.fallback(&d)
	}
	return d
}

func (p *Policy) fallback(d *Decision) {
	d.Binding = config.DefaultBindingName
	d.Group = ""
	if d.Reason == "" {
		d.Reason = ReasonFallback
	}
	detail := "binding " + config.DefaultBindingName
	if p.cfg.Default() == nil {
		detail += " (not declared: Postfix delivers without a source binding)"
	}
	d.Trace = append(d.Trace, Step{Rule: "fallback", Detail: detail})
}

func (p *Policy) policyError(d Decision, err error) Decision {
	d.Err = err
	d.Reason = ReasonPolicyError
	d.Trace = append(d.Trace, Step{Rule: "error", Detail: err.Error()})
	if p.cfg.OnPolicyError == config.PolicyErrorTempfail {
		d.Action = Tempfail
		d.Binding = ""
		d.Group = ""
		return d
	}
	d.Action = Accept
	p.fallback(&d)
	return d
}

// splitCheck re-runs the script for the other distinct recipients and
// reports the first one that would get a different ${binding}.
func (p *Policy) splitCheck(ctx context.Context, m *Message, want string) (Step, bool) {
	if len(m.To) < 2 {
		return Step{}, false
	}
	seen := map[string]struct{}{strings.ToLower(m.To[0]): {}}
	for _, rcpt := range m.To[1:] {
		if len(seen) >= MaxSplitRecipients {
			break
		}
		k := strings.ToLower(rcpt)
		if _, ok := seen[k]; ok {
			continue
		}
		seen[k] = struct{}{}
		out, err := p.run(ctx, m, rcpt)
		if err != nil || out.reject || out.value == want {
			continue
		}
		got := out.value
		if got == "" {
			got = "(unset: Match_Domain/fallback)"
		}
		return Step{Rule: "recipients", Detail: fmt.Sprintf("%s would get %s; the message goes by its first recipient", rcpt, got)}, true
	}
	return Step{}, false
}

// run executes the script once with to as envelope "to".
func (p *Policy) run(ctx context.Context, m *Message, to string) (out outcome, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("script panicked: %v", r)
		}
	}()
	v := &view{m: m, to: to, p: p}
	rd := interp.NewRuntimeData(p.script, noRedirect{}, v, v)
	rd.Env = v
	if err := p.script.Execute(ctx, rd); err != nil {
		return out, err
	}
	for _, a := range rd.AppliedActions {
		switch a := a.(type) {
		case interp.ActionReject:
			return outcome{reject: true, rejectText: a.Reason}, nil
		case interp.ActionEReject:
			return outcome{reject: true, rejectText: a.Reason}, nil
		}
	}
	if p.flagBinding {
		out.value = strings.TrimSpace(flagBinding(rd))
	} else {
		out.value = strings.TrimSpace(rd.Variables["binding"])
	}
	return out, nil
}

// resolve turns a script value (binding, group or comma list) into a
// binding, filling d.Binding, d.Group and the trace.
func (p *Policy) resolve(value string, m *Message, d *Decision) error {
	name := value
	if strings.Contains(value, ",") {
		var entries []string
		for e := range strings.SplitSeq(value, ",") {
			if e = strings.TrimSpace(e); e != "" {
				entries = append(entries, e)
			}
		}
		if len(entries) == 0 {
			return fmt.Errorf("binding list %q is empty", value)
		}
		name = entries[rand.IntN(len(entries))]
		d.Trace = append(d.Trace, Step{Rule: "list", Detail: fmt.Sprintf("%s: picked %s", strings.Join(entries, ","), name)})
	}
	if b := p.cfg.Binding(name); b != nil {
		d.Binding = b.Name
		if b.Group != nil {
			d.Group = b.Group.Name
		}
		return nil
	}
	if g := p.cfg.Group(name); g != nil {
		if len(g.Members) == 0 {
			return fmt.Errorf("group %q has no members", name)
		}
		b, err := p.pick(g, m, d)
		if err != nil {
			return err
		}
		d.Binding = b.Name
		d.Group = g.Name
		return nil
	}
	return fmt.Errorf("binding %q: no such binding or group", name)
}

// pick chooses one member of g, preferring members that can send now.
func (p *Policy) pick(g *config.Group, m *Message, d *Decision) (*config.Binding, error) {
	var skipped []string
	missing := 0
	live := make([]*config.Binding, 0, len(g.Members))
	for _, b := range g.Members {
		switch {
		case b.SuspendDelivery:
			skipped = append(skipped, b.Name+" (suspended)")
		case p.opts.Liveness != nil && !p.opts.Liveness.Live(b):
			skipped = append(skipped, b.Name+" (address not on host)")
			missing++
			d.Unavailable++
			p.missing.Add(1)
		default:
			live = append(live, b)
		}
	}
	note := ""
	if len(live) == 0 && missing > 0 {
		// A member without its address cannot send at all; rather than
		// queue mail behind an address that may never come back, the
		// message follows On_Policy_Error (fallback or 4xx).
		return nil, fmt.Errorf("group %q: no member can send (skipped %s)", g.Name, strings.Join(skipped, ", "))
	}
	if len(live) == 0 {
		// Leaving from another group's address would be worse than
		// waiting: the mail queues for a member until it comes back.
		live = g.Members
		note = "; no member available, picked among all so the mail waits in the queue"
	}
	var b *config.Binding
	switch g.Selection {
	case config.SelectRandom:
		b = weightedRandom(live)
	case config.SelectRoundRobin:
		b = weightedTurn(live, p.counters[g.Name])
	default:
		dom := ""
		if len(m.To) > 0 {
			dom = strings.ToLower(domainOf(m.To[0]))
		}
		b = rendezvous(live, dom)
	}
	detail := fmt.Sprintf("%s (%s): picked %s", g.Name, g.Selection, b.Name)
	if len(skipped) > 0 {
		detail += "; skipped " + strings.Join(skipped, ", ")
		slog.Debug("group members skipped", "group", g.Name, "skipped", skipped, "picked", b.Name)
	}
	d.Trace = append(d.Trace, Step{Rule: "group", Detail: detail + note})
	return b, nil
}

// MissingSkips counts group members passed over because their address was
// not on the host, since the policy was loaded.
func (p *Policy) MissingSkips() uint64 { return p.missing.Load() }

func weight(b *config.Binding) int {
	if b.Weight <= 0 {
		return 1
	}
	return b.Weight
}

// rendezvous is weighted highest-random-weight hashing: each member scores
// -w/ln(h) with h a uniform hash of (domain, member) in (0,1), so a
// destination keeps its member and removing one member moves only its
// share of destinations.
func rendezvous(bs []*config.Binding, domain string) *config.Binding {
	var best *config.Binding
	bestScore := math.Inf(-1)
	for _, b := range bs {
		h := hash01(domain, b.Name)
		s := -float64(weight(b)) / math.Log(h)
		if s > bestScore {
			best, bestScore = b, s
		}
	}
	return best
}

// hash01 maps (a, b) to (0,1) with FNV-1a plus a splitmix finaliser; it
// must be stable across processes and hosts, so no seeded hash.
func hash01(a, b string) float64 {
	const prime = 1099511628211
	h := uint64(14695981039346656037)
	for i := 0; i < len(a); i++ {
		h ^= uint64(a[i])
		h *= prime
	}
	h ^= 0
	h *= prime
	for i := 0; i < len(b); i++ {
		h ^= uint64(b[i])
		h *= prime
	}
	h ^= h >> 30
	h *= 0xbf58476d1ce4e5b9
	h ^= h >> 27
	h *= 0x94d049bb133111eb
	h ^= h >> 31
	return (float64(h>>11) + 0.5) / (1 << 53)
}

func weightedRandom(bs []*config.Binding) *config.Binding {
	total := 0
	for _, b := range bs {
		total += weight(b)
	}
	n := rand.IntN(total)
	for _, b := range bs {
		if n -= weight(b); n < 0 {
			return b
		}
	}
	return bs[len(bs)-1]
}

// weightedTurn walks the members in order, giving each as many turns in a
// row as its weight.
func weightedTurn(bs []*config.Binding, c *atomic.Uint64) *config.Binding {
	total := 0
	for _, b := range bs {
		total += weight(b)
	}
	n := int((c.Add(1) - 1) % uint64(total))
	for _, b := range bs {
		if n -= weight(b); n < 0 {
			return b
		}
	}
	return bs[len(bs)-1]
}

func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return addr[i+1:]
	}
	return ""
}

// view shows a Message to go-sieve with one chosen envelope recipient.
type view struct {
	m  *Message
	to string
	p  *Policy
}

func (v *view) EnvelopeFrom() string { return v.m.From }
func (v *view) EnvelopeTo() string   { return v.to }
func (v *view) AuthUsername() string { return v.m.Auth }
func (v *view) MessageSize() int     { return v.m.Size }

func (v *view) HeaderGet(key string) ([]string, error) {
	if v.m.Header == nil {
		return nil, nil
	}
	// Scripts mostly name headers in canonical form ("Subject"): a direct
	// lookup skips canonicalising the key on every test of every rule.
	if vs, ok := v.m.Header[key]; ok {
		return vs, nil
	}
	return v.m.Header.Values(key), nil
}

func (v *view) GetEnvironment(name string) (string, bool) {
	var s string
	switch strings.ToLower(name) {
	case "remote-ip":
		s = v.m.RemoteIP
	case "remote-host":
		s = v.m.RemoteHost
	case "host":
		s = v.p.host
	case "domain":
		s = v.p.domain
	case "phase":
		s = v.m.Phase
		if s == "" {
			s = "during"
		}
	case "name":
		s = "vipmilter"
	case "version":
		s = Version
	case "vnd.vipmilter.helo":
		s = v.m.Helo
	case "vnd.vipmilter.queue-id":
		s = v.m.QueueID
	case "vnd.vipmilter.daemon":
		s = v.m.Daemon
	default:
		return "", false
	}
	return s, true
}

func (v *view) BodyRaw(context.Context) (io.Reader, error) {
	if v.m.Body == nil {
		return nil, nil
	}
	return bytes.NewReader(v.m.Body), nil
}

// BodyParts offers the body as one part: the milter sees the raw body and
// vipmilter does not decode MIME for a source-address decision.
func (v *view) BodyParts(_ context.Context, types []string) ([]interp.BodyPart, error) {
	if v.m.Body == nil {
		return nil, nil
	}
	ct := "text/plain"
	if v.m.Header != nil {
		if h := v.m.Header.Get("Content-Type"); h != "" {
			ct, _, _ = strings.Cut(strings.ToLower(h), ";")
			ct = strings.TrimSpace(ct)
		}
	}
	if !interp.ContentTypeMatches(ct, types) {
		return nil, nil
	}
	return []interp.BodyPart{interp.BodyPartBytes{Blob: v.m.Body, ContentTypeValue: ct}}, nil
}

// noRedirect answers go-sieve's redirect policy; redirect is refused at
// load, so this is never asked in practice.
type noRedirect struct{}

func (noRedirect) RedirectAllowed(context.Context, *interp.RuntimeData, string) (bool, error) {
	return false, errors.New("redirect is not allowed")
}
