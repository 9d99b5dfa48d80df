package sieve

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"

	"github.com/foxcpp/go-sieve/interp"
	"github.com/foxcpp/go-sieve/lexer"
	"github.com/foxcpp/go-sieve/parser"

	"github.com/vipmilter/vipmilter/config"
)

// refused are commands that would make the policy act on the mailbox;
// vipmilter only chooses a source address, it never drops or diverts mail.
var refused = map[string]string{
	"discard":  "discard would lose mail",
	"redirect": "redirect would divert mail; vipmilter only picks a source address",
	"fileinto": "fileinto has no meaning for outgoing mail",
}

// extensions are the Sieve extensions a policy may require (those go-sieve
// implements, without its test suite).
var extensions = map[string]bool{
	"body": true, "comparator-i;ascii-casemap": true, "comparator-i;ascii-numeric": true,
	"comparator-i;octet": true, "comparator-i;unicode-casemap": true, "copy": true,
	"encoded-character": true, "envelope": true, "environment": true, "ereject": true,
	"fileinto": true, "imap4flags": true, "reject": true, "relational": true,
	"subaddress": true, "variables": true,
}

// commands and tests map each name the policy may use to the extension it
// needs ("" for the RFC 5228 core).
var (
	tags = map[string]string{
		"count": "relational", "value": "relational", "user": "subaddress",
		"detail": "subaddress", "copy": "copy",
	}
	commands = map[string]string{
		"require": "", "if": "", "elsif": "", "else": "", "stop": "", "keep": "",
		"discard": "", "redirect": "", "fileinto": "fileinto",
		"set": "variables", "reject": "reject", "ereject": "ereject",
		"setflag": "imap4flags", "addflag": "imap4flags", "removeflag": "imap4flags",
	}
	tests = map[string]string{
		"address": "", "allof": "", "anyof": "", "exists": "", "false": "", "true": "",
		"header": "", "not": "", "size": "", "envelope": "envelope", "string": "variables",
		"hasflag": "imap4flags", "environment": "environment", "body": "body",
	}
)

func loadOptions() *interp.Options {
	return &interp.Options{
		MaxRedirects:       0,
		MaxVariableCount:   128,
		MaxVariableNameLen: 32,
		MaxVariableLen:     4000,
	}
}

// scriptErrors collects the problems of one script, each at
// file:line:column.
type scriptErrors struct {
	file string
	list config.ErrorList
}

func (e *scriptErrors) add(pos lexer.Position, format string, args ...any) {
	e.list = append(e.list, &config.Error{Pos: config.Pos{File: e.file, Line: pos.Line, Col: pos.Col}, Msg: fmt.Sprintf(format, args...)})
}

// err returns nil, the one error, or the list.
func (e *scriptErrors) err() error {
	switch len(e.list) {
	case 0:
		return nil
	case 1:
		return e.list[0]
	}
	return e.list
}

// compile lexes, parses, checks and loads a script against cfg. Every
// problem is reported as "file:line:column: reason" in vipmilter's words;
// all problems the checks find are reported together (config.ErrorList).
func compile(path string, src []byte, cfg *config.Config) (*interp.Script, []parser.Cmd, error) {
	errs := &scriptErrors{file: path}
	toks, err := lexer.Lex(bytes.NewReader(src), &lexer.Options{Filename: errs.file, MaxTokens: 100000})
	if err != nil {
		if pos, what, ok := lexProblem(src); ok {
			errs.add(pos, "%s", what)
		} else {
			errs.addInterp(err, lexer.Position{Line: 1, Col: 1})
		}
		return nil, nil, errs.err()
	}
	cmds, err := parser.Parse(lexer.NewStream(toks), &parser.Options{MaxBlockNesting: 15, MaxTestNesting: 15})
	if err != nil {
		if posRE.MatchString(err.Error()) && !strings.Contains(err.Error(), "0:0: ") {
			errs.addInterp(err, lexer.Position{})
		} else if pos, what, ok := brackets(toks); ok {
			errs.add(pos, "%s", what)
		} else {
			errs.addInterp(err, endOf(toks))
		}
		return nil, nil, errs.err()
	}
	if pos, what, ok := brackets(toks); ok {
		errs.add(pos, "%s", what)
		return nil, nil, errs.err()
	}
	errs.check(cmds, cfg)
	if err := errs.err(); err != nil {
		return nil, nil, err
	}
	cmds = domainKeys(cmds)
	script, err := interp.LoadScript(cmds, loadOptions())
	if err != nil {
		errs.addInterp(err, failingCmd(cmds))
		return nil, nil, errs.err()
	}
	return script, cmds, nil
}

// check finds, before go-sieve loads the script, what it would refuse or
// what would fail at run time: refused commands, unknown commands, tests
// and extensions, a command or test used without requiring its extension,
// and literal binding names the binding file does not declare.
func (e *scriptErrors) check(cmds []parser.Cmd, cfg *config.Config) {
	required := map[string]bool{}
	var test func(t parser.Test)
	test = func(t parser.Test) {
		id := strings.ToLower(t.Id)
		ext, known := tests[id]
		switch {
		case !known:
			e.add(t.Position, "unknown test %q", t.Id)
		case ext != "" && !required[ext]:
			e.add(t.Position, "test %q needs require %q", t.Id, ext)
		}
		e.checkTags(t.Args, required)
		for _, sub := range t.Tests {
			test(sub)
		}
	}
	var walk func(cs []parser.Cmd)
	walk = func(cs []parser.Cmd) {
		for _, c := range cs {
			id := strings.ToLower(c.Id)
			ext, known := commands[id]
			switch {
			case refused[id] != "":
				e.add(c.Position, "%s", refused[id])
			case !known:
				e.add(c.Position, "unknown command %q", c.Id)
			case id == "require":
				for _, a := range c.Args {
					for _, x := range argStrings(a) {
						if !extensions[strings.ToLower(x)] {
							e.add(argPos(a, c.Position), "extension %q is not supported (supported: %s)", x, supportedList())
						}
						required[strings.ToLower(x)] = true
					}
				}
			case ext != "" && !required[ext]:
				e.add(c.Position, "command %q needs require %q", c.Id, ext)
			case id == "set":
				e.checkBinding(c, cfg)
			}
			e.checkTags(c.Args, required)
			for _, t := range c.Tests {
				test(t)
			}
			walk(c.Block)
		}
	}
	walk(cmds)
}

// checkTags reports a tag of an extension the script did not require.
func (e *scriptErrors) checkTags(args []parser.Arg, required map[string]bool) {
	for _, a := range args {
		if tag, ok := a.(parser.TagArg); ok {
			if ext := tags[strings.ToLower(tag.Value)]; ext != "" && !required[ext] {
				e.add(tag.Position, "tag :%s needs require %q", tag.Value, ext)
			}
		}
	}
}

func supportedList() string {
	var s []string
	for x := range extensions {
		if !strings.HasPrefix(x, "comparator-") && x != "fileinto" {
			s = append(s, x)
		}
	}
	sort.Strings(s)
	return strings.Join(s, ", ")
}

// checkBinding reports a literal value given to ${binding} that names no
// declared binding or group, and each such member of a comma list, with
// the closest declared name.
func (e *scriptErrors) checkBinding(c parser.Cmd, cfg *config.Config) {
	_, value, ok := bindingSet(c)
	if !ok || strings.Contains(value.Value, "${") || cfg == nil {
		return
	}
	for entry := range strings.SplitSeq(value.Value, ",") {
		entry = strings.TrimSpace(entry)
		if entry == "" || cfg.Binding(entry) != nil || cfg.Group(entry) != nil {
			continue
		}
		msg := fmt.Sprintf("binding %q is not declared in %s", entry, cfg.File)
		if cfg.File == "" {
			msg = fmt.Sprintf("binding %q is not declared", entry)
		}
		if near := closestName(entry, cfg); near != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", near)
		}
		e.add(value.Position, "%s", msg)
	}
}

// bindingSet returns the name and value arguments of `set "binding" V`
// (any modifiers, which vipmilter does not evaluate here, make it false).
func bindingSet(c parser.Cmd) (parser.StringArg, parser.StringArg, bool) {
	var str []parser.StringArg
	for _, a := range c.Args {
		switch a := a.(type) {
		case parser.StringArg:
			str = append(str, a)
		case parser.StringListArg:
			// go-sieve takes a list of one string where RFC 5229 says string.
			if len(a.Value) != 1 {
				return parser.StringArg{}, parser.StringArg{}, false
			}
			str = append(str, parser.StringArg{Value: a.Value[0], Position: a.Position})
		case parser.TagArg:
			return parser.StringArg{}, parser.StringArg{}, false
		}
	}
	if len(str) != 2 || !strings.EqualFold(str[0].Value, "binding") {
		return parser.StringArg{}, parser.StringArg{}, false
	}
	return str[0], str[1], true
}

// closestName is the declared binding or group name nearest to s, or ""
// when none is near enough to be a typo.
func closestName(s string, cfg *config.Config) string {
	var names []string
	for _, b := range cfg.Bindings {
		names = append(names, b.Name)
	}
	for _, g := range cfg.Groups {
		names = append(names, g.Name)
	}
	return config.Closest(s, names)
}

func argPos(a parser.Arg, def lexer.Position) lexer.Position {
	switch a := a.(type) {
	case parser.StringArg:
		return a.Position
	case parser.StringListArg:
		return a.Position
	}
	return def
}

// posRE finds the "LINE:COL: " go-sieve puts in its errors.
var posRE = regexp.MustCompile(`(\d+):(\d+): `)

// interpWords are go-sieve's internal function names that prefix its
// errors and mean nothing to an administrator.
var interpWords = regexp.MustCompile(`(LoadCmd|LoadTest) \S+: |LoadSpec: |LoadBlock: |loadRequire: |go-sieve/lexer: |unknown-position: |invalid-position: `)

// interpPhrases turn go-sieve's wording into vipmilter's.
var interpPhrases = strings.NewReplacer(
	"missing require", "needs require",
	"unknown tagged argument: ", "unknown tag :",
	"reading arguments: expected semicolon or arguments or block, got EOF", "missing \";\" or block at the end of the script",
	"reading arguments: ", "",
	"reading test list: ", "in test list: ",
	"reading string list: ", "in string list: ",
)

var argRequired = regexp.MustCompile(`^(\d+) argument is required$`)

// addInterp records an error go-sieve returned, at its own position or, if
// it has none, at def.
func (e *scriptErrors) addInterp(err error, def lexer.Position) {
	msg := err.Error()
	pos := def
	if loc := posRE.FindStringSubmatchIndex(msg); loc != nil {
		var p lexer.Position
		fmt.Sscanf(msg[loc[2]:loc[5]], "%d:%d", &p.Line, &p.Col)
		if p.Line > 0 {
			pos = p
		}
		msg = msg[:loc[0]] + msg[loc[1]:]
	}
	msg = interpWords.ReplaceAllString(msg, "")
	msg = interpPhrases.Replace(msg)
	if m := argRequired.FindStringSubmatch(msg); m != nil {
		msg = "argument " + m[1] + " is missing"
	}
	if pos.Line == 0 {
		e.list = append(e.list, &config.Error{Pos: config.Pos{File: e.file}, Msg: msg})
		return
	}
	e.add(pos, "%s", msg)
}

// failingCmd finds the first top-level command go-sieve refuses to load,
// for errors that carry no position; it costs a load per command, only on
// the error path.
func failingCmd(cmds []parser.Cmd) lexer.Position {
	for i := range cmds {
		if _, err := interp.LoadScript(cmds[:i+1], loadOptions()); err != nil {
			return cmds[i].Position
		}
	}
	return lexer.Position{}
}

// domainKeys makes U-labels and A-labels the same domain in the envelope
// and address tests: each key of a test that compares the domain or the
// whole address gets its other form (config.Domain, config.DomainUnicode)
// as an extra key. Keys with variables are left alone.
func domainKeys(cmds []parser.Cmd) []parser.Cmd {
	out := slices.Clone(cmds)
	var test func(t parser.Test) parser.Test
	test = func(t parser.Test) parser.Test {
		id := strings.ToLower(t.Id)
		if id == "envelope" || id == "address" {
			t = idnKeys(t)
		}
		if len(t.Tests) > 0 {
			t.Tests = slices.Clone(t.Tests)
			for i := range t.Tests {
				t.Tests[i] = test(t.Tests[i])
			}
		}
		return t
	}
	for i := range out {
		if len(out[i].Tests) > 0 {
			out[i].Tests = slices.Clone(out[i].Tests)
			for j := range out[i].Tests {
				out[i].Tests[j] = test(out[i].Tests[j])
			}
		}
		out[i].Block = domainKeys(out[i].Block)
	}
	return out
}

// idnKeys adds the other IDN form of each key of one envelope or address
// test whose address part is :domain or :all (the default).
func idnKeys(t parser.Test) parser.Test {
	part := "all"
	for _, a := range t.Args {
		if tag, ok := a.(parser.TagArg); ok {
			switch v := strings.ToLower(tag.Value); v {
			case "domain", "all", "localpart", "user", "detail":
				part = v
			case "count", "value":
				return t // keys are numbers or relations
			}
		}
	}
	if part != "domain" && part != "all" {
		return t
	}
	last := len(t.Args) - 1
	if last < 0 {
		return t
	}
	keys := argStrings(t.Args[last])
	if keys == nil {
		return t
	}
	var extra []string
	for _, k := range keys {
		if strings.Contains(k, "${") {
			continue
		}
		local, dom := "", k
		if part == "all" {
			at := strings.LastIndexByte(k, '@')
			if at < 0 {
				continue
			}
			local, dom = k[:at+1], k[at+1:]
		}
		a := config.Domain(dom)
		for _, alt := range []string{a, config.DomainUnicode(a)} {
			if v := local + alt; !strings.EqualFold(v, k) && !slices.Contains(extra, v) {
				extra = append(extra, v)
			}
		}
	}
	if len(extra) == 0 {
		return t
	}
	t.Args = slices.Clone(t.Args)
	pos := argPos(t.Args[last], t.Position)
	t.Args[last] = parser.StringListArg{Value: append(slices.Clone(keys), extra...), Position: pos}
	return t
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
			p.noteHeaderNames(t)
		case "size":
			p.needs.Size = true
		case "body":
			p.needs.Body = true
			if !hasTag(t.Args, "raw") {
				// :content and :text pick parts by Content-Type
				// (view.BodyParts).
				p.needs.Headers = true
				p.noteHeader("Content-Type")
			}
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

// noteHeaderNames records the field names a header, address or exists
// test reads: its first positional argument (RFC 5228 §5.1, §5.5, §5.7).
// A name built from a variable or an encoded character ("${...}") could be
// any field, so the policy then reads them all.
func (p *Policy) noteHeaderNames(t parser.Test) {
	pos := positional(t.Args)
	if len(pos) == 0 {
		p.allHeaders = true // go-sieve refuses this at load; stay safe
		return
	}
	for _, name := range argStrings(pos[0]) {
		if strings.Contains(name, "${") {
			p.allHeaders = true
		}
		p.noteHeader(name)
	}
}

func (p *Policy) noteHeader(name string) {
	if p.headers == nil {
		p.headers = map[string]bool{}
	}
	p.headers[strings.ToLower(name)] = true
}

// valueTags are the match tags that take a string argument (go-sieve's
// matcher spec: RFC 5228 :comparator, RFC 5231 :value and :count) and
// body's :content (RFC 5173 §5); every other tag stands alone.
var valueTags = map[string]bool{"comparator": true, "value": true, "count": true, "content": true}

// positional returns a test's string arguments that are not the value of
// a tag, in order.
func positional(args []parser.Arg) []parser.Arg {
	var out []parser.Arg
	skip := false
	for _, a := range args {
		if tag, ok := a.(parser.TagArg); ok {
			skip = valueTags[strings.ToLower(tag.Value)]
			continue
		}
		if skip {
			skip = false
			continue
		}
		if argStrings(a) != nil {
			out = append(out, a)
		}
	}
	return out
}

// hasTag reports whether args hold the tag :name.
func hasTag(args []parser.Arg, name string) bool {
	for _, a := range args {
		if tag, ok := a.(parser.TagArg); ok && strings.EqualFold(tag.Value, name) {
			return true
		}
	}
	return false
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
	_, value, ok := bindingSet(c)
	if !ok || strings.Contains(value.Value, "${") {
		return
	}
	v := strings.TrimSpace(value.Value)
	if _, dup := p.setLines[v]; dup {
		p.setLines[v] = 0
		return
	}
	p.setLines[v] = c.Line
}
