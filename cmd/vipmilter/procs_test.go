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
