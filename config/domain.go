package config

import (
	"strings"

	"golang.org/x/net/idna"
)

// domainProfile maps U-labels to A-labels the way registries and MTAs do
// (UTS #46 non-transitional, as browsers and Postfix's smtputf8 lookups),
// without the STD3 host-name rules, which mail domains do not always follow.
var domainProfile = idna.New(idna.MapForLookup(), idna.Transitional(false), idna.StrictDomainName(false))

// Domain returns the canonical form of a mail domain, the one key under
// which every comparison in vipmilter is made (Match_Domain, envelope and
// header domains, group stickiness): lower case, A-labels (RFC 5890: a
// domain written with U-labels such as "müller.example" and its A-label
// form "xn--mller-kva.example" are the same domain), and without the
// trailing dot of a fully qualified name (Postfix strips it from envelope
// addresses, RFC 5321 §4.1.2 forbids it). An address literal ("[192.0.2.1]")
// and text that is not a valid IDN are returned lower-cased, unchanged
// otherwise.
func Domain(d string) string {
	d = strings.TrimSuffix(d, ".")
	if d == "" || d[0] == '[' {
		return strings.ToLower(d)
	}
	ascii := true
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii && !strings.Contains(d, "xn--") && !strings.Contains(d, "XN--") {
		return strings.ToLower(d)
	}
	a, err := domainProfile.ToASCII(d)
	if err != nil {
		return strings.ToLower(d)
	}
	return strings.ToLower(a)
}

// DomainUnicode returns d with A-labels shown as U-labels, for messages
// to people; it returns d unchanged when it cannot convert.
func DomainUnicode(d string) string {
	u, err := domainProfile.ToUnicode(d)
	if err != nil {
		return d
	}
	return u
}

// canonicalDomain is Domain for a domain written in the binding file, where
// mistakes are refused rather than passed on: it reports false unless d is
// a domain name whose canonical form is a DNS host name (LDH labels, so it
// is safe in every MTA table it is written to) and whose A-labels are valid
// IDNA ("xn--zz" is not).
func canonicalDomain(d string) (string, bool) {
	if _, err := domainProfile.ToASCII(strings.TrimSuffix(d, ".")); err != nil {
		return "", false
	}
	c := Domain(d)
	return c, ValidHostname(c)
}

// domainText shows a canonical domain to people: "müller.example
// (xn--mller-kva.example)" for an IDN, the domain alone otherwise.
func domainText(d string) string {
	if u := DomainUnicode(d); u != d {
		return u + " (" + d + ")"
	}
	return d
}
