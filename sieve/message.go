package sieve

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/textproto"
	"regexp"
	"strings"

	// charset gives the RFC 2047 decoder every charset go-message knows,
	// and (by setting message.CharsetReader) the address parser go-sieve
	// uses for the address test too.
	"github.com/emersion/go-message/charset"
	"github.com/emersion/go-message/mail"
	"github.com/foxcpp/go-sieve/interp"

	"github.com/vipmilter/vipmilter/config"
)

// Message is what the policy can see of one message. The milter fills it
// stage by stage; "vipmilter test" fills it from flags and a file. Header
// fields are added with AddHeader, never written into Header directly, so
// every source gives the policy the same view.
type Message struct {
	From       string   // envelope sender without <>, "" for the null sender
	To         []string // envelope recipients in RCPT order, without <>
	Auth       string   // SASL login ({auth_authen}), "" if none
	RemoteIP   string   // client address
	RemoteHost string   // client host name as Postfix resolved it
	Helo       string   // client's HELO/EHLO argument
	QueueID    string   // Postfix queue id (macro i)
	Daemon     string   // Postfix {daemon_name}, e.g. "smtpd", "submission"
	Phase      string   // RFC 5183 "phase", normally "during"

	// Header holds each field unfolded and trimmed, still RFC 2047
	// encoded: the policy decodes at comparison time. nil when the policy
	// does not need headers.
	Header textproto.MIMEHeader
	Size   int    // message size in bytes (headers + body) as far as known
	Body   []byte // nil unless the policy needs the body; capped by Max_Body_Bytes
}

// AddHeader records one header field of the message as the MTA passed it:
// value possibly folded (CRLF or LF followed by white space, RFC 5322
// §2.2.3), with the white space after the colon. Every source of a
// Message — the milter on Postfix or Sendmail, "vipmilter test" reading a
// file — calls it once per field, in order, so the policy sees one view
// built one way.
func (m *Message) AddHeader(name, value string) {
	if m.Header == nil {
		m.Header = make(textproto.MIMEHeader)
	}
	m.Header.Add(name, headerValue(value))
}

// Parse fills m from a whole RFC 5322 message as an MTA would pass it to
// the milter: every header field through AddHeader, in order and still
// folded; Size as the length of raw; and, when withBody is true, Body
// capped at maxBody bytes (0: no cap). A leading mbox "From " line is
// skipped. A header line that is neither a field nor a continuation is an
// error naming its line; raw without an empty line is all header.
func (m *Message) Parse(raw []byte, withBody bool, maxBody int64) error {
	m.Size = len(raw)
	rest := raw
	if bytes.HasPrefix(rest, []byte("From ")) {
		if i := bytes.IndexByte(rest, '\n'); i >= 0 {
			rest = rest[i+1:]
		}
	}
	var name string
	var value strings.Builder
	flush := func() {
		if name != "" {
			m.AddHeader(name, value.String())
		}
		name = ""
		value.Reset()
	}
	for line := 1; len(rest) > 0; line++ {
		end := bytes.IndexByte(rest, '\n')
		var l []byte
		if end < 0 {
			l, rest = rest, nil
		} else {
			l, rest = rest[:end+1], rest[end+1:]
		}
		text := strings.TrimRight(string(l), "\r\n")
		switch {
		case text == "":
			flush()
			if withBody {
				m.Body = rest
				if maxBody > 0 && int64(len(m.Body)) > maxBody {
					m.Body = m.Body[:maxBody]
				}
			}
			return nil
		case text[0] == ' ' || text[0] == '\t':
			if name == "" {
				return fmt.Errorf("line %d: continuation line before any header field", line)
			}
			value.WriteString("\r\n")
			value.WriteString(text)
		default:
			flush()
			n, v, ok := strings.Cut(text, ":")
			n = strings.TrimRight(n, " \t") // obsolete "Name :" (RFC 5322 §4.5)
			if !ok || n == "" || strings.ContainsAny(n, " \t") {
				return fmt.Errorf("line %d: not a header field (no \"name:\")", line)
			}
			name = n
			value.WriteString(v)
		}
	}
	flush()
	if withBody {
		m.Body = []byte{}
	}
	return nil
}

// headerValue unfolds a raw field value (RFC 5322 §2.2.3: the line break
// goes, the white space after it stays) and trims the white space around it.
func headerValue(v string) string {
	if strings.ContainsAny(v, "\r\n") {
		v = unfold.Replace(v)
	}
	return strings.TrimSpace(v)
}

// unfold removes the line breaks of a folded field (RFC 5322 §2.2.3).
var unfold = strings.NewReplacer("\r\n", "", "\n", "", "\r", "")

// encodedWord matches one RFC 2047 encoded word (charset is a token: no
// especials).
var encodedWord = regexp.MustCompile(`=\?[^?\s()<>@,;:"/\[\]=.]+\?[bBqQ]\?[^?\s]*\?=`)

var wordDecoder = &mime.WordDecoder{CharsetReader: charset.Reader}

// addressFields are the header fields the Sieve address test reads
// (RFC 5228 §5.1 and the list go-sieve accepts), compared lower-cased.
var addressFields = map[string]bool{
	"from": true, "to": true, "cc": true, "bcc": true, "sender": true,
	"resent-from": true, "resent-to": true, "reply-to": true, "resent-reply-to": true,
	"resent-sender": true, "resent-cc": true, "resent-bcc": true,
	"for-approval": true, "for-handling": true, "for-comment": true, "apparently-to": true,
	"errors-to": true, "delivered-to": true, "return-receipt-to": true, "x-admin": true,
	"read-receipt-to": true, "x-confirm-reading-to": true, "return-receipt-requested": true,
	"registered-mail-reply-requested-by": true, "mail-followup-to": true, "mail-reply-to": true,
	"abuse-reports-to": true, "x-complaints-to": true, "x-report-abuse-to": true,
	"x-beenthere": true, "x-original-from": true, "x-original-to": true,
}

// decodeField returns the text the Sieve header and address tests compare
// (RFC 5228 §2.7.2): encoded words decoded to UTF-8 from any charset
// go-message knows; white space between adjacent encoded words dropped
// (RFC 2047 §6.2); a word that cannot be decoded kept as it is. In an
// address field a decoded run that holds characters special in addresses
// (a comma in a display name) is written as a quoted string, so the
// address test still parses the same addresses from the same view.
func decodeField(v string, address bool) string {
	locs := encodedWord.FindAllStringIndex(v, -1)
	if locs == nil {
		return v
	}
	var b strings.Builder
	last := 0
	for i := 0; i < len(locs); {
		// A run of encoded words separated only by white space is one
		// piece of text.
		j := i + 1
		for j < len(locs) && strings.TrimSpace(v[locs[j-1][1]:locs[j][0]]) == "" {
			j++
		}
		start, end := locs[i][0], locs[j-1][1]
		b.WriteString(v[last:start])
		var text strings.Builder
		ok := true
		for k := i; k < j; k++ {
			w := v[locs[k][0]:locs[k][1]]
			d, err := wordDecoder.Decode(w)
			if err != nil {
				ok = false
				d = w
				if k+1 < j {
					d += v[locs[k][1]:locs[k+1][0]]
				}
			}
			text.WriteString(d)
		}
		s := text.String()
		if address && (!ok || strings.ContainsAny(s, "()<>[]:;@\\,.\"")) {
			s = quoteDisplay(s, start > 0 && v[start-1] == '"')
		}
		b.WriteString(s)
		last = end
		i = j
	}
	b.WriteString(v[last:])
	return b.String()
}

// sameAddresses reports whether view yields the addresses raw yields, as
// the address test parses them (go-message, every charset); true when raw
// has no parsable address list.
func sameAddresses(raw, view string) bool {
	before, err := mail.ParseAddressList(raw)
	if err != nil {
		return true
	}
	after, err := mail.ParseAddressList(view)
	if err != nil || len(after) != len(before) {
		return false
	}
	for i := range before {
		if before[i].Address != after[i].Address {
			return false
		}
	}
	return true
}

// quoteDisplay writes s as an RFC 5322 quoted string, or only escapes it
// when it already stands inside one.
func quoteDisplay(s string, inQuotes bool) string {
	s = strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s)
	if inQuotes {
		return s
	}
	return `"` + s + `"`
}

// envelopeAddress is an envelope address as the policy compares it: the
// trailing dot of a fully qualified domain removed, as Postfix does before
// its own lookups (RFC 5321 §4.1.2 has no trailing dot).
func envelopeAddress(a string) string {
	if strings.HasSuffix(a, ".") {
		if at := strings.LastIndexByte(a, '@'); at >= 0 {
			return strings.TrimRight(a, ".")
		}
	}
	return a
}

// domainOf returns the canonical domain of an address (config.Domain), or
// "" when it has none.
func domainOf(addr string) string {
	if i := strings.LastIndexByte(addr, '@'); i >= 0 {
		return config.Domain(addr[i+1:])
	}
	return ""
}

// view shows a Message to go-sieve with one chosen envelope recipient.
type view struct {
	m       *Message
	to      string
	p       *Policy
	decoded map[string][]string // decoded header values, filled on first use
	ctx     context.Context
	body    *bodyResults // shared by the runs for one message; nil without body tests
}

func (v *view) EnvelopeFrom() string { return envelopeAddress(v.m.From) }
func (v *view) EnvelopeTo() string   { return envelopeAddress(v.to) }
func (v *view) AuthUsername() string { return v.m.Auth }
func (v *view) MessageSize() int     { return v.m.Size }

// HeaderGet returns the decoded values of a field (see decodeField).
// Values without an encoded word are returned as stored, without copying:
// the common case costs one substring search.
func (v *view) HeaderGet(key string) ([]string, error) {
	if v.m.Header == nil {
		return nil, nil
	}
	// Scripts mostly name headers in canonical form ("Subject"): a direct
	// lookup skips canonicalising the key on every test of every rule.
	vs, ok := v.m.Header[key]
	if !ok {
		key = textproto.CanonicalMIMEHeaderKey(key)
		vs = v.m.Header[key]
	}
	encoded := false
	for _, s := range vs {
		if strings.Contains(s, "=?") {
			encoded = true
			break
		}
	}
	if !encoded {
		return vs, nil
	}
	if d, ok := v.decoded[key]; ok {
		return d, nil
	}
	address := addressFields[strings.ToLower(key)]
	d := make([]string, len(vs))
	for i, s := range vs {
		d[i] = decodeField(s, address)
		if address && !sameAddresses(s, d[i]) {
			// Text that only looks like an encoded word inside an
			// address: the address test must still find the address.
			d[i] = s
		}
	}
	if v.decoded == nil {
		v.decoded = make(map[string][]string)
	}
	v.decoded[key] = d
	return d, nil
}

// environment maps each RFC 5183 item vipmilter offers (standard and
// vnd.vipmilter) to its value; other items are not present.
var environment = map[string]func(v *view) string{
	"remote-ip":   func(v *view) string { return v.m.RemoteIP },
	"remote-host": func(v *view) string { return v.m.RemoteHost },
	"host":        func(v *view) string { return v.p.host },
	"domain":      func(v *view) string { return v.p.domain },
	"phase": func(v *view) string {
		if v.m.Phase == "" {
			return "during"
		}
		return v.m.Phase
	},
	"name":                   func(*view) string { return "vipmilter" },
	"version":                func(v *view) string { return v.p.version },
	"vnd.vipmilter.helo":     func(v *view) string { return v.m.Helo },
	"vnd.vipmilter.queue-id": func(v *view) string { return v.m.QueueID },
	"vnd.vipmilter.daemon":   func(v *view) string { return v.m.Daemon },
}

func (v *view) GetEnvironment(name string) (string, bool) {
	name = strings.ToLower(name)
	if strings.HasPrefix(name, bodyItem) {
		return v.bodyTest(name)
	}
	item, ok := environment[name]
	if !ok {
		return "", false
	}
	return item(v), true
}

func (v *view) BodyRaw(context.Context) (io.Reader, error) {
	if v.m.Body == nil {
		return nil, nil
	}
	return bytes.NewReader(v.m.Body), nil
}

// BodyParts offers the body as one part: the milter sees the raw body and
// vipmilter does not decode MIME for a source-address decision.
func (v *view) BodyParts(_ context.Context, types []string) ([]interp.BodyPart, error) {
	if v.m.Body == nil {
		return nil, nil
	}
	ct := "text/plain"
	if v.m.Header != nil {
		if h := v.m.Header.Get("Content-Type"); h != "" {
			ct, _, _ = strings.Cut(strings.ToLower(h), ";")
			ct = strings.TrimSpace(ct)
		}
	}
	if !interp.ContentTypeMatches(ct, types) {
		return nil, nil
	}
	return []interp.BodyPart{interp.BodyPartBytes{Blob: v.m.Body, ContentTypeValue: ct}}, nil
}

// noRedirect answers go-sieve's redirect policy; redirect is refused at
// load, so this is never asked in practice.
type noRedirect struct{}

func (noRedirect) RedirectAllowed(context.Context, *interp.RuntimeData, string) (bool, error) {
	return false, errors.New("redirect is not allowed")
}
