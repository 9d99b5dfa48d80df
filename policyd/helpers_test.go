package policyd

import (
	"bufio"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sieve"
)

// testScript places by envelope sender domain, by envelope recipient
// local part, by SASL login, HELO, client address and service name, and
// rejects one HELO: every attribute the policy hook passes on is read.
const testScript = `require ["envelope", "variables", "environment", "reject"];
if envelope :domain :is "from" "news.test" { set "binding" "News"; stop; }
if envelope :is "auth" "marketing" { set "binding" "News"; stop; }
if environment :is "vnd.vipmilter.helo" "reject.test" { reject "go away"; stop; }
if environment :is "remote-ip" "192.0.2.99" { set "binding" "Pool"; stop; }
if environment :is "vnd.vipmilter.daemon" "submission" { set "binding" "Sub"; stop; }
if environment :matches "vnd.vipmilter.queue-id" "QERR*" { set "binding" "NoSuch${1}"; stop; }
if envelope :localpart :is "to" "vip" { set "binding" "VIP"; stop; }
`

const testConf = `Binding "default" { Bind_Address = 192.0.2.10 }
Binding "News" { Bind_Address = 192.0.2.11 }
Binding "VIP" { Bind_Address = 192.0.2.12 }
Binding "Sub" { Bind_Address = 192.0.2.13 }
Binding "Dom" { Bind_Address = 192.0.2.14  Match_Domain = dom.test }
Binding_Group "Pool" {
  Binding "P1" { Bind_Address = 192.0.2.21 }
  Binding "P2" { Bind_Address = 192.0.2.22 }
}
`

// testPolicy loads testConf with testScript (or no script when script is
// "") and extra global lines.
func testPolicy(t testing.TB, script string, extra ...string) *sieve.Policy {
	t.Helper()
	dir := t.TempDir()
	src := strings.Join(extra, "\n") + "\n"
	if script != "" {
		path := filepath.Join(dir, "policy.sieve")
		if err := os.WriteFile(path, []byte(script), 0o644); err != nil {
			t.Fatal(err)
		}
		src += "Sieve_Script = " + quote(path) + "\n"
	}
	src += testConf
	cfg, err := config.Parse(filepath.Join(dir, "t.conf"), []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	pol, err := sieve.New(cfg, sieve.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

func quote(s string) string { return `"` + s + `"` }

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// client is Postfix's side of one policy connection.
type client struct {
	t    testing.TB
	conn net.Conn
	br   *bufio.Reader
	done chan struct{}
}

// dial starts s.ServeConn on one end of a pipe and returns the other.
func dial(t testing.TB, s *Server) *client {
	a, b := net.Pipe()
	c := &client{t: t, conn: a, br: bufio.NewReader(a), done: make(chan struct{})}
	go func() { s.ServeConn(b); close(c.done) }()
	t.Cleanup(func() { a.Close(); <-c.done })
	return c
}

// ask sends one request (attributes "name=value") and returns the action,
// or "" with ok false when the server closed the connection instead.
func (c *client) ask(attrs ...string) (action string, ok bool) {
	c.t.Helper()
	c.conn.SetDeadline(time.Now().Add(10 * time.Second))
	go func() { io.WriteString(c.conn, strings.Join(attrs, "\n")+"\n\n") }()
	return c.reply()
}

func (c *client) reply() (string, bool) {
	c.t.Helper()
	line, err := c.br.ReadString('\n')
	if err != nil {
		return "", false
	}
	blank, err := c.br.ReadString('\n')
	if err != nil || blank != "\n" {
		c.t.Fatalf("reply %q not followed by an empty line (%q, %v)", line, blank, err)
	}
	act, found := strings.CutPrefix(strings.TrimSuffix(line, "\n"), "action=")
	if !found {
		c.t.Fatalf("reply %q has no action=", line)
	}
	return act, true
}

// req is one smtpd_access_policy request of message instance inst.
func req(state, inst string, attrs ...string) []string {
	return append([]string{"request=smtpd_access_policy", "protocol_state=" + state, "protocol_name=ESMTP",
		"instance=" + inst, "client_address=198.51.100.7", "client_name=client.test", "helo_name=client.test",
		"ccert_subject=", "encryption_keysize=0", "stress=", "server_port=25"}, attrs...)
}
