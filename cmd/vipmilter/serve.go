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
	"path/filepath"
	"strconv"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/milter"
	"github.com/vipmilter/vipmilter/policyd"
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
	newLog := logFlags(fs)
	pfDir := postfixDirFlag(fs)
	grace := fs.Duration("shutdown-timeout", 10*time.Second, "how long (`DURATION`, e.g. 30s) sessions in flight may take to finish on SIGTERM")
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLog()
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	live := presence(ctx, log)

	cfg, pol, err := servePolicy(log, *path, live)
	if err != nil {
		logErrors(log, "config error", err)
		return &exitError{code: 2, err: fmt.Errorf("%s: not serving", *path)}
	}
	logWarnings(log, cfg)
	logPostfixSide(log, cfg, pol, *pfDir)

	sm, err := startSendmailSide(cfg, log)
	if err != nil {
		return err
	}
	defer sm.stop() // after the milter's shutdown: Sendmail asks right after end of message
	st, err := milterSettings(log, cfg, sm)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	srv := milter.New(pol, st, log)
	ln, err := serveListener(log, srv, cfg)
	if err != nil {
		return err
	}
	pd, err := startPolicyService(log, cfg, pol)
	if err != nil {
		ln.Close()
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
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		go hs.Serve(mln)
		defer hs.Close()
	}

	file := cfg.File
	return runDaemon(log, service{
		name: "milter",
		run: func(ctx context.Context, ready func()) error {
			served := make(chan error, 1)
			go func() { served <- srv.Serve(ln) }()
			log.Info("milter listening", "addr", ln.Addr().String(), "config", file, "version", currentVersion())
			ready()
			select {
			case err := <-served:
				return err
			case <-ctx.Done():
			}
			sctx, scancel := context.WithTimeout(context.Background(), *grace)
			defer scancel()
			err := srv.Shutdown(sctx)
			stopPolicyService(sctx, log, pd)
			if err != nil {
				log.Warn("milter shutdown incomplete", "err", err)
			}
			return nil
		},
		reload: func() {
			cfg, pol = reload(log, *path, live, cfg, pol, srv, pd, sm)
			logPostfixSide(log, cfg, pol, *pfDir)
			sm.reload(cfg)
		},
	})
}

// servePolicy is loadPolicy with liveness; the policy logs through log
// and tells scripts the version "vipmilter version" prints.
func servePolicy(log *slog.Logger, path string, live sieve.Liveness) (*config.Config, *sieve.Policy, error) {
	cfg, err := loadConfig(path)
	if err != nil {
		return nil, nil, err
	}
	pol, err := sieve.New(cfg, sieve.Options{Liveness: live, Log: log, Version: currentVersion()})
	if err != nil {
		return cfg, nil, err
	}
	return cfg, pol, nil
}

// reload builds a new config+policy; on any error the old one keeps
// serving. Listener addresses cannot change without a restart.
func reload(log *slog.Logger, path string, live sieve.Liveness, old *config.Config, oldPol *sieve.Policy, srv *milter.Server, pd *policyd.Server, sm *sendmailSide) (*config.Config, *sieve.Policy) {
	cfg, pol, err := servePolicy(log, path, live)
	if err != nil {
		logErrors(log, "reload failed; keeping the old policy", err)
		return old, oldPol
	}
	logWarnings(log, cfg)
	if cfg.MilterListen != old.MilterListen || cfg.MetricsListen != old.MetricsListen {
		log.Warn("Milter_Listen/Metrics_Listen changed; restart vipmilter to apply")
	}
	st, err := milterSettings(log, cfg, sm)
	if err != nil {
		log.Error("reload failed; keeping the old policy", "err", err)
		return old, oldPol
	}
	srv.SetPolicy(pol, st)
	if pd != nil {
		pd.SetPolicy(pol)
	}
	log.Info("policy reloaded", "config", cfg.File)
	return cfg, pol
}

// milterSettings are the milter's settings from the loaded binding file, its
// header key and the Sendmail socketmap (which records each accepted
// decision). A missing key file is logged, not fatal: headers are then
// written without the key, which the Postfix side does not route on
// ("vipmilter postfix" creates the key). On a Sendmail host
// (Sendmail_Socketmap set) the socketmap carries the decision and no header
// is written, so no key is needed.
func milterSettings(log *slog.Logger, cfg *config.Config, sm *sendmailSide) (milter.Settings, error) {
	if !cfg.SendmailSocketmap.IsZero() {
		return milter.Settings{
			BindingHeader: cfg.BindingHeader,
			NoHeader:      true,
			MaxBodyBytes:  cfg.MaxBodyBytes,
			OnPolicyError: cfg.OnPolicyError,
			Decided:       sm.decided(),

			MaxHeaderBytes: cfg.MaxHeaderBytes, MaxConnections: cfg.MaxConnections,
			CommandTimeout: cfg.IdleTimeout, PacketTimeout: cfg.PacketTimeout,
		}, nil
	}
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
		Decided:       sm.decided(),

		MaxHeaderBytes: cfg.MaxHeaderBytes, MaxConnections: cfg.MaxConnections,
		CommandTimeout: cfg.IdleTimeout, PacketTimeout: cfg.PacketTimeout,
	}, nil
}

func logWarnings(log *slog.Logger, cfg *config.Config) {
	for _, w := range cfg.Warnings {
		log.Warn("config", "warning", w.Error())
	}
}

// serveListener prefers a systemd-activated socket over Milter_Listen. A
// unix socket whose directory does not exist is a usage error (exit 2) that
// names the directory to create.
func serveListener(log *slog.Logger, srv *milter.Server, cfg *config.Config) (net.Listener, error) {
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
					log.Warn("systemd passed a socket that differs from Milter_Listen; Postfix connects to Milter_Listen", "socket", got, "Milter_Listen", cfg.MilterListen.String())
				}
				return ln, nil
			}
		}
		return nil, errors.New("systemd socket activation: LISTEN_FDS set but no listening socket")
	}
	if p := cfg.MilterListen.Path(); p != "" {
		dir := filepath.Dir(p)
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			return nil, &exitError{2, fmt.Errorf("Milter_Listen %s: directory %s does not exist; create it, writable by the user vipmilter runs as and searchable by Postfix (for /var/spool/postfix/vipmilter: systemd-tmpfiles --create vipmilter.conf), or use inet:127.0.0.1:8894", cfg.MilterListen, dir)}
		}
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
