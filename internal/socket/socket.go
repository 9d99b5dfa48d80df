// Package socket opens the listening sockets vipmilter's servers share (the
// milter, the SMTPD policy service, the Sendmail socketmap) from a
// config.Listen, with one rule for unix sockets.
package socket

import (
	"fmt"
	"io/fs"
	"net"
	"os"

	"github.com/vipmilter/vipmilter/config"
)

// Listen opens addr. For a unix socket it refuses a path another process
// is serving (a second daemon would steal the MTA's connections), removes a
// stale socket left by a process that died, makes the new one mode (when
// mode is not 0; the MTA's processes run as another user) and removes it
// again when the listener closes. Errors name addr.
func Listen(addr config.Listen, mode fs.FileMode) (net.Listener, error) {
	path := addr.Path()
	if path != "" {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen %s: another process is serving it", addr)
		}
		if fi, err := os.Lstat(path); err == nil && fi.Mode()&fs.ModeSocket != 0 {
			os.Remove(path)
		}
	}
	ln, err := net.Listen(addr.Network, addr.Address)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	if path != "" {
		ln.(*net.UnixListener).SetUnlinkOnClose(true)
		if mode != 0 {
			if err := os.Chmod(path, mode); err != nil {
				ln.Close()
				return nil, fmt.Errorf("socket %s: %w", path, err)
			}
		}
	}
	return ln, nil
}
