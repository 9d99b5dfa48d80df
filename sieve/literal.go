package sieve

import (
	"bytes"
	"slices"
	"strings"

	"github.com/foxcpp/go-sieve/interp"
	"github.com/foxcpp/go-sieve/parser"
)

// Most policies use the variables extension for one thing only: to assign
// a literal to "binding". go-sieve, once a script requires "variables",
// runs a regular-expression variable expansion over every string of every
// test on every run — about 70% of a 50-rule decision, and 450 allocations.
// For such a script the policy runs an equivalent copy instead, in which
// each `set "binding" "X"` is `setflag "X"` (RFC 5232) and "variables" is
// not required: with no "${" anywhere in the source, expansion could never
// change a string, and the flag list carries the value to the end of the
// run. The original script is still what is checked and reported; any
// script using variables in another way runs as written.

// literalBindingScript returns the equivalent flag-based script, or nil
// when src uses variables for anything but literal binding assignments.
func literalBindingScript(src []byte, cmds []parser.Cmd, opts *interp.Options) *interp.Script {
	if bytes.Contains(src, []byte("${")) || !eligible(cmds) {
		return nil
	}
	rewritten, ok := rewrite(cmds)
	if !ok {
		return nil
	}
	script, err := interp.LoadScript(rewritten, opts)
	if err != nil {
		return nil
	}
	return script
}

// eligible reports whether the script requires "variables" but not
// "imap4flags" (whose flags the copy uses), every set is a plain literal
// assignment to binding, and no test of the variables extension is used.
func eligible(cmds []parser.Cmd) bool {
	requires := map[string]bool{}
	ok := true
	var test func(t parser.Test)
	test = func(t parser.Test) {
		if strings.EqualFold(t.Id, "string") {
			ok = false
		}
		for _, s := range t.Tests {
			test(s)
		}
	}
	var walk func(cs []parser.Cmd)
	walk = func(cs []parser.Cmd) {
		for _, c := range cs {
			switch strings.ToLower(c.Id) {
			case "require":
				for _, a := range c.Args {
					for _, e := range argStrings(a) {
						requires[strings.ToLower(e)] = true
					}
				}
			case "set":
				if _, literal := literalSet(c); !literal {
					ok = false
				}
			}
			for _, t := range c.Tests {
				test(t)
			}
			walk(c.Block)
		}
	}
	walk(cmds)
	return ok && requires["variables"] && !requires["imap4flags"]
}

// literalSet returns X for `set "binding" "X"` without modifiers.
func literalSet(c parser.Cmd) (string, bool) {
	if len(c.Args) != 2 {
		return "", false
	}
	name, ok1 := c.Args[0].(parser.StringArg)
	value, ok2 := c.Args[1].(parser.StringArg)
	if !ok1 || !ok2 || !strings.EqualFold(name.Value, "binding") {
		return "", false
	}
	return value.Value, true
}

// rewrite copies cmds with "variables" swapped for "imap4flags" in require
// and every binding assignment turned into setflag.
func rewrite(cmds []parser.Cmd) ([]parser.Cmd, bool) {
	out := make([]parser.Cmd, 0, len(cmds))
	for _, c := range cmds {
		c.Block = slices.Clone(c.Block)
		switch strings.ToLower(c.Id) {
		case "require":
			var exts []string
			for _, a := range c.Args {
				for _, e := range argStrings(a) {
					if !strings.EqualFold(e, "variables") {
						exts = append(exts, e)
					}
				}
			}
			exts = append(exts, "imap4flags")
			c.Args = []parser.Arg{parser.StringListArg{Value: exts, Position: c.Position}}
		case "set":
			v, _ := literalSet(c)
			c.Id = "setflag"
			c.Args = []parser.Arg{parser.StringArg{Value: v, Position: c.Position}}
		}
		if len(c.Block) > 0 {
			b, ok := rewrite(c.Block)
			if !ok {
				return nil, false
			}
			c.Block = b
		}
		out = append(out, c)
	}
	return out, true
}

// flagBinding is the binding a flag-based run ends with: setflag splits a
// value at white space and sorts it, which only matters for values that
// are no binding name anyway.
func flagBinding(rd *interp.RuntimeData) string {
	return strings.Join(rd.Flags, " ")
}
