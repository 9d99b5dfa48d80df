package sendmail

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Conflict is something in the site's configuration the fragment cannot be
// combined with, with where it is and what to do.
type Conflict struct {
	File string
	Line int
	Msg  string
}

func (c Conflict) Error() string { return fmt.Sprintf("%s:%d: %s", c.File, c.Line, c.Msg) }

// siteRules are .mc constructs that clash with the fragment. Each pattern
// is matched against lines outside dnl comments.
var siteRules = []struct {
	re  *regexp.Regexp
	msg string
}{
	{regexp.MustCompile("FEATURE\\(\\s*`?queuegroup"), "FEATURE(`queuegroup') defines the queuegroup ruleset, which vipmilter.m4 defines to set each message's source address; remove the feature (vipmilter assigns one queue group per binding)"},
	{regexp.MustCompile("FEATURE\\(\\s*`?compat_check"), "FEATURE(`compat_check') defines the check_compat ruleset, which vipmilter.m4 defines to defer suspended bindings; remove the feature or move its access-map rules by hand"},
	{regexp.MustCompile(`^\s*Squeuegroup\b`), "the site defines its own queuegroup ruleset; vipmilter.m4 needs it to set each message's source address"},
	{regexp.MustCompile(`^\s*Scheck_compat\b`), "the site defines its own check_compat ruleset; vipmilter.m4 needs it to defer suspended bindings"},
	{regexp.MustCompile("define\\(\\s*`?confHELO_NAME"), "confHELO_NAME makes every binding greet with one name; vipmilter.m4 greets with the name each bound address resolves to (ClientPortOptions Modifiers=h), which Sendmail ignores while HeloName is set; remove it"},
	{regexp.MustCompile(`CLIENT_OPTIONS\(`), "CLIENT_OPTIONS is set by vipmilter.m4 (Modifiers=h for per-binding EHLO); a second ClientPortOptions for the same family replaces the first; remove the site's line (a fixed Addr= would also fight the per-message source address)"},
	{regexp.MustCompile("define\\(\\s*`?confHOST_STATUS_DIRECTORY"), "a host status directory is shared by all bindings (one binding's failures would hold the others back); vipmilter.m4 undefines it, so remove this line"},
	{regexp.MustCompile("define\\(\\s*`?confSINGLE_THREAD_DELIVERY"), "single-threaded delivery needs the host status directory, which vipmilter.m4 turns off; remove it"},
	{regexp.MustCompile("(INPUT_)?MAIL_FILTER\\(\\s*`?vipmilter'"), "a mail filter called vipmilter is already declared; vipmilter.m4 declares it, remove this one"},
}

// CheckSite reads a site's sendmail.mc (name is used in messages) and
// returns every construct the fragment cannot be combined with, and
// whether the file already includes the fragment.
func CheckSite(name string, mc []byte) (conflicts []Conflict, included bool) {
	sc := bufio.NewScanner(bytes.NewReader(mc))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if i := strings.Index(line, "dnl"); i >= 0 && (i == 0 || !isWordByte(line[i-1])) && (i+3 == len(line) || !isWordByte(line[i+3])) {
			line = line[:i]
		}
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		if strings.Contains(line, FragmentFile) && strings.Contains(line, "include(") {
			included = true
		}
		for _, r := range siteRules {
			if r.re.MatchString(line) {
				conflicts = append(conflicts, Conflict{File: name, Line: n, Msg: r.msg})
			}
		}
	}
	return conflicts, included
}

// CheckCF looks for the fragment's rulesets in a built sendmail.cf that the
// fragment did not write (our rulesets are followed by a "# vipmilter:"
// comment line), which catches definitions pulled in by files the .mc
// includes.
func CheckCF(name string, cf []byte) []Conflict {
	var out []Conflict
	lines := strings.Split(string(cf), "\n")
	for i, l := range lines {
		for _, rs := range Rulesets {
			if strings.TrimSpace(l) != "S"+rs {
				continue
			}
			if i > 0 && strings.HasPrefix(lines[i-1], "# vipmilter:") {
				continue
			}
			out = append(out, Conflict{File: name, Line: i + 1, Msg: fmt.Sprintf("ruleset %s is defined by something other than vipmilter.m4; the two cannot be combined", rs)})
		}
	}
	return out
}

func isWordByte(c byte) bool {
	return c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

// CheckDir checks the site in Sendmail's configuration directory dir:
// dir/sendmail.mc with CheckSite and, when it exists, dir/sendmail.cf with
// CheckCF. mcFound is false when there is no sendmail.mc to check. This is
// what "vipmilter sendmail" refuses on, and what "vipmilter check" reports
// for a Sendmail host.
func CheckDir(dir string) (conflicts []Conflict, included, mcFound bool, err error) {
	mcPath := filepath.Join(dir, "sendmail.mc")
	mc, err := os.ReadFile(mcPath)
	switch {
	case err == nil:
		mcFound = true
		conflicts, included = CheckSite(mcPath, mc)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, false, fmt.Errorf("sendmail site: %w", err)
	}
	cfPath := filepath.Join(dir, "sendmail.cf")
	cf, err := os.ReadFile(cfPath)
	switch {
	case err == nil:
		conflicts = append(conflicts, CheckCF(cfPath, cf)...)
	case !errors.Is(err, fs.ErrNotExist):
		return nil, false, false, fmt.Errorf("sendmail site: %w", err)
	}
	return conflicts, included, mcFound, nil
}
