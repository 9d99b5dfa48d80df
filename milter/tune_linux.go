package milter

import (
	"net"
	"syscall"
)

// tuneConn works around a 40 ms stall per message over TCP: Postfix sends
// several small milter packets that expect no reply (macros, then the
// command; headers with SMFIP_NR_HDR). With Nagle on Postfix's side its
// second write waits for the ACK of the first, and Linux's delayed ACK on
// our side holds that ACK for up to 40 ms. Re-arming TCP_QUICKACK after
// every read makes the milter ACK at once. (Go already sets TCP_NODELAY on
// our own writes.) Unix sockets have no such interplay.
func tuneConn(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	q := &quickAckConn{TCPConn: tc, raw: rc}
	q.quickAck()
	return q
}

type quickAckConn struct {
	*net.TCPConn
	raw syscall.RawConn
	Framer
}

func (c *quickAckConn) quickAck() {
	_ = c.raw.Control(func(fd uintptr) {
		_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
	})
}

func (c *quickAckConn) Read(b []byte) (int, error) {
	n, err := c.TCPConn.Read(b)
	// Only a packet we will not answer leaves its ACK to the delayed-ACK
	// timer; a reply carries the ACK of the command it answers. Setting
	// TCP_QUICKACK while an ACK is pending sends it at once (and Linux
	// clears QUICKACK after some ACKs, so it is set each time). One
	// setsockopt per macro packet instead of one per read.
	if c.Scan(b[:n]) {
		c.quickAck()
	}
	return n, err
}
