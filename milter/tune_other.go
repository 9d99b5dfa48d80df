//go:build !linux

package milter

import "net"

func tuneConn(c net.Conn) net.Conn { return c }
