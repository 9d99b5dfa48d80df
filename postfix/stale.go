package postfix

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/vipmilter/vipmilter/config"
)

// Stale tells whether the Postfix configuration in configDir was rendered
// from another binding file (or header key) than cfg: a binding the milter
// would write and Postfix does not route. detail says what to do. It reads
// cfg.HeaderKeyFile and configDir's StampFile (world-readable: it holds a
// digest, never the key). check and serve call it; mail for a binding
// Postfix does not know is held meanwhile (HeaderChecksFile's last rule).
//
// hooked holds the hook policyd.ChooseHook picks now and PolicyRecipients
// (other fields are ignored; Key is read here): a script edit that changes
// either makes the Postfix side stale too.
func Stale(cfg *config.Config, hooked Options, configDir string) (bool, string, error) {
	path := filepath.Join(configDir, StampFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return true, fmt.Sprintf("%s has no %s: \"vipmilter postfix\" has not been run on it; run it", configDir, StampFile), nil
	}
	if err != nil {
		return false, "", fmt.Errorf("postfix stamp: %w", err)
	}
	key, err := config.ReadHeaderKey(cfg.HeaderKeyFile)
	if err != nil {
		return false, "", err
	}
	hooked.Key = key
	want, err := Digest(cfg, hooked)
	if err != nil {
		return false, "", err
	}
	if got := stampField(string(b), "digest"); got != want {
		return true, fmt.Sprintf("the Postfix side in %s was rendered from another version of %s (or another header key or hook): run \"vipmilter postfix\"; until then mail for bindings Postfix does not know is held (postqueue -p shows it; release with \"postsuper -r ALL hold\" after the run)", configDir, source(cfg)), nil
	}
	return false, "", nil
}
