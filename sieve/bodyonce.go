package sieve

import (
	"strconv"
	"strings"

	"github.com/foxcpp/go-sieve/interp"
	"github.com/foxcpp/go-sieve/parser"
)

// A policy that reads the body and envelope "to" runs its script once per
// distinct recipient to detect a split, and go-sieve reads the whole body
// again for every body test of every run (about 19 ms per MiB): 50
// recipients of a 1 MiB body took a second of CPU. Yet a body test whose
// arguments are constant has the same result on every run of one message:
// it depends on the body and its Content-Type only, never on the envelope,
// and sets no match variables (RFC 5173 §6; go-sieve's BodyTest). So the
// policy runs a copy of the script in which each such test is
// `environment :is "<bodyItem>N" "1"`, and the view answers that item by
// evaluating the original test N once per message, on first use, in a
// script of its own. Body tests whose keys hold a variable stay as written,
// and their re-runs are bounded by MaxSplitBodyBytes.

// bodyItem prefixes the environment items that stand for body tests.
const bodyItem = "vnd.vipmilter.body-test."

// bodyOnce returns cmds with each constant body test replaced by its
// environment item, and the scripts evaluating those tests (index N for
// item N); nil scripts when there is none. everyRun reports a body test
// left in place.
func bodyOnce(cmds []parser.Cmd, opts *interp.Options) (out []parser.Cmd, tests []*interp.Script, everyRun bool) {
	var requires []string
	var collect func(cs []parser.Cmd)
	collect = func(cs []parser.Cmd) {
		for _, c := range cs {
			if strings.EqualFold(c.Id, "require") {
				for _, a := range c.Args {
					requires = append(requires, argStrings(a)...)
				}
			}
			collect(c.Block)
		}
	}
	collect(cmds)
	failed := false
	var test func(t parser.Test) parser.Test
	test = func(t parser.Test) parser.Test {
		if strings.EqualFold(t.Id, "body") {
			if !constantArgs(t.Args) {
				everyRun = true
				return t
			}
			s, err := interp.LoadScript([]parser.Cmd{
				{Position: t.Position, Id: "require", Args: []parser.Arg{parser.StringListArg{Value: append(requires[:len(requires):len(requires)], "imap4flags")}}},
				{Position: t.Position, Id: "if", Tests: []parser.Test{t}, Block: []parser.Cmd{
					{Position: t.Position, Id: "addflag", Args: []parser.Arg{parser.StringArg{Value: "t"}}},
				}},
			}, opts)
			if err != nil {
				failed = true
				return t
			}
			tests = append(tests, s)
			return parser.Test{Position: t.Position, Id: "environment", Args: []parser.Arg{
				parser.TagArg{Value: "is", Position: t.Position},
				parser.StringArg{Value: bodyItem + strconv.Itoa(len(tests)-1), Position: t.Position},
				parser.StringArg{Value: "1", Position: t.Position},
			}}
		}
		if len(t.Tests) > 0 {
			sub := make([]parser.Test, len(t.Tests))
			for i := range t.Tests {
				sub[i] = test(t.Tests[i])
			}
			t.Tests = sub
		}
		return t
	}
	var walk func(cs []parser.Cmd) []parser.Cmd
	walk = func(cs []parser.Cmd) []parser.Cmd {
		out := make([]parser.Cmd, len(cs))
		for i, c := range cs {
			if len(c.Tests) > 0 {
				ts := make([]parser.Test, len(c.Tests))
				for j := range c.Tests {
					ts[j] = test(c.Tests[j])
				}
				c.Tests = ts
			}
			if len(c.Block) > 0 {
				c.Block = walk(c.Block)
			}
			out[i] = c
		}
		return out
	}
	out = walk(cmds)
	if failed || len(tests) == 0 {
		// A test that does not load alone (not expected: the whole
		// script loaded) leaves the script as written.
		return cmds, nil, everyRun || failed
	}
	// The copy needs "environment" for its items.
	for i, c := range out {
		if strings.EqualFold(c.Id, "require") {
			var exts []string
			for _, a := range c.Args {
				exts = append(exts, argStrings(a)...)
			}
			out[i].Args = []parser.Arg{parser.StringListArg{Value: append(exts, "environment"), Position: c.Position}}
			break
		}
	}
	return out, tests, everyRun
}

// constantArgs reports whether no string of args can expand: without
// "${" neither a variable nor an encoded character (RFC 5229, RFC 5228
// §2.4.2.4) changes it between runs.
func constantArgs(args []parser.Arg) bool {
	for _, a := range args {
		for _, s := range argStrings(a) {
			if strings.Contains(s, "${") {
				return false
			}
		}
	}
	return true
}

// bodyResults holds the body test results of one message, shared by every
// run of the script for it (Decide's first run and split detection's).
type bodyResults struct {
	done []bool
	hit  []bool
	err  error // the first evaluation error; the run that met it fails
}

// bodyTest answers environment item name when it stands for a body test:
// "1" when the test matched. ok is false for any other name.
func (v *view) bodyTest(name string) (value string, ok bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(name, bodyItem))
	if err != nil || n < 0 || n >= len(v.p.bodyTests) || v.body == nil {
		return "", false
	}
	r := v.body
	if r.done == nil {
		r.done = make([]bool, len(v.p.bodyTests))
		r.hit = make([]bool, len(v.p.bodyTests))
	}
	if !r.done[n] {
		r.done[n] = true
		rd := interp.NewRuntimeData(v.p.bodyTests[n], noRedirect{}, v, v)
		rd.Env = v
		if err := v.p.bodyTests[n].Execute(v.ctx, rd); err != nil && r.err == nil {
			r.err = err
		}
		r.hit[n] = len(rd.Flags) > 0
	}
	if r.hit[n] {
		return "1", true
	}
	return "0", true
}
