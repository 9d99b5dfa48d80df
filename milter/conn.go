package milter

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// wireConn is an MTA connection as go-milter reads it. It reads whole
// packets itself, so that it can
//   - set the read deadline per stage (CommandTimeout between packets,
//     PacketTimeout within one; go-milter times only the negotiation),
//   - refuse packets go-milter would crash on or allocate without bound
//     (empty, longer than maxPacketBytes, missing the NUL go-milter slices
//     past), ending the session instead of the process,
//   - over TCP, acknowledge at once each packet that gets no reply (see
//     tuneConn).
//
// It also joins each reply's length prefix to its data: go-milter writes
// them separately, and the MTA would wake up for each half.
//
// Close ends the server's bookkeeping for the connection.
type wireConn struct {
	net.Conn
	srv  *Server
	pr   packetReader
	held []byte // a reply's length prefix and command, sent with its data
	cl   sync.Once
}

// packetReader hands go-milter one checked packet at a time.
type packetReader struct {
	conn     net.Conn
	src      *bufio.Reader // over deadlined reads of conn
	quickAck func()        // nil: not TCP
	protocol gomilter.OptProtocol
	command  time.Duration // CommandTimeout
	packet   time.Duration // PacketTimeout

	out        []byte // the current packet, length prefix included, not yet read
	buf        []byte
	inPacket   bool // between the first byte of a packet and its end
	negotiated bool // the OPTNEG packet was read (go-milter times that one)
}

var errBadPacket = errors.New("milter: bad packet from MTA")

func newWireConn(c net.Conn, s *Server, g *generation) *wireConn {
	w := &wireConn{Conn: c, srv: s}
	w.pr = packetReader{conn: c, quickAck: tuneConn(c), protocol: g.protocol,
		command: g.st.CommandTimeout, packet: g.st.PacketTimeout}
	w.pr.src = bufio.NewReaderSize(deadlineReader{&w.pr}, 4<<10)
	return w
}

func (c *wireConn) Read(p []byte) (int, error) { return c.pr.Read(p) }

func (c *wireConn) Write(p []byte) (int, error) {
	if len(c.held) > 0 {
		buf := append(c.held, p...)
		c.held = c.held[:0]
		if _, err := c.Conn.Write(buf); err != nil {
			return 0, err
		}
		return len(p), nil
	}
	// go-milter's WritePacket: 4-byte length and command, then the data
	// when the length says there is some.
	if len(p) == 5 && binary.BigEndian.Uint32(p) > 1 {
		c.held = append(c.held[:0], p...)
		return len(p), nil
	}
	return c.Conn.Write(p)
}

func (c *wireConn) Close() error {
	err := c.Conn.Close()
	c.cl.Do(func() { c.srv.release(c) })
	return err
}

// deadlineReader reads the socket with the deadline of the current stage:
// within a packet the MTA is writing; between packets it may be waiting
// for its SMTP client.
type deadlineReader struct{ r *packetReader }

func (d deadlineReader) Read(p []byte) (int, error) {
	r := d.r
	if r.negotiated {
		t := r.command
		if r.inPacket {
			t = r.packet
		}
		r.conn.SetReadDeadline(time.Now().Add(t))
	}
	return r.conn.Read(p)
}

func (r *packetReader) Read(p []byte) (int, error) {
	if len(r.out) == 0 {
		if err := r.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.out)
	r.out = r.out[n:]
	return n, nil
}

// next reads and checks one packet into r.out.
func (r *packetReader) next() error {
	var hdr [4]byte
	if _, err := io.ReadFull(r.src, hdr[:1]); err != nil {
		return err
	}
	r.inPacket = true
	if _, err := io.ReadFull(r.src, hdr[1:]); err != nil {
		return unexpected(err)
	}
	l := binary.BigEndian.Uint32(hdr[:])
	if l == 0 || l > maxPacketBytes {
		return fmt.Errorf("%w: length %d (1 to %d)", errBadPacket, l, maxPacketBytes)
	}
	if cap(r.buf) > 64<<10 { // do not hold a large packet's memory for the session
		r.buf = nil
	}
	r.buf = slices.Grow(r.buf[:0], 4+int(l))[:4+int(l)]
	copy(r.buf, hdr[:])
	if _, err := io.ReadFull(r.src, r.buf[4:]); err != nil {
		return unexpected(err)
	}
	r.inPacket = false
	code, data := r.buf[4], r.buf[5:]
	if err := checkPacket(code, data); err != nil {
		return err
	}
	if code == 'O' {
		r.negotiated = true
	}
	// Only a packet the milter does not answer leaves its ACK to the
	// delayed-ACK timer; a reply carries the ACK of the command it answers,
	// and when more bytes are already buffered the MTA's next write was
	// not held.
	if r.quickAck != nil && r.noReply(code) && r.src.Buffered() == 0 {
		r.quickAck()
	}
	r.out = r.buf
	return nil
}

func unexpected(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// checkPacket refuses what go-milter v0.10.1 would index past: a CONNECT
// without host name terminator and family, a MAIL or RCPT without
// terminator.
func checkPacket(code byte, data []byte) error {
	switch code {
	case 'C':
		if i := bytes.IndexByte(data, 0); i < 0 || i+1 >= len(data) {
			return fmt.Errorf("%w: CONNECT without host name and family", errBadPacket)
		}
	case 'M', 'R':
		if bytes.IndexByte(data, 0) < 0 {
			return fmt.Errorf("%w: %c without NUL-terminated address", errBadPacket, code)
		}
	}
	return nil
}

// noReplyFlag is the SMFIP_NR_* flag that spares each command its reply.
var noReplyFlag = [256]gomilter.OptProtocol{
	'C': gomilter.OptNoConnReply, 'H': gomilter.OptNoHeloReply,
	'M': gomilter.OptNoMailReply, 'R': gomilter.OptNoRcptReply,
	'T': gomilter.OptNoDataReply, 'L': gomilter.OptNoHeaderReply,
	'N': gomilter.OptNoEOHReply, 'B': gomilter.OptNoBodyReply,
	'U': gomilter.OptNoUnknownReply,
}

// noReply reports whether the milter sends nothing back for command code:
// macros, abort and quit never get a reply; the stages negotiated with a
// SMFIP_NR_* flag neither.
func (r *packetReader) noReply(code byte) bool {
	switch code {
	case 'D', 'A', 'Q', 'K':
		return true
	}
	return r.protocol&noReplyFlag[code] != 0
}
