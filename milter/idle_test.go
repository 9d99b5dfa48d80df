package milter

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// TestIdleSessionsClosed (issue 11): 1,000 sessions that negotiate and then
// send nothing stay open until CommandTimeout, then are all closed, their
// bookkeeping released; the server keeps deciding throughout.
func TestIdleSessionsClosed(t *testing.T) {
	const n = 1000
	st := testSettings()
	st.CommandTimeout = 3 * time.Second
	s := New(newFake(), st, quietLog())
	c := start(t, s, "unix")
	base := sockets(t)
	begin := time.Now()
	sessions := make([]*gomilter.ClientSession, 0, n)
	defer func() {
		for _, cs := range sessions {
			cs.Close()
		}
	}()
	for range n {
		cs, err := c.Session(nil) // connects and negotiates options
		if err != nil {
			t.Fatalf("session %d: %v", len(sessions)+1, err)
		}
		sessions = append(sessions, cs)
	}
	if el := time.Since(begin); el >= st.CommandTimeout {
		t.Fatalf("opening %d sessions took %v, not less than CommandTimeout %v: the machine is too slow for this test", n, el, st.CommandTimeout)
	}
	s.mu.Lock()
	open := len(s.active)
	s.mu.Unlock()
	if open != n {
		t.Fatalf("%d sessions tracked before CommandTimeout, want %d", open, n)
	}
	if got := sockets(t); got < base+2*n {
		t.Fatalf("%d sockets open with %d sessions, want >= %d (both ends)", got, n, base+2*n)
	}
	for deadline := time.Now().Add(st.CommandTimeout + 10*time.Second); ; time.Sleep(50 * time.Millisecond) {
		s.mu.Lock()
		open = len(s.active)
		s.mu.Unlock()
		if open == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d idle sessions still open %v after CommandTimeout", open, n, time.Since(begin)-st.CommandTimeout)
		}
	}
	if el := time.Since(begin); el < st.CommandTimeout {
		t.Fatalf("idle sessions closed after %v, before CommandTimeout %v", el, st.CommandTimeout)
	}
	// The server's ends are closed, not just forgotten: of the sockets
	// this process holds, only the client ends are left.
	if got := sockets(t); got > base+n {
		t.Fatalf("%d sockets open, want at most %d (the %d client ends): the server did not close its ends", got, base+n, n)
	}
	res := newSess(t, c, "client.example").send(t, msg{from: "a@example.com", headers: [][2]string{{"Subject", "hi"}}})
	if _, added := summarize(res.mods); res.act.Type != gomilter.ActionAccept || len(added) != 1 {
		t.Fatalf("after the idle sessions closed: %v %v, want accept with one binding header", res.act, added)
	}
}

// sockets counts this process's socket descriptors (proc(5)).
func sockets(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}
