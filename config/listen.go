package config

import (
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
)

// Listen is a socket address written in Postfix's milter notation
// (postconf(5) "smtpd_milters"): "unix:/path" (alias "local:/path"),
// "inet:host:port" or "inet6:[addr]:port". It is parsed once, here; every
// consumer (the milter's listener, the Postfix renderer, serve's systemd
// socket check) uses the typed value.
type Listen struct {
	// Network is "unix" or "tcp" (net.Listen's names).
	Network string
	// Address is the absolute socket path for "unix", "host:port" for "tcp".
	Address string
}

// IsZero reports whether l is unset.
func (l Listen) IsZero() bool { return l.Network == "" }

// String returns l in Postfix notation, canonical form: "unix:/path" or
// "inet:host:port" ("inet:[v6addr]:port" for an IPv6 literal).
func (l Listen) String() string {
	switch l.Network {
	case "unix":
		return "unix:" + l.Address
	case "tcp":
		return "inet:" + l.Address
	}
	return ""
}

// Path is the socket path of a unix Listen, "" otherwise.
func (l Listen) Path() string {
	if l.Network == "unix" {
		return l.Address
	}
	return ""
}

// socketPathUnsafe are the characters a unix socket path may not hold: it
// is written into main.cf (smtpd_milters), where white space and commas
// split the list, "{" and "}" group per-milter settings, "$" expands a
// parameter, and quotes and backslashes are read differently by different
// Postfix versions; control characters would end or split the line.
// Only printable ASCII is taken at all: main.cf, sendmail.cf and the
// kernel's socket address are byte strings, and a path that is not plain
// ASCII (or not UTF-8) would be read back differently by each of them.
const socketPathUnsafe = " ,${}\"'\\"

func safeSocketPath(p string) bool {
	return !strings.ContainsFunc(p, func(r rune) bool {
		return r <= ' ' || r >= 0x7f || strings.ContainsRune(socketPathUnsafe, r)
	})
}

// ParseListen parses s in Postfix milter notation. A unix path must be
// absolute and free of the characters socketPathUnsafe lists; an
// inet host is an IP address or a host name; the port is 1–65535.
func ParseListen(s string) (Listen, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Listen{}, fmt.Errorf("%q: want unix:/path, inet:host:port or inet6:[addr]:port", s)
	}
	switch kind {
	case "unix", "local":
		if !filepath.IsAbs(rest) || !safeSocketPath(rest) {
			return Listen{}, fmt.Errorf("%q: a unix socket needs an absolute path without spaces, control or non-ASCII characters, or any of , $ { } \" ' \\ (Postfix splits milter lists on spaces and commas and expands $)", s)
		}
		return Listen{Network: "unix", Address: filepath.Clean(rest)}, nil
	case "inet", "inet6":
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return Listen{}, fmt.Errorf("%q: want %s:host:port (%v)", s, kind, err)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return Listen{}, fmt.Errorf("%q: port must be a number from 1 to 65535", s)
		}
		if a, err := netip.ParseAddr(host); err == nil {
			if a.Zone() != "" {
				return Listen{}, fmt.Errorf("%q: an address with a zone cannot be written into Postfix's configuration", s)
			}
			host = a.String()
		} else if !ValidHostname(host) {
			return Listen{}, fmt.Errorf("%q: host must be an IP address or host name", s)
		}
		return Listen{Network: "tcp", Address: net.JoinHostPort(host, port)}, nil
	}
	return Listen{}, fmt.Errorf("%q: unknown socket type %q; want unix, inet or inet6", s, kind)
}

// MustParseListen is ParseListen for constants and tests; it panics on error.
func MustParseListen(s string) Listen {
	l, err := ParseListen(s)
	if err != nil {
		panic(err)
	}
	return l
}
