package socket

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
)

func TestListenUnix(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	addr := config.Listen{Network: "unix", Address: path}

	// A stale socket (its process gone) is replaced.
	stale, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	stale.(*net.UnixListener).SetUnlinkOnClose(false)
	stale.Close()

	ln, err := Listen(addr, 0o660)
	if err != nil {
		t.Fatalf("over a stale socket: %v", err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode: %v %v", fi.Mode(), err)
	}
	// A live one is not.
	if _, err := Listen(addr, 0o660); err == nil || !strings.Contains(err.Error(), "another process is serving it") {
		t.Fatalf("second listener on a live socket: %v", err)
	}
	ln.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("socket left after close: %v", err)
	}
}

func TestListenTCP(t *testing.T) {
	ln, err := Listen(config.Listen{Network: "tcp", Address: "127.0.0.1:0"}, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := Listen(config.Listen{Network: "tcp", Address: ln.Addr().String()}, 0); err == nil {
		t.Fatal("a second listener on a port in use succeeded")
	}
}
