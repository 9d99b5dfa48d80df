package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Node is one statement of a binding file before it is given a meaning:
// either "Name = Value" or a stanza "Name Label { Children }". Keeping the
// generic tree separate from decoding (as maddy's cfgparser does) lets every
// later error point at the exact file, line and column.
type Node struct {
	Name string
	Pos  Pos

	// Value is the right-hand side of "Name = Value".
	Value    string
	ValuePos Pos

	// Block is true for a stanza; Label is its name ("Binding Label { }").
	Block    bool
	Label    string
	LabelPos Pos
	Children []*Node
}

type tokenKind int

const (
	tokEOF tokenKind = iota
	tokWord
	tokString
	tokEquals
	tokOpen
	tokClose
)

func (k tokenKind) String() string {
	switch k {
	case tokEOF:
		return "end of file"
	case tokWord, tokString:
		return "word"
	case tokEquals:
		return `"="`
	case tokOpen:
		return `"{"`
	case tokClose:
		return `"}"`
	}
	return "?"
}

type token struct {
	kind tokenKind
	text string
	pos  Pos
	// bad is the first character of a word or string that no value may
	// hold (see badRune); the parser reports it with the keyword it
	// belongs to.
	bad *Error
}

// lexer splits a binding file into words, quoted strings, "=", "{" and "}".
// Newlines are plain white space: Momentum files put several settings on one
// line ("Binding "P1" { Bind_Address = 10.0.0.2  Weight = 3 }").
type lexer struct {
	src       []byte
	off       int
	line, col int
	file      string
}

func (lx *lexer) pos() Pos { return Pos{File: lx.file, Line: lx.line, Col: lx.col} }

func (lx *lexer) advance() byte {
	c := lx.src[lx.off]
	lx.off++
	if c == '\n' {
		lx.line++
		lx.col = 1
	} else if c&0xC0 != 0x80 { // count runes, not UTF-8 continuation bytes
		lx.col++
	}
	return c
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v'
}

func isDelim(c byte) bool {
	return isSpace(c) || c == '=' || c == '{' || c == '}' || c == '"' || c == '#'
}

// badRune reports why the character at the start of b may not appear in a
// word or quoted string, or "" when it may. Values end up in MTA
// configuration files, where a control character (a CR ends a master.cf
// line, a NUL ends a C string) or malformed UTF-8 would be read differently
// from what the administrator sees; no legitimate value needs either.
func badRune(b []byte) (size int, why string) {
	c := b[0]
	if c < utf8.RuneSelf {
		if c < 0x20 || c == 0x7f {
			return 1, fmt.Sprintf("control character %U is not allowed", c)
		}
		return 1, ""
	}
	r, size := utf8.DecodeRune(b)
	if r == utf8.RuneError && size <= 1 {
		return 1, "malformed UTF-8 is not allowed"
	}
	if unicode.IsControl(r) {
		return size, fmt.Sprintf("control character %U is not allowed", r)
	}
	return size, ""
}

func (lx *lexer) next() (token, *Error) {
	for lx.off < len(lx.src) {
		c := lx.src[lx.off]
		if isSpace(c) {
			lx.advance()
			continue
		}
		if c == '#' {
			for lx.off < len(lx.src) && lx.src[lx.off] != '\n' {
				lx.advance()
			}
			continue
		}
		break
	}
	p := lx.pos()
	if lx.off >= len(lx.src) {
		return token{kind: tokEOF, pos: p}, nil
	}
	// take consumes one character and returns its bytes, noting in bad the
	// first one that no word or string may hold.
	var bad *Error
	take := func() []byte {
		start := lx.off
		size, why := badRune(lx.src[lx.off:])
		if why != "" && bad == nil {
			bad = &Error{Pos: lx.pos(), Msg: why}
		}
		for i := 0; i < size && lx.off < len(lx.src); i++ {
			lx.advance()
		}
		return lx.src[start:lx.off]
	}
	switch c := lx.src[lx.off]; c {
	case '=':
		lx.advance()
		return token{kind: tokEquals, text: "=", pos: p}, nil
	case '{':
		lx.advance()
		return token{kind: tokOpen, text: "{", pos: p}, nil
	case '}':
		lx.advance()
		return token{kind: tokClose, text: "}", pos: p}, nil
	case '"':
		lx.advance()
		var b strings.Builder
		for {
			if lx.off >= len(lx.src) || lx.src[lx.off] == '\n' {
				return token{}, &Error{Pos: p, Msg: "unterminated quoted string"}
			}
			switch lx.src[lx.off] {
			case '"':
				lx.advance()
				return token{kind: tokString, text: b.String(), pos: p, bad: bad}, nil
			case '\\':
				lx.advance()
				if lx.off >= len(lx.src) || lx.src[lx.off] == '\n' {
					return token{}, &Error{Pos: p, Msg: "unterminated quoted string"}
				}
			}
			b.Write(take())
		}
	}
	start := lx.off
	for lx.off < len(lx.src) && !isDelim(lx.src[lx.off]) {
		take()
	}
	return token{kind: tokWord, text: string(lx.src[start:lx.off]), pos: p, bad: bad}, nil
}

// parser builds the node tree with one token of look-ahead.
type parser struct {
	lx   lexer
	tok  token
	errs ErrorList
	// keyword is the statement being read, named in errors about its
	// label or value ("" while reading the keyword itself).
	keyword string
	// open are the stanzas being read, outermost first.
	open []*Node
}

// scan reads the next token. A token holding a character no value may
// hold stops the parse like a syntax error.
func (p *parser) scan() bool {
	t, err := p.lx.next()
	if err == nil && t.bad != nil {
		err = t.bad
	}
	if err != nil {
		if err.Keyword == "" {
			err.Keyword = p.keyword
		}
		p.errs = append(p.errs, err)
		return false
	}
	p.tok = t
	return true
}

// ParseTree reads a binding file into its generic tree. Syntax errors stop
// the parse: after one, positions of later tokens could not be trusted to
// belong to the statement the reader meant.
func ParseTree(name string, src []byte) ([]*Node, error) {
	p := &parser{lx: lexer{src: src, line: 1, col: 1, file: name}}
	if !p.scan() {
		return nil, p.errs
	}
	nodes, ok := p.block(0, nil, Pos{})
	if !ok {
		return nil, p.errs
	}
	return nodes, nil
}

func (p *parser) fail(pos Pos, format string, args ...any) bool {
	p.errs = append(p.errs, &Error{Pos: pos, Msg: fmt.Sprintf(format, args...)})
	return false
}

// block reads statements up to the "}" at open that closes stanza (nil at
// the top level, which ends at the end of the file).
func (p *parser) block(depth int, stanza *Node, open Pos) ([]*Node, bool) {
	var nodes []*Node
	for {
		switch p.tok.kind {
		case tokEOF:
			if depth > 0 {
				return nil, p.fail(open, `%s: "{" is never closed`, stanza.Name)
			}
			return nodes, true
		case tokClose:
			if depth == 0 {
				return nil, p.fail(p.tok.pos, `unexpected "}" with no open stanza`)
			}
			if !p.scan() {
				return nil, false
			}
			return nodes, true
		case tokWord:
		default:
			return nil, p.fail(p.tok.pos, "expected a keyword, found %s", p.tok.kind)
		}
		n := &Node{Name: p.tok.text, Pos: p.tok.pos}
		p.keyword = n.Name
		if !p.scan() {
			return nil, false
		}
		switch p.tok.kind {
		case tokEquals:
			if !p.scan() {
				return nil, false
			}
			if p.tok.kind != tokWord && p.tok.kind != tokString {
				return nil, p.fail(p.tok.pos, "%s: expected a value after \"=\", found %s", n.Name, p.tok.kind)
			}
			n.Value, n.ValuePos = p.tok.text, p.tok.pos
			p.keyword = ""
			if !p.scan() {
				return nil, false
			}
		case tokWord, tokString:
			if k := lookupKeyword(n.Name); k != nil && !k.Stanza {
				return nil, p.fail(p.tok.pos, "%s: expected \"=\" before %q", n.Name, p.tok.text)
			}
			n.Label, n.LabelPos, n.Block = p.tok.text, p.tok.pos, true
			if !p.scan() {
				return nil, false
			}
			if p.tok.kind != tokOpen {
				return nil, p.fail(p.tok.pos, "%s %q: expected \"{\", found %s", n.Name, n.Label, p.tok.kind)
			}
			fallthrough
		case tokOpen:
			n.Block = true
			if depth >= 2 {
				// Mostly a "}" forgotten earlier: say which stanzas are
				// still open, so the place can be found.
				var inside []string
				for _, o := range p.open {
					inside = append(inside, fmt.Sprintf("%s %q (line %d)", o.Name, o.Label, o.Pos.Line))
				}
				return nil, p.fail(n.Pos, "%s: stanzas nest at most two deep (Binding_Group > Binding), and this one is inside %s: is a \"}\" missing?", n.Name, strings.Join(inside, " > "))
			}
			brace := p.tok.pos
			p.keyword = ""
			if !p.scan() {
				return nil, false
			}
			p.open = append(p.open, n)
			children, ok := p.block(depth+1, n, brace)
			p.open = p.open[:len(p.open)-1]
			if !ok {
				return nil, false
			}
			n.Children = children
		default:
			return nil, p.fail(p.tok.pos, "%s: expected \"=\" and a value, found %s", n.Name, p.tok.kind)
		}
		nodes = append(nodes, n)
	}
}

// Load reads and decodes the binding file at path. On failure the error is
// an ErrorList naming every problem with file:line:column.
func Load(path string) (*Config, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("binding file %s: %w", path, err)
	}
	src, err := os.ReadFile(abs)
	if err != nil {
		return nil, fmt.Errorf("binding file: %w", err)
	}
	return Parse(abs, src)
}

// Parse decodes a binding file held in memory; name is used in error
// positions and relative paths (Sieve_Script) are resolved against its
// directory.
func Parse(name string, src []byte) (*Config, error) {
	nodes, err := ParseTree(name, src)
	if err != nil {
		return nil, err
	}
	return decode(name, nodes)
}
