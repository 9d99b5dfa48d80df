package postfix

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
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
	// PrevMilter, PrevPolicy and PrevDefaulted are what the last run added
	// (StampFile; see Options).
	PrevMilter, PrevPolicy string
	PrevDefaulted          []string
	PrevDaemonNames        map[string]string
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
	st := &State{Dir: dir, Main: map[string]string{}, ServiceParams: map[string]string{}}
	b, err := os.ReadFile(filepath.Join(dir, "master.cf"))
	if err != nil {
		return nil, fmt.Errorf("master.cf: %w", err)
	}
	// master.cf is read here, not with postconf -M/-P: postconf's time grows
	// with the square of the number of services carrying -o overrides
	// (3,000 binding transports: about 6 s of CPU per call).
	st.Services, st.ServiceParams = parseMaster(string(b))
	mainText, err := os.ReadFile(filepath.Join(dir, "main.cf"))
	if err != nil {
		return nil, fmt.Errorf("main.cf: %w", err)
	}
	st.Main = parseMain(string(mainText))
	// Expanded values come from postconf run on a copy of main.cf beside an
	// empty master.cf, for the same reason.
	light, err := os.MkdirTemp("", "vipmilter-postconf-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(light)
	if err := os.WriteFile(filepath.Join(light, "main.cf"), mainText, 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(light, "master.cf"), nil, 0o644); err != nil {
		return nil, err
	}
	if err := cooled(light); err != nil {
		return nil, err
	}
	var out string
	// One call for the effective values, one for the defaults.
	local := []string{"mydestination", "virtual_mailbox_domains", "virtual_alias_domains", "relay_domains"}
	if out, err = postconf(ctx, light, append([]string{"-xh", "queue_directory", "content_filter"}, local...)...); err != nil {
		return nil, err
	}
	cur := strings.Split(out, "\n")
	if len(cur) < 2+len(local) {
		return nil, fmt.Errorf("postconf -c %s: unexpected output %q", dir, out)
	}
	st.QueueDir, st.ContentFilter = strings.TrimSpace(cur[0]), strings.TrimSpace(cur[1])
	stock, err := stockLocal(ctx, light, mainText, local)
	if err != nil {
		return nil, err
	}
	for i, name := range local {
		v := strings.TrimSpace(cur[2+i])
		if v == "" {
			continue
		}
		if extra := notIn(splitList(v), stock[i]); len(extra) > 0 {
			st.LocalDomains = append(st.LocalDomains, name+" = "+v+" (beyond the stock value: "+strings.Join(extra, ", ")+")")
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, StampFile)); err == nil {
		st.PrevMilter = stampField(string(b), "milter")
		st.PrevPolicy = stampField(string(b), "policy")
		st.PrevDefaulted = strings.Fields(stampField(string(b), "defaulted"))
		for _, kv := range strings.Fields(stampField(string(b), "daemon-names")) {
			if k, v, ok := strings.Cut(kv, "="); ok {
				if st.PrevDaemonNames == nil {
					st.PrevDaemonNames = map[string]string{}
				}
				st.PrevDaemonNames[k] = v
			}
		}
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
		ServiceParams: st.ServiceParams, ContentFilter: st.ContentFilter,
		PrevMilter: st.PrevMilter, PrevPolicy: st.PrevPolicy, PrevDefaulted: st.PrevDefaulted,
		PrevDaemonNames: st.PrevDaemonNames}
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
	// Policy requests come from every smtpd service (port 25, submission,
	// smtps, a content filter's re-injection), each with its own chroot
	// column.
	chrooted, plain := false, false
	for _, f := range st.Services {
		if len(f) > 7 && f[7] == "smtpd" {
			chrooted = chrooted || f[4] == "y"
			plain = plain || f[4] != "y"
		}
	}
	o.SMTPDChrooted = chrooted && !plain
	o.SMTPDChrootMixed = chrooted && plain
	return o
}

// parseMaster reads master.cf as master(5) does (logicalLines). It returns each service's fields as
// "postconf -M" shows them ("name/type" -> name, type, 6 columns, command,
// arguments) and each "-o name=value" as "postconf -P" does
// ("name/type/name" -> value). "-o { name = value }" is understood.
func parseMaster(text string) (map[string][]string, map[string]string) {
	services, params := map[string][]string{}, map[string]string{}
	for _, line := range logicalLines(text) {
		f := splitMasterArgs(line)
		if len(f) < 8 {
			continue
		}
		key := f[0] + "/" + f[1]
		services[key] = f
		for i := 8; i+1 < len(f); i++ {
			if f[i] != "-o" {
				continue
			}
			kv := f[i+1]
			if strings.HasPrefix(kv, "{") {
				kv = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(kv, "{"), "}"))
			}
			if name, value, ok := strings.Cut(kv, "="); ok {
				params[key+"/"+strings.TrimSpace(name)] = strings.TrimSpace(value)
			}
		}
	}
	return services, params
}

// splitMasterArgs splits a master.cf logical line on whitespace, keeping a
// "{ ... }" group as one field.
func splitMasterArgs(line string) []string {
	var f []string
	var cur strings.Builder
	depth := 0
	for _, r := range line {
		switch {
		case r == '{':
			depth++
		case r == '}' && depth > 0:
			depth--
		case depth == 0 && (r == ' ' || r == '\t'):
			if cur.Len() > 0 {
				f = append(f, cur.String())
				cur.Reset()
			}
			continue
		}
		cur.WriteRune(r)
	}
	if cur.Len() > 0 {
		f = append(f, cur.String())
	}
	return f
}

// parseMain reads main.cf as postconf -n shows it: "name = value" logical
// lines, the last setting of a name wins.
func parseMain(text string) map[string]string {
	m := map[string]string{}
	for _, l := range logicalLines(text) {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	return m
}

// logicalLines splits main.cf or master.cf text as Postfix reads it: a line
// that starts with whitespace continues the one before (joined with one
// space), and blank and "#" lines are skipped.
func logicalLines(text string) []string {
	var logical []string
	var cur strings.Builder
	flush := func() {
		if s := strings.TrimSpace(cur.String()); s != "" {
			logical = append(logical, s)
		}
		cur.Reset()
	}
	for _, l := range strings.Split(text, "\n") {
		t := strings.TrimSpace(l)
		switch {
		case t == "" || strings.HasPrefix(t, "#"):
			continue
		case l[0] == ' ' || l[0] == '\t':
			cur.WriteString(" " + t)
		default:
			flush()
			cur.WriteString(t)
		}
	}
	flush()
	return logical
}

// stockLocal expands each of the parameters names to its stock value (the
// default, "$myhostname, localhost.$mydomain, localhost" for mydestination)
// with main.cf's own myhostname and mydomain: postconf -d would expand it
// with the machine's host name instead. A value is compared by meaning, so
// Debian's "$myhostname, mail.example.com, localhost.localdomain,
// localhost" is stock when myhostname is mail.example.com and mydomain
// localdomain. light is a throw-away directory holding a copy of main.cf.
func stockLocal(ctx context.Context, light string, mainText []byte, names []string) ([][]string, error) {
	out, err := postconf(ctx, light, append([]string{"-dh"}, names...)...)
	if err != nil {
		return nil, err
	}
	def := strings.Split(out, "\n")
	if len(def) < len(names) {
		return nil, fmt.Errorf("postconf -d: unexpected output %q", out)
	}
	// The last setting of a parameter in main.cf wins.
	text := string(mainText) + "\n"
	for i, name := range names {
		text += name + " = " + strings.TrimSpace(def[i]) + "\n"
	}
	dir := filepath.Join(light, "stock")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return nil, err
	}
	for name, data := range map[string][]byte{"main.cf": []byte(text), "master.cf": nil} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return nil, err
		}
	}
	if err := cooled(dir); err != nil {
		return nil, err
	}
	if out, err = postconf(ctx, dir, append([]string{"-xh"}, names...)...); err != nil {
		return nil, err
	}
	vals := strings.Split(out, "\n")
	if len(vals) < len(names) {
		return nil, fmt.Errorf("postconf -x: unexpected output %q", out)
	}
	stock := make([][]string, len(names))
	for i := range names {
		stock[i] = splitList(vals[i])
	}
	return stock, nil
}

// notIn lists the entries of list that set lacks (domain names compare
// without regard to case).
func notIn(list, set []string) []string {
	var extra []string
	for _, e := range list {
		if !slices.ContainsFunc(set, func(s string) bool { return strings.EqualFold(s, e) }) {
			extra = append(extra, e)
		}
	}
	return extra
}
