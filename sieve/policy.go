// Package sieve is vipmilter's policy: it decides the binding of a
// message. It runs the configured Sieve script (interpreted by go-sieve:
// RFC 5228 with variables, envelope, environment, body, relational,
// subaddress, reject), then applies Match_Domain, group selection and the
// fallback. It does no I/O once loaded: a Message view goes in, a Decision
// with a trace comes out; the milter and the CLI are thin adapters.
//
// Files: compile.go loads and checks a script, decide.go turns a script
// run into a Decision, group.go holds the group selection algorithms,
// message.go the view of a message the script reads; literal.go and
// bodyonce.go build the cheaper copies of a script that actually run.
package sieve

import (
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"strings"
	"sync/atomic"

	"github.com/foxcpp/go-sieve/interp"

	"github.com/vipmilter/vipmilter/config"
)

// Options tune a Policy.
type Options struct {
	Liveness Liveness     // nil: every binding is live
	Log      *slog.Logger // where the policy logs; nil: nowhere
	// Version is the environment item "version" (RFC 5183) scripts see;
	// "" takes the module version from the build information.
	Version string
}

// Liveness reports whether a binding's addresses are on the host. The
// provisioning side (package vip) implements it; nil means "all live".
type Liveness interface {
	Live(b *config.Binding) bool
}

// Needs tells the milter which stages the policy reads, so it can opt out
// of the rest.
type Needs struct {
	Headers bool // the script tests headers (header, address, exists) or picks body parts by Content-Type
	Body    bool // the script requires "body"
	Size    bool // the script uses the size test (the milter must count the message)
	Helo    bool // the script may read environment "vnd.vipmilter.helo" (the milter asks for HELO)
	// Recipients: the decision can depend on a recipient, so every one
	// must be known: the script may read envelope "to", or a sticky
	// Binding_Group picks its member by the first recipient's domain. The
	// policy hook then asks at every RCPT as well as at DATA; otherwise
	// the DATA request alone carries all the policy reads.
	Recipients bool
}

// Policy is a loaded binding file plus its compiled script. It is safe for
// concurrent use; a reload builds a new Policy.
type Policy struct {
	cfg     *config.Config
	opts    Options
	log     *slog.Logger
	script  *interp.Script // nil without a script
	needs   Needs
	readsTo bool // the script may read envelope "to"; recipients are re-run
	// bodyEveryRun: a body test is evaluated on every run of the script
	// (its keys hold a variable), so split detection's re-runs read the
	// body again (MaxSplitBodyBytes).
	bodyEveryRun bool
	// bodyTests evaluate the script's constant body tests once per
	// message (bodyonce.go); item N of bodyItem is bodyTests[N].
	bodyTests []*interp.Script
	// headers holds the lower-cased field names the script can read;
	// allHeaders is set when a name is not known before the run.
	headers    map[string]bool
	allHeaders bool
	setLines   map[string]int // literal ${binding} value -> line of its only set, 0 if ambiguous
	host       string
	domain     string
	version    string
	counters   map[string]*atomic.Uint64 // round_robin position per group
	missing    atomic.Uint64             // members skipped for a missing address (tests read it)

	// flagBinding: script is the flag-based copy (literal.go), and the
	// binding is read from the flags instead of the variable.
	flagBinding bool
}

// New compiles cfg.SieveScript (if any) against cfg. A script that does
// not load, or that assigns a literal binding name cfg does not declare,
// is an error; several problems come as a config.ErrorList, each
// "file:line:column: reason".
func New(cfg *config.Config, opts Options) (*Policy, error) {
	p := &Policy{cfg: cfg, opts: opts, log: opts.Log, version: opts.Version, counters: make(map[string]*atomic.Uint64)}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	if p.version == "" {
		p.version = buildVersion()
	}
	for _, g := range cfg.Groups {
		p.counters[g.Name] = new(atomic.Uint64)
		if g.Selection == config.SelectSticky {
			p.needs.Recipients = true
		}
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
	script, cmds, err := compile(cfg.SieveScript, src, cfg)
	if err != nil {
		return nil, err
	}
	p.script = script
	p.scan(cmds)
	p.needs.Recipients = p.needs.Recipients || p.readsTo
	if run, tests, everyRun := bodyOnce(cmds, loadOptions()); tests != nil {
		if s, err := interp.LoadScript(run, loadOptions()); err == nil {
			p.script, p.bodyTests, p.bodyEveryRun, cmds = s, tests, everyRun, run
		} else {
			p.bodyEveryRun = true
		}
	} else {
		p.bodyEveryRun = everyRun
	}
	if fast := literalBindingScript(src, cmds, loadOptions()); fast != nil {
		p.script, p.flagBinding = fast, true
	}
	return p, nil
}

// buildVersion is the main module's version from the build information,
// "dev" when there is none.
func buildVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "dev"
}

// Config returns the binding file the policy was built from.
func (p *Policy) Config() *config.Config { return p.cfg }

// Needs reports which message stages the policy reads.
func (p *Policy) Needs() Needs { return p.needs }

// ReadsHeader reports whether the policy can read the header field name
// (an RFC 5322 field name, any letter case): a header, address or exists
// test names it, or a body test that picks parts by type reads
// Content-Type. Match_Domain, group selection and EHLO_Hostname =
// __message__ read only the envelope. It is true for every name when a
// test names its fields through a variable, and false for every name when
// the policy reads no headers (Needs.Headers). The milter keeps only the
// fields it reports.
func (p *Policy) ReadsHeader(name string) bool {
	if !p.needs.Headers {
		return false
	}
	if p.allHeaders {
		return true
	}
	// The milter asks once per header field of every message: fold the
	// ASCII name (RFC 5322 §2.2) into a stack buffer, so the lookup
	// allocates nothing, instead of strings.ToLower.
	var buf [64]byte
	if len(name) > len(buf) {
		return p.headers[strings.ToLower(name)]
	}
	b := buf[:len(name)]
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		b[i] = c
	}
	return p.headers[string(b)]
}
