package main

import (
	"context"
	"log/slog"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/milter"
	"github.com/vipmilter/vipmilter/sendmail"
	"github.com/vipmilter/vipmilter/sieve"
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
		if err := s.srv.Serve(ln); err != nil {
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

// ADAPTER until milter.Settings.Decided exists on this branch: the milter's
// policy is wrapped so that every accepted decision is recorded under its
// queue id. Replace with Settings{Decided: s.store.Record} and delete
// recordingDecider and policySetter.
func (s *sendmailSide) policy(d milter.Decider) milter.Decider {
	if s == nil {
		return d
	}
	return recordingDecider{Decider: d, record: s.store.Record}
}

type recordingDecider struct {
	milter.Decider
	record func(queueID, binding string)
}

func (r recordingDecider) Decide(ctx context.Context, m *sieve.Message) sieve.Decision {
	d := r.Decider.Decide(ctx, m)
	if d.Action == sieve.Accept {
		r.record(m.QueueID, d.Binding)
	}
	return d
}

// policySetter wraps srv so a reloaded policy is wrapped too (ADAPTER, see
// policy).
func (s *sendmailSide) policySetter(srv *milter.Server) policySetter {
	return policySetterFunc(func(d milter.Decider) { srv.SetPolicy(s.policy(d)) })
}

type policySetter interface{ SetPolicy(milter.Decider) }

type policySetterFunc func(milter.Decider)

func (f policySetterFunc) SetPolicy(d milter.Decider) { f(d) }
