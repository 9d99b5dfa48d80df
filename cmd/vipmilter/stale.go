package main

import (
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/postfix"
)

// postfixDirFlag is the Postfix configuration directory check and serve
// compare the binding file with ("vipmilter postfix --config-dir").
func postfixDirFlag(fs *flagSet) *string {
	return fs.String("postfix-dir", "/etc/postfix", "Postfix config `DIR` that \"vipmilter postfix\" renders into; check and serve say when it is out of date with the binding file")
}

// postfixSide says whether the Postfix side in dir lags behind cfg: ""
// when it is current, or when dir holds no Postfix configuration (a
// Sendmail host, or Postfix elsewhere) or cfg is for Sendmail. Mail for a
// binding Postfix does not know waits in the hold queue, so a stale side
// loses nothing but must be fixed.
func postfixSide(cfg *config.Config, dir string) (stale string, err error) {
	if !cfg.SendmailSocketmap.IsZero() {
		return "", nil
	}
	if _, err := os.Stat(filepath.Join(dir, "main.cf")); errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	isStale, detail, err := postfix.Stale(cfg, dir)
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
func logPostfixSide(log *slog.Logger, cfg *config.Config, dir string) {
	switch stale, err := postfixSide(cfg, dir); {
	case err != nil:
		log.Warn("cannot tell whether the Postfix side is current", "postfix_dir", dir, "err", err)
	case stale != "":
		log.Error("Postfix side out of date with the binding file; mail for bindings Postfix does not know is held", "postfix_dir", dir, "detail", stale)
	}
}
