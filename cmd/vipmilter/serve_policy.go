package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/policyd"
	"github.com/vipmilter/vipmilter/sieve"
)

// startPolicyService starts the SMTPD policy service on Policy_Listen (the
// policy hook, see hookNeeds). An error of the service's own, once it
// serves, goes to failed (without blocking).
func startPolicyService(log *slog.Logger, cfg *config.Config, pol *sieve.Policy, failed chan<- error) (*policyd.Server, error) {
	key, err := config.ReadHeaderKey(cfg.HeaderKeyFile)
	if err != nil {
		return nil, fmt.Errorf("policy service: %w (run vipmilter postfix, which creates it)", err)
	}
	host, _ := os.Hostname()
	pd := policyd.New(pol, policyd.Options{BindingHeader: cfg.BindingHeader, HeaderKey: key, Daemon: host, MaxConns: cfg.MaxConnections, Log: log})
	ln, err := pd.Listen(cfg.PolicyListen)
	if err != nil {
		return nil, err
	}
	go func() {
		if err := pd.Serve(ln); err != nil && !errors.Is(err, policyd.ErrServerClosed) {
			log.Error("policy service stopped", "err", err)
			select {
			case failed <- fmt.Errorf("policy service: %w", err):
			default:
			}
		}
	}()
	log.Info("policy service listening", "addr", ln.Addr().String(), "Policy_Listen", cfg.PolicyListen.String())
	return pd, nil
}

// stopPolicyService lets requests in flight finish (nil pd: nothing to do).
func stopPolicyService(ctx context.Context, log *slog.Logger, pd *policyd.Server) {
	if pd == nil {
		return
	}
	if err := pd.Shutdown(ctx); err != nil {
		log.Warn("policy service shutdown incomplete", "err", err)
	}
}
