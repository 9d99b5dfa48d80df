package policyd

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/config"
)

// serveUnix runs s on a fresh unix socket and returns its address.
func serveUnix(t *testing.T, s *Server) config.Listen {
	t.Helper()
	addr := config.MustParseListen("unix:" + filepath.Join(t.TempDir(), "p.sock"))
	ln, err := s.Listen(addr)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		s.Shutdown(ctx)
	})
	return addr
}

func askOn(t *testing.T, c net.Conn, attrs ...string) (string, error) {
	t.Helper()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, strings.Join(attrs, "\n")+"\n\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// TestIdleTimeout: a connection that sends nothing is closed.
func TestIdleTimeout(t *testing.T) {
	s := New(testPolicy(t, testScript), Options{BindingHeader: "X-Binding", IdleTimeout: 200 * time.Millisecond, Log: quietLog()})
	addr := serveUnix(t, s)
	c, err := net.Dial(addr.Network, addr.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	start := time.Now()
	if n, err := c.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("read %d, %v; want EOF from the server closing the idle connection", n, err)
	}
	if time.Since(start) > 4*time.Second {
		t.Fatal("idle connection held")
	}
}

// TestConnectionCap: beyond MaxConns a connection waits for a slot; it is
// served once another closes.
func TestConnectionCap(t *testing.T) {
	s := New(testPolicy(t, testScript), Options{BindingHeader: "X-Binding", MaxConns: 1, Log: quietLog()})
	addr := serveUnix(t, s)
	first, err := net.Dial(addr.Network, addr.Address)
	if err != nil {
		t.Fatal(err)
	}
	if act, err := askOn(t, first, req("CONNECT", "a")...); act != "action=DUNNO" {
		t.Fatalf("first connection: %q, %v", act, err)
	}
	second, err := net.Dial(addr.Network, addr.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Close()
	io.WriteString(second, strings.Join(req("CONNECT", "b"), "\n")+"\n\n")
	second.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, err := second.Read(make([]byte, 64)); err == nil {
		t.Fatalf("second connection served while the first holds the only slot (%d bytes)", n)
	}
	first.Close()
	second.SetReadDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(second).ReadString('\n')
	if err != nil || line != "action=DUNNO\n" {
		t.Fatalf("second connection after the first closed: %q, %v", line, err)
	}
}

// FuzzRequest: any input gets replies to its complete requests or a
// disconnect, never a panic, and every reply is one action line and an
// empty line.
func FuzzRequest(f *testing.F) {
	f.Add([]byte(strings.Join(req("RCPT", "i", "recipient=vip@d.test"), "\n") + "\n\n" + strings.Join(req("DATA", "i", "recipient_count=1"), "\n") + "\n\n"))
	f.Add([]byte("request=smtpd_access_policy\nprotocol_state=DATA\nrecipient_count=-1\n\n"))
	f.Add([]byte("=\n\n\n"))
	s := New(testPolicy(f, testScript), Options{BindingHeader: "X-Binding", HeaderKey: key, Log: quietLog()})
	f.Fuzz(func(t *testing.T, in []byte) {
		c := &scriptedConn{in: bytes.NewReader(in)}
		s.ServeConn(c)
		out := c.out.Bytes()
		for _, rep := range bytes.Split(bytes.TrimSuffix(out, []byte("\n\n")), []byte("\n\n")) {
			if len(rep) == 0 {
				continue
			}
			if !bytes.HasPrefix(rep, []byte("action=")) || bytes.ContainsAny(rep, "\n\x00") {
				t.Fatalf("malformed reply %q", rep)
			}
		}
	})
}

// scriptedConn is a connection whose peer sends in and then closes; what
// the server writes collects in out.
type scriptedConn struct {
	net.Conn
	in  *bytes.Reader
	out bytes.Buffer
}

func (c *scriptedConn) Read(p []byte) (int, error)       { return c.in.Read(p) }
func (c *scriptedConn) Write(p []byte) (int, error)      { return c.out.Write(p) }
func (c *scriptedConn) Close() error                     { return nil }
func (c *scriptedConn) SetReadDeadline(time.Time) error  { return nil }
func (c *scriptedConn) SetWriteDeadline(time.Time) error { return nil }
func (c *scriptedConn) RemoteAddr() net.Addr             { return &net.UnixAddr{Name: "fuzz", Net: "unix"} }
