package milter

import (
	"net"
	"syscall"
)

// tuneConn returns how to acknowledge at once on c, or nil for a non-TCP
// connection. It works around a 40 ms stall per message over TCP: Postfix
// sends milter packets that expect no reply (macros, and every stage
// negotiated with a SMFIP_NR_* flag) with separate writes and Nagle on, so
// its next write waits for the ACK of the previous one, which Linux's
// delayed ACK on our side holds for up to 40 ms. Setting TCP_QUICKACK
// while an ACK is pending sends it at once; Linux clears the flag after
// some ACKs, so it is set after each such packet. Go already sets
// TCP_NODELAY on our own writes. Unix sockets have no such interplay.
func tuneConn(c net.Conn) func() {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return nil
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return nil
	}
	quickAck := func() {
		_ = rc.Control(func(fd uintptr) {
			_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, syscall.TCP_QUICKACK, 1)
		})
	}
	quickAck()
	return quickAck
}
