package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/milter"
	"github.com/vipmilter/vipmilter/policyd"
	"github.com/vipmilter/vipmilter/sieve"
	"github.com/vipmilter/vipmilter/vip"
)

const serveHelp = `Run what the hook of the binding file needs (see "vipmilter check"): the
milter on Milter_Listen (or on a socket handed over by systemd socket
activation) for the milter hook, a Sendmail host, and mail from sendmail
under the policy hook; the SMTPD policy service on Policy_Listen for the
policy hook; neither for the none hook (Match_Domain only), when serve
only waits for a reload. SIGHUP reloads the binding file and script and
starts or stops listeners when the hook changed, keeping the old policy
and listeners when the new ones do not load or start; SIGTERM/SIGINT stop
accepting and let sessions in flight finish. Runs Go on a quarter of the
CPUs (at least one; the environment's GOMAXPROCS instead, when set): the
MTA needs the rest. Exits 2 on config errors.`

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

	procs, from, def := sizeScheduler(goMaxProcsSet())
	log.Info("scheduler", "gomaxprocs", procs, "from", from, "runtime_default", def)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	live := presence(ctx, log)

	cfg, pol, err := servePolicy(log, *path, live)
	var hook config.Hook
	if err == nil {
		hook, err = chooseHook(log, cfg, pol)
	}
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
	ls := newListeners(log, srv)
	if err := ls.adoptSystemd(cfg); err != nil {
		return err
	}
	if cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("metrics listen %q: %w", cfg.MetricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(srv.Metrics().Registry, promhttp.HandlerOpts{}))
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}
		go hs.Serve(mln)
		defer hs.Close()
	}

	st8 := &serveState{log: log, path: *path, live: live, pfDir: *pfDir, srv: srv, ls: ls, sm: sm,
		cfg: cfg, pol: pol, keyed: st.HeaderKey != ""}
	return runDaemon(log, service{
		name: "milter",
		start: func() error {
			if err := ls.set(cfg, pol, hookNeeds(cfg, hook), nil); err != nil {
				ls.stopAll(context.Background())
				return err
			}
			return nil
		},
		run: func(ctx context.Context, ready func()) error {
			ready()
			var err error
			select {
			case err = <-ls.failed:
			case <-ctx.Done():
			}
			sctx, scancel := context.WithTimeout(context.Background(), *grace)
			defer scancel()
			ls.stopAll(sctx)
			return err
		},
		reload: func() {
			st8.reload()
			logPostfixSide(log, st8.cfg, st8.pol, *pfDir)
			sm.reload(st8.cfg)
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

// chooseHook is policyd.ChooseHook, the choice "vipmilter postfix" renders,
// logged with its reason.
func chooseHook(log *slog.Logger, cfg *config.Config, pol *sieve.Policy) (config.Hook, error) {
	hook, why, err := policyd.ChooseHook(cfg, pol.Needs())
	if err != nil {
		return "", err
	}
	log.Info("hook", "hook", string(hook), "why", why)
	return hook, nil
}

// serveState is what a reload replaces (cfg, pol, keyed) and what it
// works with.
type serveState struct {
	log   *slog.Logger
	path  string
	live  sieve.Liveness
	pfDir string
	srv   *milter.Server
	ls    *listeners
	sm    *sendmailSide

	cfg   *config.Config
	pol   *sieve.Policy
	keyed bool // the milter writes the header key
}

// reload builds a new config+policy and makes the listeners those of its
// hook; on any error — a file that does not load, a header key that went
// missing, a listener that does not start — the old policy and listeners
// keep serving. While the Postfix side in pfDir is not yet rendered for
// the new binding file (postfixSide), listeners the old hook needs keep
// serving too: Postfix still connects to them. The milter's and policy
// service's addresses cannot change without a restart.
func (s *serveState) reload() {
	log := s.log
	refuse := func(err error) { logErrors(log, "reload failed; keeping the old policy", err) }
	cfg, pol, err := servePolicy(log, s.path, s.live)
	if err != nil {
		refuse(err)
		return
	}
	hook, err := chooseHook(log, cfg, pol)
	if err != nil {
		refuse(err)
		return
	}
	want := hookNeeds(cfg, hook)
	// Headers without the key would not route: keep the old settings,
	// which have it.
	if s.keyed && (want.Milter || want.Policy) && cfg.SendmailSocketmap.IsZero() {
		if _, err := config.ReadHeaderKey(cfg.HeaderKeyFile); err != nil {
			refuse(fmt.Errorf("Binding_Header_Key: %w", err))
			return
		}
	}
	logWarnings(log, cfg)
	if cfg.MetricsListen != s.cfg.MetricsListen {
		log.Warn("Metrics_Listen changed; restart vipmilter to apply")
	}
	st, err := milterSettings(log, cfg, s.sm)
	if err != nil {
		refuse(err)
		return
	}
	running := s.ls.running()
	if running != want {
		if stale, err := postfixSide(cfg, pol, s.pfDir); err != nil || stale != "" {
			log.Warn("hook changed but the Postfix side is not rendered for it yet; the old hook's listeners keep serving (run vipmilter postfix, then reload)", "running", running.String(), "needed", want.String())
			want = want.union(running)
		}
	}
	if err := s.ls.set(cfg, pol, want, func() { s.srv.SetPolicy(pol, st) }); err != nil {
		log.Error("reload failed; keeping the old policy and listeners", "err", err, "serving", running.String())
		return
	}
	if now := s.ls.running(); now != running {
		log.Info("listeners changed", "hook", string(hook), "was", running.String(), "now", now.String())
	}
	log.Info("policy reloaded", "config", cfg.File)
	s.cfg, s.pol, s.keyed = cfg, pol, st.HeaderKey != ""
}

// milterSettings are the milter's settings from the loaded binding file, its
// header key and the Sendmail socketmap (which records each accepted
// decision). A missing key file is logged, not fatal: headers are then
// written without the key, which the Postfix side does not route on
// ("vipmilter postfix" creates the key). On a Sendmail host
// (Sendmail_Socketmap set) the socketmap carries the decision and no header
// is written, so no key is needed.
func milterSettings(log *slog.Logger, cfg *config.Config, sm *sendmailSide) (milter.Settings, error) {
	st := milter.Settings{
		BindingHeader:  cfg.BindingHeader,
		MaxBodyBytes:   cfg.MaxBodyBytes,
		MaxHeaderBytes: cfg.MaxHeaderBytes,
		OnPolicyError:  cfg.OnPolicyError,
		Decided:        sm.decided(),
		MaxConnections: cfg.MaxConnections,
		CommandTimeout: cfg.IdleTimeout,
		PacketTimeout:  cfg.PacketTimeout,
	}
	if !cfg.SendmailSocketmap.IsZero() {
		st.NoHeader = true
		return st, nil
	}
	key, err := config.ReadHeaderKey(cfg.HeaderKeyFile)
	if errors.Is(err, fs.ErrNotExist) {
		log.Error("binding header key missing; binding headers are written without it and Postfix will not route on them (vipmilter postfix creates it)", "Binding_Header_Key", cfg.HeaderKeyFile)
		key, err = "", nil
	}
	if err != nil {
		return milter.Settings{}, err
	}
	st.HeaderKey = key
	return st, nil
}

func logWarnings(log *slog.Logger, cfg *config.Config) {
	for _, w := range cfg.Warnings {
		log.Warn("config", "warning", w.Error())
	}
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
