package config

import (
	"strings"
	"testing"
)

func TestParseListen(t *testing.T) {
	cases := []struct {
		in, want string // want: String() of the result, or "error: substring"
	}{
		{"unix:/run/vipmilter/milter.sock", "unix:/run/vipmilter/milter.sock"},
		{"local:/run/a/../m.sock", "unix:/run/m.sock"},
		{"unix:/tmp/Test=a~b%c(1)/m.sock", "unix:/tmp/Test=a~b%c(1)/m.sock"},
		{"inet:127.0.0.1:8894", "inet:127.0.0.1:8894"},
		{"inet6:[2001:db8:0::1]:8894", "inet:[2001:db8::1]:8894"},
		{"inet:localhost:8894", "inet:localhost:8894"},
		{"unix:run/m.sock", "error: absolute path"},
		{"unix:/run/$x/m.sock", "error: without spaces"},
		{"unix:/run/a,b", "error: without spaces"},
		{"unix:/run/{a}", "error: without spaces"},
		{"unix:/run/a b", "error: without spaces"},
		{"unix:/run/a\u00a0b", "error: without spaces"},
		{"unix:/run/a\\b", "error: without spaces"},
		{"unix:/\u00f7", "error: non-ASCII"},
		{"unix:/run/\xff", "error: non-ASCII"},
		{"inet6:[fe80::1%eth0]:8894", "error: zone"},
		{"inet:127.0.0.1:0", "error: port"},
		{"inet:$host:1", "error: host must be"},
		{"127.0.0.1:8894", "error: unknown socket type"},
		{"/run/m.sock", "error: want unix:/path"},
		{"tcp:127.0.0.1:8894", "error: unknown socket type"},
	}
	for _, c := range cases {
		l, err := ParseListen(c.in)
		got := l.String()
		if err != nil {
			got = "error: " + err.Error()
		}
		if got != c.want && !(strings.HasPrefix(c.want, "error: ") && err != nil && strings.Contains(got, strings.TrimPrefix(c.want, "error: "))) {
			t.Errorf("ParseListen(%q) = %s, want %s", c.in, got, c.want)
		}
	}
}
