package postfix

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// State is what a Postfix config directory holds now, as postconf reports it.
type State struct {
	Dir           string              // absolute
	Main          map[string]string   // postconf -n
	Services      map[string][]string // "name/type" -> fields of its postconf -M entry
	ServiceParams map[string]string   // postconf -P: "name/type/param" -> value
	QueueDir      string
	// ContentFilter is main.cf's effective content_filter ("" = none).
	ContentFilter string
	// PrevMilter is the milter entry the last run added (StampFile).
	PrevMilter string
	// LocalDomains are domains this Postfix delivers to itself (explicit
	// mydestination, virtual and relay domains): FILTER would send their
	// inbound mail out by SMTP.
	LocalDomains []string
}

// ReadState reads dir's configuration with postconf. A relative dir is
// made absolute: every path rendered from it must be.
func ReadState(ctx context.Context, dir string) (*State, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("Postfix config directory %s: %w", dir, err)
	}
	dir = abs
	if _, err := os.Stat(filepath.Join(dir, "main.cf")); errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s has no main.cf: this Postfix is not configured yet (Debian's \"No configuration\" install); create one, e.g. \"cp /usr/share/postfix/main.cf.debian %s/main.cf\" or \"dpkg-reconfigure postfix\", then run vipmilter postfix again", dir, dir)
	}
	st := &State{Dir: dir, Main: map[string]string{}, Services: map[string][]string{}, ServiceParams: map[string]string{}}
	out, err := postconf(ctx, dir, "-n")
	if err != nil {
		return nil, err
	}
	parseParams(out, st.Main)
	if out, err = postconf(ctx, dir, "-M"); err != nil {
		return nil, err
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 8 && !strings.HasPrefix(f[0], "#") {
			st.Services[f[0]+"/"+f[1]] = f
		}
	}
	if out, err = postconf(ctx, dir, "-P"); err != nil {
		return nil, err
	}
	parseParams(out, st.ServiceParams)
	if out, err = postconf(ctx, dir, "-xh", "queue_directory", "content_filter"); err != nil {
		return nil, err
	}
	if v := strings.Split(out, "\n"); len(v) >= 2 {
		st.QueueDir, st.ContentFilter = strings.TrimSpace(v[0]), strings.TrimSpace(v[1])
	}
	for _, name := range []string{"mydestination", "virtual_mailbox_domains", "virtual_alias_domains", "relay_domains"} {
		if _, set := st.Main[name]; !set {
			continue
		}
		cur, err := postconf(ctx, dir, "-xh", name)
		if err != nil {
			return nil, err
		}
		def, err := postconf(ctx, dir, "-dxh", name)
		if err != nil {
			return nil, err
		}
		if v := strings.TrimSpace(cur); v != "" && v != strings.TrimSpace(def) {
			st.LocalDomains = append(st.LocalDomains, name+" = "+v)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, StampFile)); err == nil {
		st.PrevMilter = stampField(string(b), "milter")
	}
	return st, nil
}

// stampField returns the value of the "name value" line of a stamp.
func stampField(stamp, name string) string {
	for _, line := range strings.Split(stamp, "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// Options derives Render's options from the current configuration.
func (st *State) Options() Options {
	o := Options{ConfigDir: st.Dir, QueueDir: st.QueueDir, Main: st.Main, Services: st.Services,
		ServiceParams: st.ServiceParams, ContentFilter: st.ContentFilter, PrevMilter: st.PrevMilter}
	if f, ok := st.Services["smtp/unix"]; ok {
		o.SMTPPrivate, o.SMTPUnpriv, o.SMTPChroot = f[2], f[3], f[4]
	}
	cleanup, smtpd := false, false
	if f, ok := st.Services["cleanup/unix"]; ok {
		o.CleanupChroot = f[4]
		cleanup = f[4] == "y"
	}
	if f, ok := st.Services["smtp/inet"]; ok {
		smtpd = f[4] == "y"
	}
	o.MilterChrooted = cleanup && smtpd
	o.MilterChrootMixed = cleanup != smtpd
	return o
}
