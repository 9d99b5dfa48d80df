package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"github.com/vipmilter/vipmilter/internal/testenv"
	"io"
	"log/slog"
	"net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
)

// Sources of the real-host binding file (realHostConf).
var (
	srcRHDefault = Source{"192.0.2.1", "mta.example.net"}
	srcRHNews    = Source{"192.0.2.20", "news.example.org"}
	srcRHLate    = Source{"192.0.2.40", "late.example.org"}
)

const realHostConf = `Milter_Listen = "inet:127.0.0.1:8894"
Sieve_Script = "policy.sieve"
Binding_Header_Key = "KEYFILE"
Binding "default" {
  Bind_Address  = 192.0.2.1
  EHLO_Hostname = mta.example.net
}
Binding "Newsletters" {
  Bind_Address  = 192.0.2.20
  EHLO_Hostname = news.example.org
}
`

// lateBinding is added by a test after "vipmilter postfix" ran.
const lateBinding = `Binding "Late" {
  Bind_Address  = 192.0.2.40
  EHLO_Hostname = late.example.org
}
`

const realHostPolicy = `require ["variables"];
if exists "List-Id" {
  set "binding" "Newsletters";
  stop;
}
`

const latePolicy = `if exists "X-Late" {
  set "binding" "Late";
  stop;
}
`

// realHost is one private Postfix set up as an administrator's host
// (main/master settings applied before vipmilter), with vipmilter applied
// by "vipmilter postfix" and "vipmilter serve" running.
type realHost struct {
	*System
	conf, policy, key string
}

// newRealHost builds the namespaces, sinks and a private Postfix, lets
// prepare configure it as the host's administrator would (its own milters,
// filters, checks), then runs "vipmilter postfix" and "vipmilter serve".
func newRealHost(t *testing.T, ctx context.Context, prepare func(pf *testenv.Postfix, n *Network) error) *realHost {
	t.Helper()
	testenv.Require(t, Prereqs)
	tmp := t.TempDir()
	bin := e2eBinary(t, ctx, tmp)
	h := &realHost{conf: filepath.Join(tmp, "vipmilter.conf"), policy: filepath.Join(tmp, "policy.sieve"), key: filepath.Join(tmp, "binding-header.key")}
	if err := os.WriteFile(h.conf, []byte(strings.Replace(realHostConf, "KEYFILE", h.key, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.policy, []byte(realHostPolicy), 0o644); err != nil {
		t.Fatal(err)
	}
	n, err := NewNetwork(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := &System{Net: n, SinkDir: filepath.Join(tmp, "sink"), Bin: bin, Config: h.conf, Log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	h.System = s
	t.Cleanup(func() {
		if t.Failed() && s.Postfix != nil {
			t.Logf("maillog tail:\n%s\nqueue:\n%s\nserve output:\n%s", s.Postfix.LogTail(80), s.Postfix.Queue(context.Background()), s.ServeOutput())
		}
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	sinks, err := StartSinks(ctx, n, s.SinkDir)
	for _, sk := range sinks {
		t.Cleanup(sk.Stop)
	}
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{srcRHDefault.Addr, srcRHNews.Addr, srcRHLate.Addr} {
		if err := n.AddAddress(ctx, a); err != nil {
			t.Fatal(err)
		}
	}
	pf, err := NewPostfix(ctx, filepath.Join(tmp, "postfix"), n.MTA)
	if err != nil {
		t.Fatal(err)
	}
	s.Postfix = pf
	if prepare != nil {
		if err := prepare(pf, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.ApplyPostfix(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.StartServe(ctx); err != nil {
		t.Fatal(err)
	}
	return h
}

// submitRaw sends a whole message (header and body as written) over SMTP
// from inside ns to Postfix on 127.0.0.1:25.
func submitRaw(ctx context.Context, ns *testenv.NS, from string, to []string, msg string) error {
	conn, err := ns.Dial(ctx, "127.0.0.1:25")
	if err != nil {
		return err
	}
	c, err := smtp.NewClient(conn, "127.0.0.1")
	if err != nil {
		conn.Close()
		return err
	}
	defer c.Close()
	if err := c.Hello("client.e2e.test"); err != nil {
		return err
	}
	if err := c.Mail(from); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, strings.ReplaceAll(strings.ReplaceAll(msg, "\r\n", "\n"), "\n", "\r\n")); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of data: %w", err)
	}
	return c.Quit()
}

// contentFilter is an after-queue SMTP content filter as in Postfix's
// FILTER_README: it receives on 127.0.0.1:10024 in the mta namespace, adds
// "X-Filtered: yes" to the top of each message (it changes the message)
// and re-injects it into Postfix on 127.0.0.1:10025.
type contentFilter struct {
	ns       *testenv.NS
	srv      *gosmtp.Server
	received atomic.Int64
}

func startContentFilter(t *testing.T, ns *testenv.NS) *contentFilter {
	t.Helper()
	ln, err := ns.Listen("127.0.0.1:10024")
	if err != nil {
		t.Fatal(err)
	}
	f := &contentFilter{ns: ns}
	f.srv = gosmtp.NewServer(f)
	f.srv.Domain = "filter.e2e.test"
	f.srv.AllowInsecureAuth = true
	f.srv.MaxMessageBytes = 64 << 20
	go f.srv.Serve(ln)
	t.Cleanup(func() { f.srv.Close() })
	return f
}

func (f *contentFilter) NewSession(*gosmtp.Conn) (gosmtp.Session, error) {
	return &filterSession{f: f}, nil
}

type filterSession struct {
	f    *contentFilter
	from string
	to   []string
}

func (s *filterSession) Mail(from string, _ *gosmtp.MailOptions) error {
	s.from = from
	return nil
}
func (s *filterSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}
func (s *filterSession) Reset()        { s.from, s.to = "", nil }
func (s *filterSession) Logout() error { return nil }

func (s *filterSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.f.received.Add(1)
	msg := "X-Filtered: yes\r\n" + string(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := s.f.ns.Dial(ctx, "127.0.0.1:10025")
	if err != nil {
		return &gosmtp.SMTPError{Code: 451, Message: err.Error()}
	}
	c, err := smtp.NewClient(conn, "127.0.0.1")
	if err != nil {
		conn.Close()
		return &gosmtp.SMTPError{Code: 451, Message: err.Error()}
	}
	defer c.Close()
	fail := func(err error) error { return &gosmtp.SMTPError{Code: 451, Message: "re-injection: " + err.Error()} }
	if err := c.Hello("filter.e2e.test"); err != nil {
		return fail(err)
	}
	if err := c.Mail(s.from); err != nil {
		return fail(err)
	}
	for _, r := range s.to {
		if err := c.Rcpt(r); err != nil {
			return fail(err)
		}
	}
	w, err := c.Data()
	if err != nil {
		return fail(err)
	}
	if _, err := io.WriteString(w, msg); err != nil {
		return fail(err)
	}
	if err := w.Close(); err != nil {
		return fail(err)
	}
	return c.Quit()
}

// startOpenDKIM runs Debian's opendkim inside ns on inet 127.0.0.1:8891,
// signing mail from example.org with a key made by opendkim-genkey in dir.
func startOpenDKIM(t *testing.T, ctx context.Context, ns *testenv.NS, dir string) {
	t.Helper()
	for _, bin := range []string{"opendkim", "opendkim-genkey"} {
		if _, err := exec.LookPath(bin); err != nil {
			if testenv.InCI() {
				t.Fatalf("%s not on PATH (apt-get install opendkim opendkim-tools)", bin)
			}
			t.Skipf("%s not on PATH (apt-get install opendkim opendkim-tools)", bin)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "opendkim-genkey", "-D", dir, "-d", "example.org", "-s", "sel", "-b", "1024").CombinedOutput(); err != nil {
		t.Fatalf("opendkim-genkey: %v: %s", err, out)
	}
	conf := filepath.Join(dir, "opendkim.conf")
	body := strings.Join([]string{
		"Syslog no",
		"Background no",
		"Mode sv",
		"Domain example.org",
		"Selector sel",
		"KeyFile " + filepath.Join(dir, "sel.private"),
		"Socket inet:8891@127.0.0.1",
		"PidFile " + filepath.Join(dir, "opendkim.pid"),
		"RequireSafeKeys false",
		"InternalHosts 127.0.0.0/8",
		"",
	}, "\n")
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := ns.Command(context.Background(), "opendkim", "-f", "-x", conf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	if err := ns.WaitListen(ctx, "127.0.0.1:8891"); err != nil {
		t.Fatalf("opendkim: %v: %s", err, out.String())
	}
}

// dumpHas tells whether a sink dump contains s anywhere (header or body,
// attached parts included).
func dumpHas(t *testing.T, m testenv.Received, s string) bool {
	t.Helper()
	b, err := os.ReadFile(m.File)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Contains(bytes.ToLower(b), bytes.ToLower([]byte(s)))
}

// queueNames lists "queue_name" of every queued message.
func queueNames(t *testing.T, ctx context.Context, pf *testenv.Postfix) []string {
	t.Helper()
	qs, err := pf.Entries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, q := range qs {
		names = append(names, q.QueueName)
	}
	return names
}

// lines counts the maillog lines that contain s.
func logCount(pf *testenv.Postfix, s string) int {
	n := 0
	sc := bufio.NewScanner(strings.NewReader(pf.Log()))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.Contains(sc.Text(), s) {
			n++
		}
	}
	return n
}
