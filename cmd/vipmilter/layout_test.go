package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestLayout keeps the architecture the README describes: config at the
// bottom; the policy (sieve) and the MTA and host sides (postfix, sendmail,
// vip) side by side, none importing another; the adapters (milter, policyd)
// above the policy; cmd on top. A package may always use internal/socket.
func TestLayout(t *testing.T) {
	const mod = "github.com/vipmilter/vipmilter/"
	allowed := map[string][]string{
		"config":   {},
		"sieve":    {"config"},
		"postfix":  {"config"},
		"sendmail": {"config"},
		"vip":      {"config"},
		"policyd":  {"config", "sieve"},
		"milter":   {"config", "sieve"},
	}
	for pkg, may := range allowed {
		out, err := exec.Command("go", "list", "-f", `{{join .Imports "\n"}}`, mod+pkg).Output()
		if err != nil {
			t.Fatalf("go list %s: %v", pkg, err)
		}
		for _, imp := range strings.Fields(string(out)) {
			dep, ok := strings.CutPrefix(imp, mod)
			if !ok || dep == "internal/socket" {
				continue
			}
			if !slices.Contains(may, dep) {
				t.Errorf("%s imports %s; it may import only %v of this module (and internal/socket)", pkg, dep, may)
			}
		}
	}
}
