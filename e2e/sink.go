package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// Sink is an smtp-sink process in the sink namespace that dumps each message
// it receives, with the connection's real source address and EHLO name.
type Sink struct {
	Dir string
	cmd *exec.Cmd
}

// Received is one message as the sink saw it.
type Received struct {
	File       string
	ClientAddr string // X-Client-Addr: the source address Postfix bound to
	Helo       string // X-Helo-Args: the EHLO name Postfix sent
	Header     textproto.MIMEHeader
}

// StartSink runs smtp-sink on addr:25 ("[2001:db8::254]" for IPv6) in
// namespace ns, dumping into dir; an empty dir dumps nothing (benchmarks).
func StartSink(ctx context.Context, ns, addr, dir string) (*Sink, error) {
	if dir == "" {
		return startSink(ctx, ns, addr, dir, "-u", "nobody", addr+":25", "256")
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("sink dir: %w", err)
	}
	// smtp-sink drops to nobody, which must be able to write the dumps.
	if err := os.Chmod(dir, 0o777); err != nil {
		return nil, fmt.Errorf("sink dir: %w", err)
	}
	return startSink(ctx, ns, addr, dir, "-u", "nobody", "-d", dir+"/%M.", addr+":25", "100")
}

func startSink(ctx context.Context, ns, addr, dir string, args ...string) (*Sink, error) {
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns, "smtp-sink"}, args...)...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("smtp-sink %s: %w", addr, err)
	}
	s := &Sink{Dir: dir, cmd: cmd}
	host := strings.Trim(addr, "[]")
	if err := waitListen(ctx, ns, host, 25); err != nil {
		s.Stop()
		return nil, fmt.Errorf("smtp-sink %s: %w: %s", addr, err, out.String())
	}
	return s, nil
}

// Stop kills the sink; dumped messages stay in Dir.
func (s *Sink) Stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
		s.cmd.Wait()
	}
}

// ReadDumps parses every message dumped under dir.
func ReadDumps(dir string) ([]Received, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("sink dir: %w", err)
	}
	var msgs []Received
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		path := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("dump %s: %w", e.Name(), err)
		}
		// A dump is complete once the message body's header block ended;
		// smtp-sink writes the file while the DATA phase runs.
		if !bytes.Contains(b, []byte("\n\n")) && !bytes.Contains(b, []byte("\r\n\r\n")) {
			continue
		}
		// smtp-sink's own X-* lines precede the message header; they parse
		// as one header block together.
		h, err := textproto.NewReader(bufio.NewReader(bytes.NewReader(b))).ReadMIMEHeader()
		if err != nil && len(h) == 0 {
			return nil, fmt.Errorf("dump %s: %w", e.Name(), err)
		}
		// smtp-sink writes IPv6 peers as "ipv6:ADDR".
		addr := h.Get("X-Client-Addr")
		if len(addr) > 5 && strings.EqualFold(addr[:5], "ipv6:") {
			addr = addr[5:]
		}
		msgs = append(msgs, Received{File: path, ClientAddr: addr, Helo: h.Get("X-Helo-Args"), Header: h})
	}
	return msgs, nil
}
