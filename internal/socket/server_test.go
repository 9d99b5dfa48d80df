package socket

import (
	"context"
	"errors"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/config"
)

// flakyListener fails its first n accepts with EMFILE, as a process out of
// descriptors does, then accepts for real.
type flakyListener struct {
	net.Listener
	n atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.n.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

func TestServerBacksOffAndShutsDown(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := &flakyListener{Listener: inner}
	ln.n.Store(3)
	handled := make(chan struct{}, 1)
	s := &Server{Name: "test", MaxConns: 1, Handle: func(c net.Conn) {
		defer c.Close()
		handled <- struct{}{}
		buf := make([]byte, 1)
		c.Read(buf) // an idle client: Shutdown must end this read
	}}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()

	c, err := net.Dial("tcp", inner.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection handled after the accept errors")
	}
	if got := s.AcceptErrors(); got != 3 {
		t.Errorf("AcceptErrors = %d, want 3", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown with an idle connection: %v", err)
	}
	if err := <-served; !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve returned %v, want ErrServerClosed", err)
	}
	if err := s.Serve(inner); !errors.Is(err, ErrServerClosed) {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
}

// TestServerDefaultCap: a Server without MaxConns takes Max_Connections'
// default, so a flood of idle clients cannot take every descriptor.
func TestServerDefaultCap(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan struct{}, 1)
	s := &Server{Name: "test", Handle: func(c net.Conn) { c.Close(); handled <- struct{}{} }}
	go s.Serve(ln)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("no connection handled")
	}
	if got := cap(s.sem); got != config.DefaultMaxConnections {
		t.Errorf("cap = %d, want config.DefaultMaxConnections %d", got, config.DefaultMaxConnections)
	}
	s.Shutdown(context.Background())
}
