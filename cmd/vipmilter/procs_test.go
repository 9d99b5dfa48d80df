package main

import "testing"

func TestServeProcs(t *testing.T) {
	for _, tc := range []struct {
		procs  int
		envSet bool
		want   int
		from   string
	}{
		{1, false, 1, "auto"},
		{2, false, 1, "auto"},
		{4, false, 1, "auto"},
		{5, false, 2, "auto"},
		{8, false, 2, "auto"},
		{16, false, 4, "auto"},
		{64, false, 16, "auto"},
		{2, true, 2, "GOMAXPROCS"}, // the administrator's value stands
		{16, true, 16, "GOMAXPROCS"},
	} {
		n, from := serveProcs(tc.procs, tc.envSet)
		if n != tc.want || from != tc.from {
			t.Errorf("serveProcs(%d, %v) = %d, %q; want %d, %q", tc.procs, tc.envSet, n, from, tc.want, tc.from)
		}
	}
}

// TestHonoured follows the Go runtime's reading of GOMAXPROCS: serve must
// not claim a value the runtime ignored.
func TestHonoured(t *testing.T) {
	for v, want := range map[string]bool{
		"1": true, "3": true, "2147483647": true,
		"": false, "0": false, "junk": false, " 3": false, "3 ": false, "+3": true, "-1": false, "0x3": false,
		"2147483648": false, "99999999999999999999": false,
	} {
		if got := honoured(v); got != want {
			t.Errorf("honoured(%q) = %v, want %v", v, got, want)
		}
	}
}
