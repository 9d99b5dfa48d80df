package main

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/policyd"
	"github.com/vipmilter/vipmilter/postfix"
	"github.com/vipmilter/vipmilter/sieve"
)

// postfixDirFlag is the Postfix configuration directory check and serve
// compare the binding file with ("vipmilter postfix --config-dir").
func postfixDirFlag(fs *flagSet) *string {
	return fs.String("postfix-dir", "/etc/postfix", "Postfix config `DIR` that \"vipmilter postfix\" renders into; check and serve say when it is out of date with the binding file")
}

// postfixSide says whether the Postfix side in dir lags behind cfg and the
// hook its compiled policy pol takes (policyd.ChooseHook): ""
// when it is current, or when dir holds no Postfix configuration (a
// Sendmail host, or Postfix elsewhere) or cfg is for Sendmail. Mail for a
// binding Postfix does not know waits in the hold queue, so a stale side
// loses nothing but must be fixed.
func postfixSide(cfg *config.Config, pol *sieve.Policy, dir string) (stale string, err error) {
	if !cfg.SendmailSocketmap.IsZero() {
		return "", nil
	}
	if _, err := os.Stat(filepath.Join(dir, "main.cf")); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	hook, _, err := policyd.ChooseHook(cfg, pol.Needs())
	if err != nil {
		return "", err
	}
	isStale, detail, err := postfix.Stale(cfg, postfix.Options{Hook: hook, PolicyRecipients: pol.Needs().Recipients}, dir)
	if err != nil {
		return "", err
	}
	if isStale {
		return detail, nil
	}
	return "", nil
}

// logPostfixSide logs, at start and after each reload, when the Postfix
// side is out of date with the binding file.
func logPostfixSide(log *slog.Logger, cfg *config.Config, pol *sieve.Policy, dir string) {
	switch stale, err := postfixSide(cfg, pol, dir); {
	case err != nil:
		log.Warn("cannot tell whether the Postfix side is current", "postfix_dir", dir, "err", err)
	case stale != "":
		log.Error("Postfix side out of date with the binding file; mail for bindings Postfix does not know is held", "postfix_dir", dir, "detail", stale)
	}
}
