package config

import (
	"fmt"
	"strings"
)

// Error is one problem in a binding file, at a place, about a keyword or
// value. Its text is "file:line:column: keyword: message".
type Error struct {
	Pos     Pos
	Keyword string // the keyword or value the problem is about, "" if none
	Msg     string
}

func (e *Error) Error() string {
	var b strings.Builder
	if e.Pos.File != "" {
		fmt.Fprintf(&b, "%s:%d:%d: ", e.Pos.File, e.Pos.Line, e.Pos.Col)
	}
	if e.Keyword != "" {
		b.WriteString(e.Keyword)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// ErrorList is every problem found in one load: Load reports them all at
// once (as mox and maddy do) rather than stopping at the first.
type ErrorList []*Error

func (l ErrorList) Error() string {
	s := make([]string, len(l))
	for i, e := range l {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}
