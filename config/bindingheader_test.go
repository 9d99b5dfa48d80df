package config

import (
	"strings"
	"testing"
)

func TestBindingHeaderValue(t *testing.T) {
	const key = "0123456789abcdef0123456789abcdef"
	long := strings.Repeat("b", 190)
	for _, tt := range []struct{ header, binding, key string }{
		{"X-Binding", "Newsletters", key},
		{"X-Binding", "a", key},
		{strings.Repeat("X", 64), "a", key},
		{"X-Binding", long, key}, // past the column already: one space
		{"X-Binding", "a", ""},
	} {
		v := BindingHeaderValue(tt.header, tt.binding, tt.key)
		line := tt.header + ": " + v
		name, rest, _ := strings.Cut(v, " ")
		switch {
		case tt.key == "" && v != tt.binding:
			t.Errorf("%q, no key: %q, want the binding alone", tt.binding, v)
		case tt.key == "":
		case name != tt.binding || strings.TrimLeft(rest, " ") != tt.key:
			t.Errorf("%q: value %q is not binding, spaces, key", tt.binding, v)
		case strings.Index(line, tt.key) < HeaderKeyColumn:
			t.Errorf("%q: key starts at byte %d of %q, want ≥ %d", tt.binding, strings.Index(line, tt.key), line, HeaderKeyColumn)
		case len(tt.header)+2+len(tt.binding) < HeaderKeyColumn && strings.Index(line, tt.key) != HeaderKeyColumn:
			t.Errorf("%q: key at %d, want exactly %d (no more padding than needed)", tt.binding, strings.Index(line, tt.key), HeaderKeyColumn)
		}
	}
}
