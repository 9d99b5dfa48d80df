// Package messagetable is one table of messages as real senders write
// them — folded and padded header fields, RFC 2047 encoded words in UTF-8
// and legacy charsets, international domains, trailing dots, HELO names,
// several recipients, several messages in one session — with the binding
// each must get. The policy tests, the "vipmilter test" tests and the
// end-to-end test through a real Postfix all run every row, so the three
// paths that build a message view must agree row by row.
//
// It holds data only; each consumer turns an Envelope into its own input
// (a sieve.Message, command-line flags, an SMTP session).
package messagetable

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Bindings is the binding file every row shares (without global settings:
// WriteFiles adds Sieve_Script and whatever the caller passes). Addresses
// are documentation addresses (RFC 5737).
const Bindings = `Binding "default"     { Bind_Address = 192.0.2.1 }
Binding "B"           { Bind_Address = 192.0.2.20 }
Binding "Newsletters" { Bind_Address = 192.0.2.21 }
Binding "Example"     { Bind_Address = 192.0.2.10  Match_Domain = example.com }
Binding "Mueller"     { Bind_Address = 192.0.2.11  Match_Domain = xn--mller-kva.example }
Binding_Group "Pool" {
  Selection = sticky
  Binding "Pool1" { Bind_Address = 192.0.2.31 }
  Binding "Pool2" { Bind_Address = 192.0.2.32 }
}
`

// Envelope is what the SMTP client says around a message.
type Envelope struct {
	From       string   // MAIL FROM address, without <>
	To         []string // RCPT TO addresses in order, without <>
	Helo       string   // EHLO argument
	ClientAddr string   // client IP address the MTA sees
	ClientName string   // client host name the MTA resolves ("" = unknown)
	Auth       string   // SASL login, "" for none
}

// Message is one message of a row and the decision it must get.
type Message struct {
	Envelope Envelope
	Raw      string // the whole RFC 5322 message, CRLF line ends
	Binding  string // the binding the policy must choose
	Split    bool   // whether recipients would have been placed apart
}

// SMTPUTF8 reports whether sending m needs the SMTPUTF8 extension
// (RFC 6531): a non-ASCII envelope address or header.
func (m Message) SMTPUTF8() bool {
	for _, s := range append([]string{m.Envelope.From, m.Raw}, m.Envelope.To...) {
		for i := 0; i < len(s); i++ {
			if s[i] >= 0x80 {
				return true
			}
		}
	}
	return false
}

// Row is one case: a policy and the messages sent, in order, in one SMTP
// session (a fresh session per row).
type Row struct {
	Name     string
	Script   string    // the Sieve script ("" for none: Match_Domain and fallback only)
	Messages []Message // in session order
}

// WriteFiles writes the row's binding file (settings, then Sieve_Script
// if the row has a script, then Bindings) and its script into dir, and
// returns the binding file's path. settings are extra global lines
// (Milter_Listen, Binding_Header_Key, ...), "" for none.
func (r Row) WriteFiles(dir, settings string) (string, error) {
	var conf strings.Builder
	conf.WriteString(settings)
	if settings != "" && !strings.HasSuffix(settings, "\n") {
		conf.WriteString("\n")
	}
	if r.Script != "" {
		if err := os.WriteFile(filepath.Join(dir, "policy.sieve"), []byte(r.Script), 0o644); err != nil {
			return "", fmt.Errorf("row %s: %w", r.Name, err)
		}
		conf.WriteString("Sieve_Script = \"policy.sieve\"\n")
	}
	conf.WriteString(Bindings)
	path := filepath.Join(dir, "vipmilter.conf")
	if err := os.WriteFile(path, []byte(conf.String()), 0o644); err != nil {
		return "", fmt.Errorf("row %s: %w", r.Name, err)
	}
	return path, nil
}

const req = `require ["envelope", "variables", "environment"];` + "\n"

// msg builds a CRLF message from header lines (LF is turned into CRLF,
// so folding written with "\n " stays folding) and a body.
func msg(header, body string) string {
	h := strings.ReplaceAll(header, "\n", "\r\n")
	return h + "\r\n" + "\r\n" + strings.ReplaceAll(body, "\n", "\r\n")
}

// env is the usual envelope: one recipient, a HELO name, loopback client.
func env(from string, to ...string) Envelope {
	if len(to) == 0 {
		to = []string{"r@dest.example"}
	}
	return Envelope{From: from, To: to, Helo: "client.example.net", ClientAddr: "127.0.0.1"}
}

func one(e Envelope, raw, binding string) []Message {
	return []Message{{Envelope: e, Raw: raw, Binding: binding}}
}

// toMany is a plain message to several recipients.
func toMany(binding string, split bool, to ...string) []Message {
	return []Message{{Envelope: env("u@sender.example", to...), Raw: msg("From: u@sender.example\n"+plain, "hi\n"), Binding: binding, Split: split}}
}

const plain = "Message-ID: <1@example.org>\nSubject: hello"

// Rows is the table. Binding "B" is the right answer wherever the rule
// sets it; "default" means the rule must not have matched.
var Rows = []Row{
	{Name: "helo", Script: req + `if environment :is "vnd.vipmilter.helo" "client.example.net" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: u@sender.example\n"+plain, "hi\n"), "B")},
	{Name: "helo other", Script: req + `if environment :is "vnd.vipmilter.helo" "other.example.net" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: u@sender.example\n"+plain, "hi\n"), "default")},
	{Name: "remote ip", Script: req + `if environment :is "remote-ip" "127.0.0.1" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: u@sender.example\n"+plain, "hi\n"), "B")},
	{Name: "folded subject", Script: req + `if header :contains "Subject" "weekly digest" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: u@sender.example\nSubject: Our weekly\n digest for you", "hi\n"), "B")},
	{Name: "folded with tab", Script: req + "if header :is \"Subject\" \"a\tb\" { set \"binding\" \"B\"; }",
		Messages: one(env("u@sender.example"), msg("From: u@sender.example\nSubject: a\n\tb", "hi\n"), "B")},
	{Name: "padded value", Script: req + `if header :is "X-Campaign" "split" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: u@sender.example\nX-Campaign:   split  \n"+plain, "hi\n"), "B")},
	{Name: "folded from", Script: req + `if address :domain :is "from" "example.org" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: \"News Team\"\n <news@example.org>\n"+plain, "hi\n"), "B")},
	{Name: "utf-8 q subject", Script: req + `if header :contains "Subject" "Café" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: u@sender.example\nSubject: =?UTF-8?Q?Caf=C3=A9_news?=", "hi\n"), "B")},
	{Name: "utf-8 b adjacent words", Script: req + `if header :is "Subject" "Café news" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: u@sender.example\nSubject: =?UTF-8?B?Q2Fmw6k=?=\n =?UTF-8?Q?_news?=", "hi\n"), "B")},
	{Name: "windows-1252 from", Script: req + `if address :domain :is "from" "example.org" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: =?windows-1252?Q?Caf=E9_Team?= <news@example.org>\n"+plain, "hi\n"), "B")},
	{Name: "windows-1252 display name", Script: req + `if header :contains "From" "Café Team" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: =?windows-1252?Q?Caf=E9_Team?= <news@example.org>\n"+plain, "hi\n"), "B")},
	{Name: "iso-8859-1 subject", Script: req + `if header :contains "Subject" "Müller" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: u@sender.example\nSubject: =?iso-8859-1?Q?Gr=FC=DFe_von_M=FCller?=", "hi\n"), "B")},
	{Name: "unknown charset kept", Script: req + `if header :contains "Subject" "=?x-unknown?Q?abc?= deal" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: u@sender.example\nSubject: =?x-unknown?Q?abc?= deal", "hi\n"), "B")},
	{Name: "unknown charset address", Script: req + `if address :domain :is "from" "example.org" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: =?x-unknown?Q?abc?= <news@example.org>\n"+plain, "hi\n"), "B")},
	{Name: "comma in encoded name", Script: req + `if address :is "from" "j@example.org" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: =?UTF-8?Q?Doe=2C_John?= <j@example.org>\n"+plain, "hi\n"), "B")},
	{Name: "idn match_domain", Messages: one(env("u@müller.example"), msg("From: u@müller.example\n"+plain, "hi\n"), "Mueller")},
	{Name: "idn envelope u-label key", Script: req + `if envelope :domain :is "from" "müller.example" { set "binding" "B"; }`,
		Messages: one(env("u@xn--mller-kva.example"), msg("From: u@xn--mller-kva.example\n"+plain, "hi\n"), "B")},
	{Name: "idn envelope a-label key", Script: req + `if envelope :domain :is "from" "xn--mller-kva.example" { set "binding" "B"; }`,
		Messages: one(env("u@müller.example"), msg("From: u@müller.example\n"+plain, "hi\n"), "B")},
	{Name: "idn header address", Script: req + `if address :domain :is "from" "xn--mller-kva.example" { set "binding" "B"; }`,
		Messages: one(env("u@sender.example"), msg("From: Team <news@müller.example>\n"+plain, "hi\n"), "B")},
	{Name: "trailing dot match_domain", Messages: one(env("u@Example.COM."), msg("From: u@example.com\n"+plain, "hi\n"), "Example")},
	{Name: "trailing dot envelope", Script: req + `if envelope :domain :is "from" "example.net" { set "binding" "B"; }`,
		Messages: one(env("u@example.net."), msg("From: u@example.net\n"+plain, "hi\n"), "B")},
	{Name: "sticky split", Script: req + `set "binding" "Pool";`,
		Messages: toMany("Pool2", true, "r@dest1.example", "s@dest4.example")},
	{Name: "sticky one domain", Script: req + `set "binding" "Pool";`,
		Messages: toMany("Pool1", false, "r@dest4.example", "s@DEST4.example")},
	{Name: "sticky idn forms", Script: req + `set "binding" "Pool";`,
		Messages: toMany("Pool1", false, "r@müller.example", "s@xn--mller-kva.example")},
	{Name: "recipient rule split", Script: req + `if envelope :domain :is "to" "dest1.example" { set "binding" "B"; }`,
		Messages: toMany("B", true, "r@dest1.example", "s@dest2.example")},
	{Name: "session headers reset", Script: req + `if exists "List-Id" { set "binding" "Newsletters"; }`,
		Messages: []Message{
			{Envelope: env("u@sender.example"), Raw: msg("From: u@sender.example\nList-Id: <news.example.org>\n"+plain, "first\n"), Binding: "Newsletters"},
			{Envelope: env("u@sender.example"), Raw: msg("From: u@sender.example\n"+plain, "second\n"), Binding: "default"},
			{Envelope: env("u@example.com"), Raw: msg("From: u@example.com\n"+plain, "third\n"), Binding: "Example"},
		}},
}
