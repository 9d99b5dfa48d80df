package postfix

import (
	"fmt"
	"path/filepath"
	"strings"
)

// splitList splits a Postfix list value (postconf(5): elements separated by
// commas and/or whitespace) into its elements. A "{ ... }" group, as used by
// per-milter settings and inline: tables, stays one element.
func splitList(v string) []string {
	var out []string
	var cur strings.Builder
	depth := 0
	flush := func() {
		if s := strings.TrimSpace(cur.String()); s != "" {
			out = append(out, s)
		}
		cur.Reset()
	}
	for _, r := range v {
		switch {
		case r == '{':
			depth++
		case r == '}':
			if depth > 0 {
				depth--
			}
		case depth == 0 && (r == ',' || r == ' ' || r == '\t' || r == '\n'):
			flush()
			continue
		}
		cur.WriteRune(r)
	}
	flush()
	return out
}

// ownTable tells whether a list element names one of vipmilter's tables
// ("type:/dir/vipmilter_..."), in any config directory.
func ownTable(elem string) bool {
	_, path, ok := strings.Cut(elem, ":")
	return ok && strings.HasPrefix(filepath.Base(path), "vipmilter_")
}

// milterAddr is the address of a milter list element: "inet:h:p" or the
// first field of a "{ inet:h:p, default_action=accept }" group.
func milterAddr(elem string) string {
	e := strings.TrimSpace(elem)
	if strings.HasPrefix(e, "{") {
		e = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(e, "{"), "}"))
		if i := strings.IndexAny(e, ", \t"); i >= 0 {
			e = e[:i]
		}
	}
	return e
}

// others returns the elements of a list value that are not vipmilter's:
// its own tables, and milters at any of the addresses in ownMilters.
func others(v string, ownMilters ...string) []string {
	var rest []string
	for _, e := range splitList(v) {
		if ownTable(e) {
			continue
		}
		own := false
		for _, m := range ownMilters {
			if m != "" && milterAddr(e) == milterAddr(m) {
				own = true
			}
		}
		if !own {
			rest = append(rest, e)
		}
	}
	return rest
}

// masterValue joins list elements for a master.cf "-o name=value", which
// allows no whitespace: elements that contain whitespace or braces (inline:
// tables, per-milter settings) cannot be carried there.
func masterValue(name, source string, elems []string) (string, error) {
	for _, e := range elems {
		if strings.ContainsAny(e, " \t{}") {
			return "", fmt.Errorf("%s %s contains %q, which cannot be copied into a master.cf -o override; move it to a table file (e.g. regexp:/etc/postfix/%s) and run vipmilter postfix again", source, name, e, name)
		}
		if strings.HasPrefix(e, "$") {
			// In a -o override the reference would expand to that service's
			// own values (header_checks there is vipmilter's routing table).
			return "", fmt.Errorf("%s %s contains the parameter reference %q, which cannot be copied into a master.cf -o override; write the table names out and run vipmilter postfix again", source, name, e)
		}
	}
	return strings.Join(elems, ","), nil
}
