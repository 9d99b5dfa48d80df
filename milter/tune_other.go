//go:build !linux

package milter

import "net"

func tuneConn(net.Conn) func() { return nil }
