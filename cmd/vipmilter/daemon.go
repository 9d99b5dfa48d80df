package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// service is what runDaemon runs: serve's milter, provision --watch's
// address watcher.
type service struct {
	// name is the daemon's noun in log lines ("milter", "provisioner").
	name string
	// start, when set, opens what run serves. It is called once the
	// signal handlers are installed, so a SIGHUP sent as soon as a
	// listener is up is not lost (the default action would end the
	// process); its error ends runDaemon as it is.
	start func() error
	// run serves until ctx is cancelled (then returns nil once it has
	// stopped) or until it fails. It calls ready once it serves; runDaemon
	// then tells systemd READY=1.
	run func(ctx context.Context, ready func()) error
	// reload re-reads the binding file on SIGHUP. A reload that fails
	// keeps what was running and only logs, so it returns nothing.
	reload func()
}

// runDaemon runs s under the signal and sd_notify(3) protocol both units
// use (Type=notify, systemd/*.service): s.start, then READY=1 when s.run is ready; SIGHUP →
// RELOADING=1 with MONOTONIC_USEC, s.reload, READY=1; SIGTERM/SIGINT →
// STOPPING=1, cancel s.run and wait for it. Without NOTIFY_SOCKET the
// notifications are no-ops.
func runDaemon(log *slog.Logger, s service) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	if s.start != nil {
		if err := s.start(); err != nil {
			return err
		}
	}

	done := make(chan error, 1)
	go func() {
		done <- s.run(ctx, func() { daemon.SdNotify(false, daemon.SdNotifyReady) })
	}()
	for {
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			return nil
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				daemon.SdNotify(false, daemon.SdNotifyReloading+"\nMONOTONIC_USEC="+strconv.FormatInt(monotonicUsec(), 10))
				s.reload()
				daemon.SdNotify(false, daemon.SdNotifyReady)
				continue
			}
			log.Info(s.name+" stopping", "signal", sig.String())
			daemon.SdNotify(false, daemon.SdNotifyStopping)
			cancel()
			if err := <-done; err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			return nil
		}
	}
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, as RELOADING=1 wants it.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Sec*1e6 + ts.Nsec/1e3
}

// logFlags adds --log-level and --log-format to fs. The returned function,
// called after parsing, builds the logger every line of the command goes
// through (on the cli's stderr), makes it slog's default so libraries that
// log through slog.Default or the log package land in the same stream, and
// records it for main's final error line. A bad value is a usage error.
func logFlags(fs *flagSet) func() (*slog.Logger, error) {
	level := fs.String("log-level", "info", "log `LEVEL`: debug, info, warn or error")
	format := fs.String("log-format", "text", "log `FORMAT`: text (logfmt) or json (one object a line)")
	return func() (*slog.Logger, error) {
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(*level)); err != nil {
			return nil, &exitError{2, fmt.Errorf("--log-level: %w", err)}
		}
		opts := &slog.HandlerOptions{Level: lv}
		var h slog.Handler
		switch *format {
		case "text":
			h = slog.NewTextHandler(fs.c.stderr, opts)
		case "json":
			h = slog.NewJSONHandler(fs.c.stderr, opts)
		default:
			return nil, &exitError{2, fmt.Errorf("--log-format %q: want text or json", *format)}
		}
		log := slog.New(h)
		slog.SetDefault(log)
		fs.c.log = log
		return log, nil
	}
}

// logErrors logs every error of a config.ErrorList (else err) as one line.
func logErrors(log *slog.Logger, msg string, err error) {
	for _, e := range unfold(err) {
		log.Error(msg, "err", e)
	}
}

// logged returns a copy of c for a daemon: every line the command prints
// becomes a record of log (standard output at Info, standard error at
// Error), so the daemon's output is in one format.
func (c *cli) logged(log *slog.Logger) *cli {
	return &cli{stdin: c.stdin, log: log,
		stdout: &lineLogger{log: log, level: slog.LevelInfo},
		stderr: &lineLogger{log: log, level: slog.LevelError}}
}

// lineLogger logs every complete line written to it as one record whose
// message is the line.
type lineLogger struct {
	log   *slog.Logger
	level slog.Level
	mu    sync.Mutex
	buf   []byte
}

func (w *lineLogger) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		if line := string(bytes.TrimSpace(w.buf[:i])); line != "" {
			w.log.Log(context.Background(), w.level, line)
		}
		w.buf = w.buf[i+1:]
	}
}
