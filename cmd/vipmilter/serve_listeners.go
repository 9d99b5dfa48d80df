package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/activation"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/milter"
	"github.com/vipmilter/vipmilter/policyd"
	"github.com/vipmilter/vipmilter/sieve"
)

// hookSet is what serve listens on for one binding file: the listeners
// the hook "vipmilter postfix" renders for it needs.
type hookSet struct {
	Milter bool // the milter on Milter_Listen (or the socket systemd passed)
	Policy bool // the SMTPD policy service on Policy_Listen
}

// hookNeeds is the hookSet of hook (policyd.ChooseHook) for cfg: the none
// hook needs nothing (Postfix routes Match_Domain itself); the policy hook
// needs the policy service for smtpd mail and the milter for mail from
// sendmail (non_smtpd_milters); the milter hook the milter. A Sendmail host
// (Sendmail_Socketmap) always needs the milter and never a policy service,
// which Sendmail does not have.
func hookNeeds(cfg *config.Config, hook config.Hook) hookSet {
	if !cfg.SendmailSocketmap.IsZero() {
		return hookSet{Milter: true}
	}
	return hookSet{Milter: hook != config.HookNone, Policy: hook == config.HookPolicy}
}

func (h hookSet) union(o hookSet) hookSet {
	return hookSet{Milter: h.Milter || o.Milter, Policy: h.Policy || o.Policy}
}

func (h hookSet) String() string {
	switch {
	case h.Milter && h.Policy:
		return "milter and policy service"
	case h.Milter:
		return "milter"
	case h.Policy:
		return "policy service"
	}
	return "nothing"
}

// listeners are serve's milter listener and policy service, started and
// stopped as the hook of the loaded binding file asks (set). The milter
// Server lives as long as serve (its metrics too); only its listener comes
// and goes.
type listeners struct {
	log *slog.Logger
	srv *milter.Server
	// failed receives the error of a listener that stopped on its own.
	failed chan error

	mu sync.Mutex
	// started: set ran once (the first set logs "no milter listener").
	started bool
	// systemd is the milter socket systemd passed (socket activation),
	// or nil. It stays open while the milter does not serve it, so a
	// later reload can serve it again.
	systemd *os.File
	milter  *milterRun // nil: no milter listener
	pd      *policyd.Server
	pdAddr  config.Listen
	closed  bool // stopAll ran: errors from listeners are expected
}

// policyStopGrace is how long requests in flight may take when a reload
// stops the policy service (Postfix retries one that got no answer).
const policyStopGrace = 10 * time.Second

// milterRun is one milter listener being served.
type milterRun struct {
	ln      net.Listener
	stopped chan struct{} // closed before ln is closed on purpose
}

func newListeners(log *slog.Logger, srv *milter.Server) *listeners {
	return &listeners{log: log, srv: srv, failed: make(chan error, 2)}
}

// running is the set being served now.
func (l *listeners) running() hookSet {
	l.mu.Lock()
	defer l.mu.Unlock()
	return hookSet{Milter: l.milter != nil, Policy: l.pd != nil}
}

// set makes want the set being served, deciding with pol: it opens what
// want adds first and stops what want drops only once every start
// succeeded, so a failed start (a taken Policy_Listen, say) returns the
// error with the old set still serving, exactly as before. commit (may be
// nil) runs once everything started, before a new milter listener accepts:
// the caller gives the milter pol there. The policy service that keeps
// running gets pol and the header key as it is now.
func (l *listeners) set(cfg *config.Config, pol *sieve.Policy, want hookSet, commit func()) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var newMilter net.Listener
	var newPD *policyd.Server
	if want.Milter && l.milter == nil {
		ln, err := l.milterListener(cfg)
		if err != nil {
			return err
		}
		newMilter = ln
	} else if l.milter != nil && !l.fromSystemd() && listenerAddress(l.milter.ln) != cfg.MilterListen.String() {
		l.log.Warn("Milter_Listen changed; restart vipmilter to apply", "listening", listenerAddress(l.milter.ln), "Milter_Listen", cfg.MilterListen.String())
	}
	if want.Policy && l.pd == nil {
		pd, err := startPolicyService(l.log, cfg, pol, l.failed)
		if err != nil {
			if newMilter != nil {
				newMilter.Close()
			}
			return err
		}
		newPD, l.pdAddr = pd, cfg.PolicyListen
	} else if l.pd != nil {
		// A new key (vipmilter postfix re-created Binding_Header_Key) must
		// reach the answers with the policy: Postfix routes only on it.
		key, err := config.ReadHeaderKey(cfg.HeaderKeyFile)
		if err != nil {
			if newMilter != nil {
				newMilter.Close()
			}
			return fmt.Errorf("policy service: %w", err)
		}
		l.pd.SetPolicy(pol, cfg.BindingHeader, key)
		if cfg.PolicyListen != l.pdAddr {
			l.log.Warn("Policy_Listen changed; restart vipmilter to apply", "listening", l.pdAddr.String(), "Policy_Listen", cfg.PolicyListen.String())
		}
	}
	if commit != nil {
		commit()
	}
	if newPD != nil {
		l.pd = newPD
	}
	if newMilter != nil {
		l.milter = l.serveMilter(newMilter)
		l.log.Info("milter listening", "addr", newMilter.Addr().String(), "config", cfg.File, "version", currentVersion())
	}
	noMilter := !l.started && !want.Milter
	l.started = true
	if !want.Milter && l.milter != nil {
		l.stopMilter(l.milter)
		l.milter = nil
		noMilter = true
	}
	if !want.Policy && l.pd != nil {
		// Requests in flight finish; Postfix asks again on a new
		// connection, which is refused.
		ctx, cancel := context.WithTimeout(context.Background(), policyStopGrace)
		stopPolicyService(ctx, l.log, l.pd)
		cancel()
		l.log.Info("policy service stopped", "Policy_Listen", l.pdAddr.String())
		l.pd = nil
	}
	if noMilter {
		l.log.Info("no milter listener: the hook needs none", "config", cfg.File, "version", currentVersion())
	}
	return nil
}

// fromSystemd says whether the milter socket is systemd's.
func (l *listeners) fromSystemd() bool { return l.systemd != nil }

// milterListener opens the milter's socket: systemd's when it passed one
// (see adoptSystemd), else Milter_Listen. A unix socket whose directory
// does not exist is a usage error (exit 2) that names the directory to
// create.
func (l *listeners) milterListener(cfg *config.Config) (net.Listener, error) {
	if l.systemd != nil {
		// A new descriptor on systemd's socket each time: closing it
		// stops serving, not the socket.
		ln, err := net.FileListener(l.systemd)
		if err != nil {
			return nil, fmt.Errorf("systemd socket activation: %w", err)
		}
		return ln, nil
	}
	if p := cfg.MilterListen.Path(); p != "" {
		dir := filepath.Dir(p)
		if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			return nil, &exitError{2, fmt.Errorf("Milter_Listen %s: directory %s does not exist; create it, writable by the user vipmilter runs as and searchable by Postfix (for /var/spool/postfix/vipmilter: systemd-tmpfiles --create vipmilter.conf), or use inet:127.0.0.1:8894", cfg.MilterListen, dir)}
		}
	}
	return l.srv.Listen(cfg.MilterListen)
}

// adoptSystemd takes the milter socket systemd passed (LISTEN_FDS), if
// any, so every later milter listener serves it instead of Milter_Listen.
func (l *listeners) adoptSystemd(cfg *config.Config) error {
	if os.Getenv("LISTEN_FDS") == "" {
		return nil
	}
	lns, err := activation.Listeners()
	if err != nil {
		return fmt.Errorf("systemd socket activation: %w", err)
	}
	for _, ln := range lns {
		if ln == nil {
			continue
		}
		// Postfix dials what "vipmilter postfix" rendered from
		// Milter_Listen; a socket unit listening elsewhere would leave
		// every message to On_Milter_Down.
		if got := listenerAddress(ln); got != cfg.MilterListen.String() {
			l.log.Warn("systemd passed a socket that differs from Milter_Listen; Postfix connects to Milter_Listen", "socket", got, "Milter_Listen", cfg.MilterListen.String())
		}
		f, err := ln.(interface{ File() (*os.File, error) }).File()
		ln.Close()
		if err != nil {
			return fmt.Errorf("systemd socket activation: %w", err)
		}
		l.systemd = f
		return nil
	}
	return errors.New("systemd socket activation: LISTEN_FDS set but no listening socket")
}

// serveMilter serves ln until stopMilter or Shutdown; an error of its own
// goes to l.failed.
func (l *listeners) serveMilter(ln net.Listener) *milterRun {
	r := &milterRun{ln: ln, stopped: make(chan struct{})}
	go func() {
		err := l.srv.Serve(ln)
		select {
		case <-r.stopped:
			return
		default:
		}
		l.mu.Lock()
		closed := l.closed
		l.mu.Unlock()
		if !closed {
			select {
			case l.failed <- fmt.Errorf("milter listener %s: %w", ln.Addr(), err):
			default:
			}
		}
	}()
	return r
}

// stopMilter closes r's listener; sessions on it finish. A unix socket
// vipmilter made is removed, systemd's stays.
func (l *listeners) stopMilter(r *milterRun) {
	close(r.stopped)
	r.ln.Close()
	l.log.Info("milter listener closed", "addr", r.ln.Addr().String())
}

// stopAll is serve's shutdown: no new connections anywhere, sessions in
// flight finish until ctx ends.
func (l *listeners) stopAll(ctx context.Context) {
	l.mu.Lock()
	l.closed = true
	pd := l.pd
	l.pd = nil
	l.mu.Unlock()
	if err := l.srv.Shutdown(ctx); err != nil {
		l.log.Warn("milter shutdown incomplete", "err", err)
	}
	stopPolicyService(ctx, l.log, pd)
	if l.systemd != nil {
		l.systemd.Close()
	}
}
