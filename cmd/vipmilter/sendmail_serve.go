package main

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/sendmail"
)

// sendmailSide is serve's Sendmail socketmap; nil when Sendmail_Socketmap
// is not set, and every method is then a no-op.
type sendmailSide struct {
	store *sendmail.Store
	srv   *sendmail.SocketmapServer
	done  chan struct{}
}

// startSendmailSide starts the socketmap server when cfg asks for one.
func startSendmailSide(cfg *config.Config, log *slog.Logger) (*sendmailSide, error) {
	if cfg.SendmailSocketmap.IsZero() {
		return nil, nil
	}
	ln, err := sendmail.Listen(cfg.SendmailSocketmap)
	if err != nil {
		return nil, err
	}
	s := &sendmailSide{store: sendmail.NewStore(cfg, log), done: make(chan struct{})}
	s.srv = sendmail.NewSocketmapServer(s.store, log)
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, sendmail.ErrServerClosed) {
			log.Error("sendmail socketmap stopped", "err", err)
		}
	}()
	log.Info("sendmail socketmap listening", "addr", cfg.SendmailSocketmap.String())
	return s, nil
}

// stopGrace keeps the socketmap answering after the milter stopped:
// Sendmail asks right after the milter's last end of message.
const stopGrace = time.Second

// stop shuts the socketmap down; call it after the milter stopped.
func (s *sendmailSide) stop() {
	if s == nil {
		return
	}
	time.Sleep(stopGrace)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.srv.Shutdown(ctx)
	<-s.done
}

// reload makes later decisions resolve addresses in cfg.
func (s *sendmailSide) reload(cfg *config.Config) {
	if s != nil {
		s.store.SetConfig(cfg)
	}
}

// decided records each accepted decision under its queue id
// (milter.Settings.Decided); nil without a socketmap.
func (s *sendmailSide) decided() func(queueID, binding string) {
	if s == nil {
		return nil
	}
	return s.store.Record
}
