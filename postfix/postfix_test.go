package postfix

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

// testConfig loads a binding file that declares bindings, written out as
// text so the Config is one that config.Parse accepted, as Render expects.
func testConfig(bindings ...*config.Binding) *config.Config {
	var src strings.Builder
	for _, b := range bindings {
		fmt.Fprintf(&src, "Binding %q {\n", b.Name)
		for _, a := range b.Addresses {
			fmt.Fprintf(&src, "  Bind_Address = %s\n", a)
		}
		for _, d := range b.MatchDomains {
			fmt.Fprintf(&src, "  Match_Domain = %q\n", d)
		}
		if b.Relay != "" {
			fmt.Fprintf(&src, "  Relay = %q\n", b.Relay)
		}
		fmt.Fprintf(&src, "  EHLO_Hostname = %q\n  Max_Outbound_Connections = %d\n  Server_Max_Outbound_Connections = %d\n  Suspend_Delivery = %t\n}\n",
			b.EHLOHostname, b.MaxOutboundConnections, b.ServerMaxOutboundConnections, b.SuspendDelivery)
	}
	c, err := config.Parse("/etc/vipmilter/vipmilter.conf", []byte(src.String()))
	if err != nil {
		panic(fmt.Sprintf("test binding file does not load: %v\n%s", err, src.String()))
	}
	return c
}

func binding(name string, addrs ...string) *config.Binding {
	b := &config.Binding{Name: name, EHLOHostname: config.EHLOHostname, MaxOutboundConnections: 32}
	for _, a := range addrs {
		p := netip.MustParseAddr(a)
		b.Addresses = append(b.Addresses, netip.PrefixFrom(p, p.BitLen()))
	}
	return b
}

func needPostfix(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"postconf", "postmap", "postfix"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%s not found: Postfix is required under CI", tool)
			}
			t.Skipf("%s not found: install Postfix to run this test", tool)
		}
	}
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("postfix check needs root under CI")
		}
		t.Skip("postfix check needs root")
	}
}

// privateDir writes a minimal private Postfix config directory.
func privateDir(t *testing.T, extraMain string) string {
	t.Helper()
	dir := t.TempDir()
	// Postfix daemons run as the postfix user and must traverse the path.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	q := filepath.Join(dir, "queue")
	main := "compatibility_level = 3.6\nqueue_directory = " + q + "\ndata_directory = " + filepath.Join(dir, "data") +
		"\nmaillog_file_prefixes = /var, /dev/stdout, " + dir + "\nmaillog_file = " + filepath.Join(dir, "maillog") +
		"\nalias_maps =\nalias_database =\nmyhostname = mta.test\nsmtpd_banner = hello\n" + extraMain
	master := `smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`
	for name, body := range map[string]string{"main.cf": main, "master.cf": master} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(q, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

func apply(t *testing.T, dir string, cfg *config.Config, dry bool) (*Result, string) {
	t.Helper()
	ctx := context.Background()
	st, err := ReadState(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	opts := st.Options()
	opts.Key = testKey
	plan, err := Render(cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	res, err := Apply(ctx, plan, st, ApplyOptions{DryRun: dry, Out: &out})
	if err != nil {
		t.Fatalf("apply: %v\n%s", err, out.String())
	}
	return res, out.String()
}
