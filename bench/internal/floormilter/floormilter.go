// Package floormilter builds the floor milter of the system benchmarks: the
// cheapest milter that still writes a header (C, Debian's libmilter-dev;
// every stage off but end of message, one header added, TCP_NODELAY and
// TCP_QUICKACK on TCP connections). Any milter's cost is measured against
// it (issue 11). The C source is c/floor-milter.c.
package floormilter

import (
	"context"
	_ "embed"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/vipmilter/vipmilter/config"
)

//go:embed c/floor-milter.c
var source []byte

// Build compiles the floor milter into dir with cc (needs libmilter-dev)
// and returns the binary's path. Run it as "BIN " + Conn(listen).
func Build(ctx context.Context, dir string) (string, error) {
	src := filepath.Join(dir, "floor-milter.c")
	if err := os.WriteFile(src, source, 0o644); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "floor-milter")
	out, err := exec.CommandContext(ctx, "cc", "-O2", "-Wall", "-o", bin, src, "-lmilter", "-lpthread").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("build the floor milter (needs cc and libmilter-dev): %w: %s", err, out)
	}
	return bin, nil
}

// Conn turns Milter_Listen notation (unix:/path, inet:host:port,
// inet6:[addr]:port) into libmilter's smfi_setconn notation (unix:/path,
// inet:port@host, inet6:port@addr).
func Conn(listen string) (string, error) {
	l, err := config.ParseListen(listen)
	if err != nil {
		return "", err
	}
	if l.Network == "unix" {
		return "unix:" + l.Path(), nil
	}
	host, port, err := net.SplitHostPort(l.Address)
	if err != nil {
		return "", err
	}
	if strings.Contains(host, ":") {
		return "inet6:" + port + "@" + host, nil
	}
	return "inet:" + port + "@" + host, nil
}
