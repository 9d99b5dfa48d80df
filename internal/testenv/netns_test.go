package testenv

import (
	"context"
	"io"
	"net"
	"net/netip"
	"net/smtp"
	"strings"
	"testing"
	"time"
)

// TestNSPair joins two namespaces by a veth pair and checks that addresses,
// listeners and connections made through NS live in the namespaces: a
// connection from one to the other arrives from the first one's address.
func TestNSPair(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, b := NewTestNS(t, "vipt-a"), NewTestNS(t, "vipt-b")
	if err := a.Veth(ctx, "eth0", b, "eth0"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		ns   *NS
		addr string
	}{{a, "192.0.2.1/24"}, {a, "2001:db8::1/64"}, {b, "192.0.2.2/24"}, {b, "2001:db8::2/64"}} {
		if err := c.ns.AddAddr(ctx, "eth0", netip.MustParsePrefix(c.addr)); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := a.Addrs(ctx, "eth0"); err != nil || !strings.Contains(out, "inet6 2001:db8::1/64 scope global nodad") {
		t.Fatalf("eth0 in %s: %v\n%s", a, err, out)
	}
	for _, addr := range []string{"192.0.2.2:2525", "[2001:db8::2]:2525"} {
		ln, err := b.Listen(addr)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.WaitListen(ctx, addr); err != nil {
			t.Fatal(err)
		}
		if ok, err := a.Listening(ctx, addr); ok || err != nil {
			t.Fatalf("%s listens in %s too (%v)", addr, a, err)
		}
		accepted := make(chan string, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				accepted <- err.Error()
				return
			}
			defer c.Close()
			host, _, _ := net.SplitHostPort(c.RemoteAddr().String())
			accepted <- host
		}()
		conn, err := a.Dial(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
		want := "192.0.2.1"
		if strings.HasPrefix(addr, "[") {
			want = "2001:db8::1"
		}
		if got := <-accepted; got != want {
			t.Errorf("connection to %s came from %q, want %q", addr, got, want)
		}
		ln.Close()
	}
	// The host namespace has none of it.
	var hostConn net.Conn
	if c, err := net.DialTimeout("tcp", "192.0.2.2:2525", 200*time.Millisecond); err == nil {
		hostConn = c
		hostConn.Close()
		t.Error("the host reached an address inside a test namespace")
	}
	nl, err := a.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	if links, err := nl.LinkList(); err != nil || len(links) != 2 {
		t.Errorf("netlink in %s: %d links (lo, eth0 wanted), %v", a, len(links), err)
	}
}

// TestGoSink sends two messages over overlapping sessions and checks what
// the sink recorded.
func TestGoSink(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n := NewTestNS(t, "vipt-g")
	g, err := StartGoSink(n, "127.0.0.1:2525", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	errs := make(chan error, 2)
	for _, subj := range []string{"one", "two"} {
		go func() {
			conn, err := n.Dial(ctx, "127.0.0.1:2525")
			if err != nil {
				errs <- err
				return
			}
			c, err := smtp.NewClient(conn, "127.0.0.1")
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			errs <- send(c, subj)
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	st := g.Stats()
	if st.Messages["127.0.0.1"] != 2 || st.Subjects["one"] != 1 || st.Subjects["two"] != 1 || st.MaxConcurrent["127.0.0.1"] != 2 {
		t.Errorf("stats %+v", st)
	}
}

func send(c *smtp.Client, subject string) error {
	if err := c.Mail("a@example.com"); err != nil {
		return err
	}
	if err := c.Rcpt("b@example.com"); err != nil {
		return err
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := io.WriteString(w, "Subject: "+subject+"\r\n\r\nbody\r\n"); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func TestMainCF(t *testing.T) {
	for _, tc := range []struct {
		base, main []string
		want       string
	}{
		{[]string{"a = 1", "b = 2"}, nil, "a = 1\nb = 2\n"},
		{[]string{"a = 1", "b = 2"}, []string{"c = 3", "a=4"}, "a=4\nb = 2\nc = 3\n"},
		{[]string{"a = 1"}, []string{"a =", "a = 5"}, "a = 5\n"},
		{[]string{"a = 1"}, []string{"b = 2\nc = 3\n", ""}, "a = 1\nb = 2\nc = 3\n"},
	} {
		if got := mainCF(tc.base, tc.main); got != tc.want {
			t.Errorf("mainCF(%q, %q) = %q, want %q", tc.base, tc.main, got, tc.want)
		}
	}
}
