package milter

import (
	"bytes"
	"net"
	"testing"

	"github.com/vipmilter/vipmilter/sieve"
)

// writeCounter is a net.Conn that records each write.
type writeCounter struct {
	net.Conn
	writes [][]byte
}

func (w *writeCounter) Write(p []byte) (int, error) {
	w.writes = append(w.writes, append([]byte(nil), p...))
	return len(p), nil
}

// TestRepliesJoined: a reply's length prefix and data go out in one write,
// as go-milter writes them in two; a reply without data is not held.
func TestRepliesJoined(t *testing.T) {
	cases := []struct {
		name   string
		writes [][]byte
		want   [][]byte
	}{
		{"header then data", [][]byte{{0, 0, 0, 4, 'h'}, []byte("a\x00b")}, [][]byte{[]byte("\x00\x00\x00\x04ha\x00b")}},
		{"no data", [][]byte{{0, 0, 0, 1, 'a'}}, [][]byte{{0, 0, 0, 1, 'a'}}},
		{"add header then accept", [][]byte{{0, 0, 0, 3, 'h'}, []byte("X\x00"), {0, 0, 0, 1, 'a'}},
			[][]byte{[]byte("\x00\x00\x00\x03hX\x00"), {0, 0, 0, 1, 'a'}}},
	}
	for _, tc := range cases {
		w := &writeCounter{}
		c := &wireConn{Conn: w}
		var sent []byte
		for _, p := range tc.writes {
			if n, err := c.Write(p); n != len(p) || err != nil {
				t.Fatalf("%s: Write = %d, %v", tc.name, n, err)
			}
			sent = append(sent, p...)
		}
		if !bytes.Equal(bytes.Join(w.writes, nil), sent) || len(w.writes) != len(tc.want) {
			t.Fatalf("%s: writes %q, want %q", tc.name, w.writes, tc.want)
		}
		for i := range tc.want {
			if !bytes.Equal(w.writes[i], tc.want[i]) {
				t.Fatalf("%s: writes %q, want %q", tc.name, w.writes, tc.want)
			}
		}
	}
}

// TestNoReply: the packets that leave their ACK to the delayed-ACK timer
// are those the negotiated protocol spares a reply, plus macros, abort and
// quit.
func TestNoReply(t *testing.T) {
	r := packetReader{protocol: protocol(sieve.Needs{Headers: true})}
	for code, want := range map[byte]bool{'D': true, 'A': true, 'Q': true, 'K': true, 'M': true, 'R': true, 'L': true,
		'O': false, 'E': false, 'B': false, 'H': false, 'C': false, 'T': false} {
		if got := r.noReply(code); got != want {
			t.Errorf("noReply(%c) = %v, want %v", code, got, want)
		}
	}
}
