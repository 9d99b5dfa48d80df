package milter

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

type countingWriter struct {
	bytes.Buffer
	writes int
}

func (w *countingWriter) Write(p []byte) (int, error) {
	w.writes++
	return w.Buffer.Write(p)
}

// TestCoalescer: modification packets are held and sent in one write with
// the final action; other packets, and packets split over several writes
// (bufio flushes of large packets), pass through unchanged.
func TestCoalescer(t *testing.T) {
	big := strings.Repeat("v", 5000)
	pkts := [][]byte{
		wire([]byte("O123456789012")),
		wire([]byte("c")),
		wire(pkt('m', "\x00\x00\x00\x02X-Binding", "")),
		wire(pkt('m', "\x00\x00\x00\x01X-Binding", "")),
		wire(pkt('h', "X-Binding", big)),
		wire([]byte("a")),
		wire(pkt('y', "550 5.7.1 "+big)),
	}
	var w countingWriter
	c := &coalescer{w: &w}
	var want []byte
	for _, p := range pkts {
		want = append(want, p...)
		for len(p) > 0 { // as bufio.Writer(4096) flushes a large packet
			n := min(len(p), 4096)
			if k, err := c.Write(p[:n]); k != n || err != nil {
				t.Fatalf("Write = %d, %v", k, err)
			}
			p = p[n:]
		}
	}
	if !bytes.Equal(w.Bytes(), want) {
		t.Fatalf("bytes differ")
	}
	// O, c, [m m h h' a] in one, y in two chunks.
	if w.writes != 5 {
		t.Fatalf("%d writes, want 5", w.writes)
	}
}

// TestFramer: a packet the milter does not answer (macro, abort) is
// recognised however the stream is split across reads.
func TestFramer(t *testing.T) {
	stream := wire(pkt('D', "M", "i", "QID"), pkt('M', "<a@b>"), []byte{'A'}, pkt('R', "<c@d>"))
	ends := 0
	for split := 1; split <= len(stream); split++ {
		var f Framer
		n := 0
		for p := stream; len(p) > 0; {
			k := min(split, len(p))
			if f.Scan(p[:k]) {
				n++
			}
			p = p[k:]
		}
		if split == len(stream) {
			ends = n
		}
		if split == 1 && n != 2 {
			t.Fatalf("split %d: %d no-reply packets, want 2", split, n)
		}
		if f.need != 0 || f.nh != 0 {
			t.Fatalf("split %d: framer out of step: %+v", split, f)
		}
	}
	if ends != 1 { // both end in one read: reported once
		t.Fatalf("whole stream: %d", ends)
	}
}

// TestShutdownTimeout: a session that does not finish within the grace
// period is cut off, and Shutdown reports it.
func TestShutdownTimeout(t *testing.T) {
	s := New(newFake(), nil)
	c := start(t, s, "unix")
	cs := newSess(t, c)
	if _, err := cs.Mail("<a@blue.test>", nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := s.Shutdown(ctx); err == nil {
		t.Fatal("Shutdown = nil with a session in flight")
	}
	if _, err := cs.Rcpt("<x@example.net>", nil); err == nil {
		t.Fatal("session still served after the grace period")
	}
	s.mu.Lock()
	n := len(s.active)
	s.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d sessions still tracked", n)
	}
}
