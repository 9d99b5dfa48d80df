package config

import "strings"

// HeaderKeyColumn is the byte offset in the binding header line
// ("<Binding_Header>: <value>") before which the key never starts. Postfix
// logs the header line of every header_checks match that FILTERs, HOLDs,
// WARNs, … cut to its first 200 bytes (cleanup/cleanup_message.c,
// cleanup_act_log: "%.200s"), and of a milter_header_checks match to its
// first 60 (cleanup/cleanup_milter.c, cleanup_milter_hbc_log: "%.60s"). A
// key placed after both never reaches the mail log, so reading the log
// does not teach anyone the key.
const HeaderKeyColumn = 200

// BindingHeaderValue is the value of the binding header the milter and the
// policy service write for binding: "<binding> <key>", with as many more
// spaces before the key as put it at byte HeaderKeyColumn of the header
// line "<header>: <value>" (at least one space; a longer header name and
// binding name put it further). With key "" (tests only) it is just
// "<binding>". The Postfix side matches the run of spaces as
// [[:space:]]+, so folding it onto a continuation line changes nothing.
func BindingHeaderValue(header, binding, key string) string {
	if key == "" {
		return binding
	}
	pad := max(1, HeaderKeyColumn-len(header)-len(": ")-len(binding))
	return binding + strings.Repeat(" ", pad) + key
}
