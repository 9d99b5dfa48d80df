package sieve

import (
	"reflect"
	"testing"

	"github.com/emersion/go-message/mail"
)

// TestHeaderView: what the header and address tests read from a field
// added with AddHeader.
func TestHeaderView(t *testing.T) {
	tests := []struct {
		name, field, raw, want string
	}{
		{"padded", "X-Campaign", "   split  ", "split"},
		{"folded CRLF", "Subject", " Our weekly\r\n digest", "Our weekly digest"},
		{"folded LF tab", "Subject", " a\n\tb", "a\tb"},
		{"utf-8 q", "Subject", " =?UTF-8?Q?Caf=C3=A9_news?=", "Café news"},
		{"utf-8 b", "Subject", " =?utf-8?b?Q2Fmw6k=?=", "Café"},
		{"adjacent words joined", "Subject", " =?UTF-8?Q?a?= \r\n =?UTF-8?Q?b?= c", "ab c"},
		{"windows-1252", "Subject", " =?windows-1252?Q?Caf=E9?=", "Café"},
		{"iso-8859-1", "Subject", " =?ISO-8859-1?Q?M=FCller?=", "Müller"},
		{"koi8-r", "Subject", " =?koi8-r?B?8NLJ18XU?=", "Привет"},
		{"unknown charset kept", "Subject", " =?x-unknown?Q?abc?= deal", "=?x-unknown?Q?abc?= deal"},
		{"bad encoding kept", "Subject", " =?UTF-8?B?***?=", "=?UTF-8?B?***?="},
		{"address name with comma quoted", "From", " =?UTF-8?Q?Doe=2C_John?= <j@example.org>", `"Doe, John" <j@example.org>`},
		{"address unknown charset quoted", "From", " =?x-unknown?Q?abc?= <j@example.org>", `"=?x-unknown?Q?abc?=" <j@example.org>`},
		{"address plain name not quoted", "From", " =?windows-1252?Q?Caf=E9_Team?= <news@example.org>", "Café Team <news@example.org>"},
		{"address inside quotes escaped only", "To", ` "=?UTF-8?Q?a=22b?=" <x@y>`, `"a\"b" <x@y>`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &Message{}
			m.AddHeader(tt.field, tt.raw)
			got, err := (&view{m: m}).HeaderGet(tt.field)
			if err != nil || len(got) != 1 || got[0] != tt.want {
				t.Errorf("HeaderGet(%q) = %q, %v; want %q", tt.field, got, err, tt.want)
			}
		})
	}
}

// TestParse: a message file is split into fields as an MTA passes them.
func TestParse(t *testing.T) {
	tests := []struct {
		name     string
		raw      string
		body     bool
		max      int64
		want     map[string][]string
		wantBody string
		wantErr  string
	}{
		{name: "folded and repeated", raw: "Subject: a\r\n b\r\nReceived: x\r\nReceived: y\r\n\r\nbody\r\n", body: true,
			want: map[string][]string{"Subject": {"a b"}, "Received": {"x", "y"}}, wantBody: "body\r\n"},
		{name: "mbox line and LF", raw: "From someone Mon Jan 1\nX-A:1\n\nb", want: map[string][]string{"X-A": {"1"}}},
		{name: "body capped", raw: "X-A: 1\n\n0123456789", body: true, max: 4, want: map[string][]string{"X-A": {"1"}}, wantBody: "0123"},
		{name: "no body", raw: "X-A: 1\n", want: map[string][]string{"X-A": {"1"}}},
		{name: "space before colon", raw: "Subject : hi\n\n", want: map[string][]string{"Subject": {"hi"}}},
		{name: "continuation first", raw: " x\nX-A: 1\n", wantErr: "line 1:"},
		{name: "no colon", raw: "X-A: 1\nnonsense\n", wantErr: "line 2:"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := &Message{}
			err := m.Parse([]byte(tt.raw), tt.body, tt.max)
			if tt.wantErr != "" {
				if err == nil || err.Error()[:len(tt.wantErr)] != tt.wantErr {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(map[string][]string(m.Header), tt.want) || string(m.Body) != tt.wantBody || m.Size != len(tt.raw) {
				t.Errorf("header %q body %q size %d", m.Header, m.Body, m.Size)
			}
		})
	}
}

// FuzzAddressView: decoding an address field for the header test never
// loses an address the address test would have found in the raw field.
func FuzzAddressView(f *testing.F) {
	for _, s := range []string{
		"=?UTF-8?Q?Doe=2C_John?= <j@example.org>",
		"=?windows-1252?Q?Caf=E9_Team?= <news@example.org>, b@example.net",
		`"=?UTF-8?Q?a=22b?=" <x@y.example>`,
		"=?x-unknown?Q?abc?= <news@example.org>",
		"a@b.example (=?UTF-8?Q?comment?=)",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		m := &Message{}
		m.AddHeader("From", raw)
		got, err := (&view{m: m}).HeaderGet("From")
		if err != nil || len(got) != 1 {
			t.Fatalf("HeaderGet = %q, %v", got, err)
		}
		before, err := mail.ParseAddressList(m.Header.Get("From"))
		if err != nil {
			return
		}
		after, err := mail.ParseAddressList(got[0])
		if err != nil {
			t.Fatalf("raw %q parses, view %q does not: %v", raw, got[0], err)
		}
		if len(after) != len(before) {
			t.Fatalf("raw %q: %d addresses, view %q: %d", raw, len(before), got[0], len(after))
		}
		for i := range before {
			if before[i].Address != after[i].Address {
				t.Fatalf("raw %q: address %q, view %q: %q", raw, before[i].Address, got[0], after[i].Address)
			}
		}
	})
}
