package testenv

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
	"testing"
)

// Sink is an smtp-sink process that dumps each message it receives into
// Dir, preceded by the connection's real source address and EHLO name.
type Sink struct {
	Dir string
	cmd *exec.Cmd
}

// Received is one message as the sink saw it.
type Received struct {
	File       string
	ClientAddr string // X-Client-Addr: the source address the sender bound to
	Helo       string // X-Helo-Args: the EHLO name it sent
	Header     textproto.MIMEHeader
}

// StartSink runs smtp-sink on addr ("host:port", "[v6]:port") in namespace
// ns (nil: the host's, for loopback addresses), dumping into dir; an empty
// dir dumps nothing (benchmarks). It returns once the sink listens.
func StartSink(ctx context.Context, ns *NS, addr, dir string) (*Sink, error) {
	// smtp-sink refuses to run as root without -u, and drops to that user,
	// which must be able to write the dumps.
	args := []string{"-u", "nobody", addr, "256"}
	if dir != "" {
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return nil, fmt.Errorf("sink dir: %w", err)
		}
		if err := os.Chmod(dir, 0o777); err != nil {
			return nil, fmt.Errorf("sink dir: %w", err)
		}
		args = []string{"-u", "nobody", "-d", dir + "/%M.", addr, "100"}
	}
	cmd := ns.Command(context.Background(), "smtp-sink", args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("smtp-sink %s: %w", addr, err)
	}
	s := &Sink{Dir: dir, cmd: cmd}
	wctx, cancel := context.WithTimeout(ctx, Patience)
	defer cancel()
	if err := ns.WaitListen(wctx, addr); err != nil {
		s.Stop()
		return nil, fmt.Errorf("smtp-sink %s: %w: %s", addr, err, out.String())
	}
	return s, nil
}

// StartTestSink is StartSink for a test, dumping into a fresh temp dir; the
// sink stops when the test ends.
func StartTestSink(t testing.TB, ns *NS, addr string) *Sink {
	t.Helper()
	Require(t, SMTPSink)
	s, err := StartSink(context.Background(), ns, addr, filepath.Join(t.TempDir(), "sink"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	return s
}

// Stop kills the sink; dumped messages stay in Dir.
func (s *Sink) Stop() {
	if s.cmd.Process != nil {
		s.cmd.Process.Signal(syscall.SIGKILL)
		s.cmd.Wait()
	}
}

// Received parses every message dumped so far.
func (s *Sink) Received() ([]Received, error) { return ReadDumps(s.Dir) }

// ReadDumps parses every complete message smtp-sink dumped under dir.
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
		// A dump is complete once the message's header block ended;
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
