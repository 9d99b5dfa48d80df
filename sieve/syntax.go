package sieve

import (
	"bytes"
	"fmt"
	"regexp"

	"github.com/foxcpp/go-sieve/lexer"
)

// go-sieve's lexer reports most of its errors without a position, and its
// parser none for a block left open at the end of the file. These find the
// place, so every script error names file:line:column.

// textEnd is the line that ends a multi-line "text:" string (RFC 5228 §2.4.2).
var textEnd = regexp.MustCompile(`\n\.\r?\n|\n\.\r?$`)

// lexProblem scans src as the Sieve lexer does and returns the first place
// it cannot go on from, with what is wrong there: a character no token
// starts with, a CR without LF, or a string, comment or text that is never
// closed. ok is false when the scan finds nothing.
func lexProblem(src []byte) (pos lexer.Position, what string, ok bool) {
	line, col, i := 1, 0, 0
	next := func() byte {
		b := src[i]
		i++
		if b == '\n' {
			line, col = line+1, 0
		} else {
			col++
		}
		return b
	}
	skip := func(n int) {
		for ; n > 0 && i < len(src); n-- {
			next()
		}
	}
	// A quoted string may span lines (RFC 5228 §2.4.2), but one that does
	// is mostly a closing quote forgotten earlier: the scan then fails
	// further on, where the next quote left everything after it outside a
	// string. Such a failure names that string too.
	var spanning *lexer.Position
	hint := func(what string) string {
		if spanning == nil {
			return what
		}
		return fmt.Sprintf("%s (the string opened at line %d, column %d runs over several lines: is a closing \" missing there?)", what, spanning.Line, spanning.Col)
	}
	for i < len(src) {
		b := next()
		at := lexer.Position{Line: line, Col: col}
		switch {
		case b == 0:
			return at, hint("NUL character"), true
		case b == '\r' && (i >= len(src) || src[i] != '\n'):
			return at, hint("CR not followed by LF"), true
		case b == '"':
			closed, from := false, line
			for i < len(src) && !closed {
				switch next() {
				case '\\':
					skip(1)
				case '"':
					closed = true
				}
			}
			if !closed {
				return at, "string is never closed (missing \")", true
			}
			if line != from && spanning == nil {
				spanning = &at
			}
		case b == '#':
			for i < len(src) && src[i] != '\n' {
				next()
			}
		case b == '/':
			if i >= len(src) || src[i] != '*' {
				return at, hint(`unexpected "/" (comments are "# ..." or "/* ... */")`), true
			}
			end := bytes.Index(src[i+1:], []byte("*/"))
			if end < 0 {
				return at, `comment is never closed (missing "*/")`, true
			}
			skip(end + 3)
		case b == 't' && bytes.HasPrefix(src[i:], []byte("ext:")):
			loc := textEnd.FindIndex(src[i:])
			if loc == nil {
				return at, `text: is never closed (a line with only "." ends it)`, true
			}
			skip(loc[1])
		case isWordByte(b):
			for i < len(src) && isWordByte(src[i]) {
				next()
			}
		case bytes.IndexByte([]byte("[]{}(),:; \t\n\r"), b) >= 0:
		default:
			return at, hint(fmt.Sprintf("unexpected character %q", rune(b))), true
		}
	}
	return lexer.Position{}, "", false
}

func isWordByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_'
}

// brackets finds a "}", ")" or "]" that closes nothing open (go-sieve's
// parser silently drops the rest of the script after a stray "}"), or else
// the innermost "{", "(" or "[" never closed.
func brackets(toks []lexer.Token) (lexer.Position, string, bool) {
	type open struct {
		pos        lexer.Position
		char, want string
	}
	var stack []open
	for _, t := range toks {
		l, c := t.LineCol()
		at := lexer.Position{Line: l, Col: c}
		var opener, closer string
		switch t.(type) {
		case lexer.BlockStart:
			opener, closer = "{", "}"
		case lexer.TestListStart:
			opener, closer = "(", ")"
		case lexer.ListStart:
			opener, closer = "[", "]"
		case lexer.BlockEnd:
			closer = "}"
		case lexer.TestListEnd:
			closer = ")"
		case lexer.ListEnd:
			closer = "]"
		default:
			continue
		}
		if opener != "" {
			stack = append(stack, open{at, opener, closer})
			continue
		}
		if len(stack) == 0 || stack[len(stack)-1].want != closer {
			return at, fmt.Sprintf("unexpected %q: nothing to close here", closer), true
		}
		stack = stack[:len(stack)-1]
	}
	if len(stack) == 0 {
		return lexer.Position{}, "", false
	}
	o := stack[len(stack)-1]
	return o.pos, fmt.Sprintf("%q is never closed", o.char), true
}

// endOf is the position of the last token, or line 1 column 1.
func endOf(toks []lexer.Token) lexer.Position {
	if len(toks) == 0 {
		return lexer.Position{Line: 1, Col: 1}
	}
	l, c := toks[len(toks)-1].LineCol()
	return lexer.Position{Line: l, Col: c}
}
