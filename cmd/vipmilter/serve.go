package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/milter"
	"github.com/vipmilter/vipmilter/sieve"
	"github.com/vipmilter/vipmilter/vip"
)

const serveHelp = `Run the milter daemon on Milter_Listen (or on a socket handed over by
systemd socket activation). SIGHUP reloads the binding file and script,
keeping the old ones when the new ones do not load; SIGTERM/SIGINT stop
accepting and let sessions in flight finish. Exits 2 on config errors.`

func cmdServe(c *cli, args []string) error {
	fs := c.flags("serve")
	path := configFlag(fs)
	level := fs.String("log-level", "info", "debug, info, warn or error")
	format := fs.String("log-format", "text", "text or json")
	grace := fs.Duration("shutdown-timeout", 10*time.Second, "how long sessions in flight may finish on SIGTERM")
	if err := fs.Parse(args); err != nil {
		return &exitError{code: 2, err: err}
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return &exitError{code: 2, err: fmt.Errorf("-log-level: %w", err)}
	}
	hopts := &slog.HandlerOptions{Level: lv}
	var log *slog.Logger
	if *format == "json" {
		log = slog.New(slog.NewJSONHandler(c.stderr, hopts))
	} else {
		log = slog.New(slog.NewTextHandler(c.stderr, hopts))
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	live := presence(ctx, log)

	cfg, pol, err := servePolicy(*path, live)
	if err != nil {
		printErrors(c.stderr, err)
		return &exitError{code: 2, err: fmt.Errorf("%s: not serving", *path)}
	}
	logWarnings(log, cfg)

	st, err := milterSettings(log, cfg)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	srv := milter.New(pol, st, log)
	ln, err := serveListener(srv, cfg)
	if err != nil {
		return err
	}
	if cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			ln.Close()
			return fmt.Errorf("metrics listen %q: %w", cfg.MetricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(srv.Metrics().Registry, promhttp.HandlerOpts{}))
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go hs.Serve(mln)
		defer hs.Close()
	}

	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("milter listening", "addr", ln.Addr().String(), "config", cfg.File)
	daemon.SdNotify(false, daemon.SdNotifyReady)

	for {
		select {
		case err := <-served:
			return fmt.Errorf("milter: %w", err)
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				cfg = reload(log, *path, live, cfg, srv)
				continue
			}
			log.Info("milter stopping", "signal", sig.String())
			daemon.SdNotify(false, daemon.SdNotifyStopping)
			sctx, scancel := context.WithTimeout(context.Background(), *grace)
			err := srv.Shutdown(sctx)
			scancel()
			if err != nil {
				log.Warn("milter shutdown incomplete", "err", err)
			}
			return nil
		}
	}
}

// servePolicy is loadPolicy with liveness.
func servePolicy(path string, live sieve.Liveness) (*config.Config, *sieve.Policy, error) {
	cfg, err := config.Load(path)
	if err != nil {
		return nil, nil, err
	}
	pol, err := sieve.New(cfg, sieve.Options{Liveness: live})
	if err != nil {
		return cfg, nil, err
	}
	return cfg, pol, nil
}

// reload builds a new config+policy; on any error the old one keeps
// serving. Listener addresses cannot change without a restart.
func reload(log *slog.Logger, path string, live sieve.Liveness, old *config.Config, srv *milter.Server) *config.Config {
	daemon.SdNotify(false, daemon.SdNotifyReloading+"\nMONOTONIC_USEC="+strconv.FormatInt(monotonicUsec(), 10))
	defer daemon.SdNotify(false, daemon.SdNotifyReady)
	cfg, pol, err := servePolicy(path, live)
	if err != nil {
		var list config.ErrorList
		if errors.As(err, &list) {
			for _, e := range list {
				log.Error("reload failed; keeping the old policy", "err", e)
			}
		} else {
			log.Error("reload failed; keeping the old policy", "err", err)
		}
		return old
	}
	logWarnings(log, cfg)
	if cfg.MilterListen != old.MilterListen || cfg.MetricsListen != old.MetricsListen {
		log.Warn("Milter_Listen/Metrics_Listen changed; restart vipmilter to apply")
	}
	st, err := milterSettings(log, cfg)
	if err != nil {
		log.Error("reload failed; keeping the old policy", "err", err)
		return old
	}
	srv.SetPolicy(pol, st)
	log.Info("policy reloaded", "config", cfg.File)
	return cfg
}

// milterSettings are the milter's settings from the loaded binding file and
// its header key. A missing key file is logged, not fatal: headers are then
// written without the key, which the Postfix side does not route on
// ("vipmilter postfix" creates the key).
func milterSettings(log *slog.Logger, cfg *config.Config) (milter.Settings, error) {
	key, err := config.ReadHeaderKey(cfg.HeaderKeyFile)
	if errors.Is(err, fs.ErrNotExist) {
		log.Error("binding header key missing; binding headers are written without it and Postfix will not route on them (vipmilter postfix creates it)", "Binding_Header_Key", cfg.HeaderKeyFile)
		key, err = "", nil
	}
	if err != nil {
		return milter.Settings{}, err
	}
	return milter.Settings{
		BindingHeader: cfg.BindingHeader,
		HeaderKey:     key,
		MaxBodyBytes:  cfg.MaxBodyBytes,
		OnPolicyError: cfg.OnPolicyError,
	}, nil
}

func logWarnings(log *slog.Logger, cfg *config.Config) {
	for _, w := range cfg.Warnings {
		log.Warn("config", "warning", w.Error())
	}
}

// serveListener prefers a systemd-activated socket over Milter_Listen.
func serveListener(srv *milter.Server, cfg *config.Config) (net.Listener, error) {
	if os.Getenv("LISTEN_FDS") != "" {
		lns, err := activation.Listeners()
		if err != nil {
			return nil, fmt.Errorf("systemd socket activation: %w", err)
		}
		for _, ln := range lns {
			if ln != nil {
				// Postfix dials what "vipmilter postfix" rendered from
				// Milter_Listen; a socket unit listening elsewhere would
				// leave every message to On_Milter_Down.
				if got := listenerAddress(ln); got != cfg.MilterListen.String() {
					slog.Warn("systemd passed a socket that differs from Milter_Listen; Postfix connects to Milter_Listen", "socket", got, "Milter_Listen", cfg.MilterListen.String())
				}
				return ln, nil
			}
		}
		return nil, errors.New("systemd socket activation: LISTEN_FDS set but no listening socket")
	}
	return srv.Listen(cfg.MilterListen)
}

// presence returns the host's binding liveness, or nil (all live) when it
// cannot be had; a panic in the provider is treated as an error.
func presence(ctx context.Context, log *slog.Logger) (live sieve.Liveness) {
	defer func() {
		if r := recover(); r != nil {
			log.Warn("binding liveness unavailable; treating every binding as live", "err", fmt.Sprint(r))
			live = nil
		}
	}()
	p, err := vip.NewPresence(ctx, log)
	if err != nil {
		log.Warn("binding liveness unavailable; treating every binding as live", "err", err)
		return nil
	}
	return p
}

func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Sec*1e6 + ts.Nsec/1e3
}

// listenerAddress is ln's address in Milter_Listen notation.
func listenerAddress(ln net.Listener) string {
	switch a := ln.Addr().(type) {
	case *net.UnixAddr:
		return "unix:" + a.Name
	case *net.TCPAddr:
		return "inet:" + net.JoinHostPort(a.IP.String(), strconv.Itoa(a.Port))
	}
	return ln.Addr().String()
}
