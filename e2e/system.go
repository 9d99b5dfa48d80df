package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/testenv"
)

// BuildVipmilter builds ./cmd/vipmilter of the module rooted at repo into dir.
func BuildVipmilter(ctx context.Context, repo, dir string) (string, error) {
	bin := filepath.Join(dir, "vipmilter")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/vipmilter")
	cmd.Dir = repo
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build vipmilter: %w: %s", err, out)
	}
	return bin, nil
}

// System is the whole vipmilter system on one binding file: namespaces,
// sinks on the sink side, and on the mta side the binding addresses, a
// private Postfix configured by "vipmilter postfix" and "vipmilter serve".
type System struct {
	Net     *Network
	Postfix *testenv.Postfix
	SinkDir string
	Bin     string
	Config  string
	Log     *slog.Logger

	dir    string
	sinks  []*testenv.Sink
	serve  *exec.Cmd
	exited chan struct{}
	out    bytes.Buffer
}

// SystemOptions choose how the system is brought up.
type SystemOptions struct {
	Bin    string // vipmilter binary
	Config string // binding file
	Dir    string // work directory (Postfix, sink dumps)
	// IPAddrFallback adds binding addresses with ip(8) instead of
	// "vipmilter provision".
	IPAddrFallback bool
	Log            *slog.Logger
}

// StartSystem brings the whole system up; on error it tears down what it
// started. Close tears down the rest.
func StartSystem(ctx context.Context, o SystemOptions) (*System, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	s := &System{Bin: o.Bin, Config: o.Config, Log: o.Log, dir: o.Dir, SinkDir: filepath.Join(o.Dir, "sink")}
	if err := s.start(ctx, o); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *System) start(ctx context.Context, o SystemOptions) error {
	n, err := NewNetwork(ctx)
	if err != nil {
		return err
	}
	s.Net = n
	s.Log.Info("namespaces up", "mta", n.MTA, "sink", n.Sink)
	if s.sinks, err = StartSinks(ctx, n, s.SinkDir); err != nil {
		return err
	}
	if o.IPAddrFallback {
		cfg, err := config.Load(o.Config)
		if err != nil {
			return err
		}
		var addrs []netip.Addr
		for _, b := range cfg.Bindings {
			for _, p := range b.Addresses {
				// The host address only: the prefix length is the
				// provisioner's business.
				addrs = append(addrs, p.Addr())
				if err := n.AddAddress(ctx, p.Addr().String()); err != nil {
					return err
				}
			}
		}
		s.Log.Info("binding addresses added with ip addr", "addresses", addrs)
	} else {
		// The ownership record goes to the work directory, not the host's
		// /var/lib/vipmilter.
		if _, err := s.Vipmilter(ctx, "provision", "-c", o.Config, "--state-dir", filepath.Join(o.Dir, "state")); err != nil {
			return err
		}
		s.Log.Info("binding addresses provisioned", "command", "vipmilter provision")
	}
	pf, err := NewPostfix(ctx, filepath.Join(o.Dir, "postfix"), n.MTA)
	if err != nil {
		return err
	}
	s.Postfix = pf
	if err := s.ApplyPostfix(ctx); err != nil {
		return err
	}
	return s.StartServe(ctx)
}

// StartSinks starts smtp-sink on the sink's IPv4 and IPv6 addresses, both
// dumping into dir. On error the sinks already started are returned too.
func StartSinks(ctx context.Context, n *Network, dir string) ([]*testenv.Sink, error) {
	var sinks []*testenv.Sink
	for _, a := range []string{SinkAddr4, SinkAddr6} {
		sk, err := testenv.StartSink(ctx, n.Sink, net.JoinHostPort(a, "25"), dir)
		if err != nil {
			return sinks, err
		}
		sinks = append(sinks, sk)
	}
	return sinks, nil
}

// Vipmilter runs a vipmilter subcommand inside the mta namespace.
func (s *System) Vipmilter(ctx context.Context, args ...string) (string, error) {
	cmd := s.Net.MTA.Command(ctx, s.Bin, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("vipmilter %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// ApplyPostfix runs "vipmilter postfix", which renders the vipmilter part of
// the private instance and reloads it.
func (s *System) ApplyPostfix(ctx context.Context) error {
	if _, err := s.Vipmilter(ctx, "postfix", "-c", s.Config, "--config-dir", s.Postfix.Dir); err != nil {
		return err
	}
	// The command reloads Postfix itself; a second reload is harmless and
	// covers a render that only touched tables.
	return s.Postfix.Reload(ctx)
}

// StartServe starts "vipmilter serve" and waits until its milter listens
// on the binding file's Milter_Listen.
func (s *System) StartServe(ctx context.Context) error {
	cfg, err := config.Load(s.Config)
	if err != nil {
		return err
	}
	s.out.Reset()
	cmd := s.Net.MTA.Command(context.Background(), s.Bin, "serve", "-c", s.Config)
	cmd.Stdout, cmd.Stderr = &s.out, &s.out
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("vipmilter serve: %w", err)
	}
	s.serve = cmd
	exited := make(chan struct{})
	s.exited = exited
	go func() { cmd.Wait(); close(exited) }()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = testenv.Poll(wctx, 50*time.Millisecond, func() (bool, error) {
		select {
		case <-exited:
			return false, fmt.Errorf("vipmilter serve exited: %s", s.out.String())
		default:
		}
		return milterListening(wctx, s.Net.MTA, cfg.MilterListen)
	}, "vipmilter serve to listen on "+cfg.MilterListen.String())
	if err != nil {
		s.StopServe(syscall.SIGKILL)
		return err
	}
	s.Log.Info("vipmilter serve listening", "listen", cfg.MilterListen.String())
	return nil
}

// StopServe signals serve (SIGTERM, or SIGKILL to simulate a crash) and waits.
func (s *System) StopServe(sig syscall.Signal) {
	if s.serve == nil || s.serve.Process == nil {
		return
	}
	s.serve.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		s.serve.Process.Kill()
		<-s.exited
	}
	s.serve = nil
}

// Reload sends SIGHUP to serve.
func (s *System) Reload() error {
	if s.serve == nil || s.serve.Process == nil {
		return errors.New("vipmilter serve is not running")
	}
	return s.serve.Process.Signal(syscall.SIGHUP)
}

// ServeOutput is what serve printed so far (its slog lines).
func (s *System) ServeOutput() string { return s.out.String() }

// Close stops everything in reverse order of start.
func (s *System) Close() error {
	s.StopServe(syscall.SIGTERM)
	var errs []error
	if s.Postfix != nil {
		if err := s.Postfix.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, sk := range s.sinks {
		sk.Stop()
	}
	if s.Net != nil {
		if err := s.Net.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
