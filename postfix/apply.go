package postfix

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ApplyOptions control Apply.
type ApplyOptions struct {
	DryRun   bool      // stage and check everything, print the diff, switch nothing
	NoReload bool      // do not reload a running Postfix
	Out      io.Writer // the diff and progress; nil = discard
}

// Result says what Apply did.
type Result struct {
	Changes  []string // one line per changed item
	Check    string   // output of postfix check on the staged configuration
	Reloaded bool
	Running  bool
}

type change struct {
	desc string
	diff []string
}

// edits is everything Apply changes, gathered first so that it can be
// staged whole: one master.cf rewrite and one postconf call per kind of
// edit, whatever the number of bindings.
type edits struct {
	tables   []Table
	obsolete []string          // table files to delete
	services map[string]string // "name/type" -> new entry line
	drop     map[string]bool   // "name/type" entries to delete
	owned    map[string]bool   // every vipmilter entry now in master.cf
	lines    []string          // every vipmilter entry of the plan
	pset     []string          // postconf -P "service/type/name=value"
	punset   []string          // postconf -PX "service/type/name"
	mset     []string          // postconf -e "name=value"
	munset   []string          // postconf -X "name"
}

func (e *edits) empty() bool {
	return len(e.tables)+len(e.obsolete)+len(e.services)+len(e.drop)+len(e.pset)+len(e.punset)+len(e.mset)+len(e.munset) == 0
}

// Apply brings dir (st.Dir) to plan, changing only what differs. Nothing
// is changed in place: the new main.cf, master.cf and tables are staged in
// a copy of the configuration, "postfix check" runs on the copy, and only
// then are the files switched in (renamed over the old ones); on any
// failure dir is as it was, and the error carries Postfix's own message.
// A running Postfix is then reloaded. Running Apply twice changes nothing
// the second time; with DryRun it stages and checks, then switches nothing.
func Apply(ctx context.Context, plan *Plan, st *State, ao ApplyOptions) (*Result, error) {
	out := ao.Out
	if out == nil {
		out = io.Discard
	}
	dir := st.Dir
	var changes []change
	e := &edits{services: map[string]string{}, drop: map[string]bool{}, owned: map[string]bool{}}
	for key, f := range st.Services {
		if owns(plan.Prefix, key, f) {
			e.owned[key] = true
		}
	}
	for _, s := range plan.Services {
		e.owned[s.Key()] = true // also an entry of that name the host had
		e.lines = append(e.lines, s.Line)
	}

	for _, t := range plan.Tables {
		old, err := os.ReadFile(t.Path)
		if err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("read %s: %w", t.Path, err)
		}
		fresh := err == nil && string(old) == t.Content
		if fi, err := os.Stat(t.Path); err == nil && fi.Mode().Perm() != t.Mode {
			fresh = false
		}
		if t.Postmap {
			if _, err := os.Stat(t.Path + ".db"); err != nil {
				fresh = false
			}
		}
		if fresh {
			continue
		}
		e.tables = append(e.tables, t)
		c := change{desc: "table " + t.Path, diff: lineDiff(string(old), t.Content)}
		if len(c.diff) == 0 {
			c.diff = []string{fmt.Sprintf("  (rewrite %s, mode %04o)", t.Path, t.Mode)}
		}
		if t.Mode&0o077 == 0 {
			// The table holds the header key: never print it.
			c.diff = []string{fmt.Sprintf("  (%d lines, mode %04o: it holds the binding header key)", strings.Count(t.Content, "\n"), t.Mode)}
		}
		changes = append(changes, c)
	}
	for _, name := range obsoleteTables {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			e.obsolete = append(e.obsolete, p)
			changes = append(changes, change{desc: "table " + p + " (removed: no longer used)"})
		}
	}

	want := map[string]bool{}
	for _, s := range plan.Services {
		want[s.Key()] = true
		cur, ok := st.Services[s.Key()]
		if ok && strings.Join(cur, " ") == strings.Join(strings.Fields(s.Line), " ") {
			continue
		}
		e.services[s.Key()] = s.Line
		c := change{desc: "master.cf " + s.Key()}
		if ok {
			c.diff = append(c.diff, "- "+strings.Join(cur, " "))
		}
		c.diff = append(c.diff, "+ "+s.Line)
		changes = append(changes, c)
	}
	for _, key := range sortedKeys(st.Services) {
		if want[key] || !owns(plan.Prefix, key, st.Services[key]) {
			continue
		}
		e.drop[key] = true
		changes = append(changes, change{desc: "master.cf " + key + " (removed)", diff: []string{"- " + strings.Join(st.Services[key], " ")}})
	}

	wantP := map[string]bool{}
	for _, p := range plan.ServiceParams {
		svc := p.Service
		if _, ok := st.Services[svc]; !ok {
			fmt.Fprintf(out, "warning: master.cf has no %s service; not setting %s\n", svc, p.Name)
			continue
		}
		wantP[p.Key()] = true
		cur, ok := st.ServiceParams[p.Key()]
		if ok && cur == p.Value {
			continue
		}
		e.pset = append(e.pset, p.Key()+"="+p.Value)
		c := change{desc: "master.cf " + p.Key()}
		if ok {
			c.diff = append(c.diff, "- "+svc+" -o "+p.Name+"="+cur)
		}
		c.diff = append(c.diff, "+ "+svc+" -o "+p.Name+"="+p.Value)
		changes = append(changes, c)
	}
	for _, key := range sortedKeys(st.ServiceParams) {
		svc, name := splitParamKey(key)
		if wantP[key] || want[svc] || owns(plan.Prefix, svc, st.Services[svc]) || !(ownedParam(plan.Prefix, key, st.ServiceParams[key]) || slices.Contains(plan.DropParams, key)) {
			continue
		}
		e.punset = append(e.punset, key)
		changes = append(changes, change{desc: "master.cf " + key + " (removed)", diff: []string{"- " + svc + " -o " + name + "=" + st.ServiceParams[key]}})
	}

	wantM := map[string]bool{}
	var setDiff, unsetDiff []string
	for _, p := range plan.Main {
		wantM[p.Name] = true
		cur, ok := st.Main[p.Name]
		if ok && cur == p.Value {
			continue
		}
		if ok {
			setDiff = append(setDiff, "- "+p.Name+" = "+cur)
		}
		setDiff = append(setDiff, "+ "+p.Name+" = "+p.Value)
		e.mset = append(e.mset, p.Name+"="+p.Value)
	}
	unset := append([]string(nil), plan.Unset...)
	for _, name := range sortedKeys(st.Main) {
		if !wantM[name] && strings.HasPrefix(name, plan.Prefix) && strings.HasSuffix(name, concurrencySuffix) {
			unset = append(unset, name)
		}
	}
	for _, name := range unset {
		if cur, ok := st.Main[name]; ok {
			e.munset = append(e.munset, name)
			unsetDiff = append(unsetDiff, "- "+name+" = "+cur)
		}
	}
	if len(setDiff) > 0 {
		changes = append(changes, change{desc: "main.cf", diff: setDiff})
	}
	if len(unsetDiff) > 0 {
		changes = append(changes, change{desc: "main.cf (settings removed)", diff: unsetDiff})
	}

	res := &Result{}
	for _, c := range changes {
		res.Changes = append(res.Changes, c.desc)
		fmt.Fprintf(out, "%s\n", c.desc)
		for _, d := range c.diff {
			fmt.Fprintf(out, "  %s\n", d)
		}
	}
	for _, w := range plan.Warnings {
		fmt.Fprintf(out, "warning: %s\n", w)
	}
	if e.empty() {
		fmt.Fprintln(out, "no changes")
		return res, nil
	}

	stage, err := os.MkdirTemp(dir, ".vipmilter-stage-")
	if err != nil {
		return res, fmt.Errorf("stage the new configuration: %w", err)
	}
	defer os.RemoveAll(stage)
	check, err := e.stage(ctx, dir, stage)
	res.Check = check
	if check != "" {
		fmt.Fprint(out, check)
	}
	if err != nil {
		return res, fmt.Errorf("%w\nnothing was changed in %s", err, dir)
	}
	if ao.DryRun {
		fmt.Fprintf(out, "dry run: the staged configuration passed \"postfix check\"; nothing was changed in %s\n", dir)
		return res, nil
	}
	if err := e.commit(dir, stage); err != nil {
		return res, err
	}

	res.Running = run(ctx, "postfix", "-c", dir, "status") == nil
	switch {
	case !res.Running:
		fmt.Fprintf(out, "Postfix (%s) is not running: start it with \"postfix -c %s start\"\n", dir, dir)
	case ao.NoReload:
		fmt.Fprintf(out, "RELOAD NEEDED: run \"postfix -c %s reload\"; Postfix reads the tables once per process\n", dir)
	default:
		if err := run(ctx, "postfix", "-c", dir, "reload"); err != nil {
			return res, fmt.Errorf("postfix reload: %w", err)
		}
		res.Reloaded = true
		fmt.Fprintln(out, "postfix reloaded")
	}
	return res, nil
}

// stage writes the whole new configuration into stage (a fresh directory
// inside dir) and runs "postfix check" on it. Tables keep their final
// paths in the configuration: only their files are staged.
func (e *edits) stage(ctx context.Context, dir, stage string) (string, error) {
	for _, f := range []string{"main.cf", "master.cf"} {
		if err := copyFile(filepath.Join(dir, f), filepath.Join(stage, f)); err != nil {
			return "", err
		}
	}
	for _, t := range e.tables {
		p := filepath.Join(stage, filepath.Base(t.Path))
		if err := writeFile(p, []byte(t.Content), t.Mode); err != nil {
			return "", err
		}
		if t.Postmap {
			if err := run(ctx, "postmap", "-c", stage, "hash:"+p); err != nil {
				return "", err
			}
		}
	}
	// vipmilter's own services leave master.cf while postconf edits the
	// rest (postconf's time grows with the square of the services that
	// carry -o overrides), then come back in one write.
	p := filepath.Join(stage, "master.cf")
	b, err := os.ReadFile(p)
	if err != nil {
		return "", err
	}
	if err := writeFile(p, []byte(editMaster(string(b), nil, e.owned)), 0); err != nil {
		return "", err
	}
	for _, step := range []struct {
		flag string
		args []string
	}{{"-P", e.pset}, {"-PX", e.punset}, {"-e", e.mset}, {"-X", e.munset}} {
		if len(step.args) == 0 {
			continue
		}
		if _, err := postconf(ctx, stage, append([]string{step.flag}, step.args...)...); err != nil {
			return "", err
		}
	}
	if b, err = os.ReadFile(p); err != nil {
		return "", err
	}
	if err := writeFile(p, withServices(b, e.lines, len(e.lines)), 0); err != nil {
		return "", err
	}
	if len(e.lines) <= checkSample {
		return postfixCheck(ctx, stage)
	}
	// postfix check calls postconf several times, and postconf's time grows
	// with the square of the services carrying -o overrides (minutes at
	// 3,000). So the check sees the first checkSample vipmilter services
	// whole and the rest without their overrides (every service line and
	// every main.cf setting is checked), while checkServices reads the rest
	// whole, checkSample at a time, beside it.
	sample := filepath.Join(stage, "check")
	if err := os.Mkdir(sample, 0o755); err != nil {
		return "", err
	}
	if err := copyFile(filepath.Join(stage, "main.cf"), filepath.Join(sample, "main.cf")); err != nil {
		return "", err
	}
	if err := writeFile(filepath.Join(sample, "master.cf"), withServices(b, e.lines, checkSample), 0o644); err != nil {
		return "", err
	}
	if err := cooled(sample); err != nil {
		return "", err
	}
	var rest string
	var restErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		rest, restErr = checkServices(ctx, stage, e.lines[checkSample:])
	}()
	check, err := postfixCheck(ctx, sample)
	<-done
	if err == nil {
		err = restErr
	}
	return check + rest, err
}

// checkServices has postconf read master.cf entries whole, checkSample at a
// time (each beside the staged main.cf), as "postfix check" reads master.cf
// (its "postconf -M"): a malformed entry fails, an override Postfix does not
// know is warned about ("unused parameter"). It returns the warnings. Small
// batches keep postconf's cost linear in the number of entries.
func checkServices(ctx context.Context, stage string, lines []string) (string, error) {
	var batches [][]string
	for len(lines) > 0 {
		n := min(checkSample, len(lines))
		batches, lines = append(batches, lines[:n]), lines[n:]
	}
	warnings := make([]string, len(batches))
	errs := make([]error, len(batches))
	slots := make(chan struct{}, max(1, runtime.NumCPU()))
	var wg sync.WaitGroup
	for i, batch := range batches {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			warnings[i], errs[i] = checkBatch(ctx, filepath.Join(stage, fmt.Sprintf("check-%d", i)), filepath.Join(stage, "main.cf"), batch)
		}()
	}
	wg.Wait()
	return strings.Join(warnings, ""), errors.Join(errs...)
}

// checkBatch runs "postconf -M" on a directory holding mainCF and a
// master.cf of lines.
func checkBatch(ctx context.Context, dir, mainCF string, lines []string) (string, error) {
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", err
	}
	if err := copyFile(mainCF, filepath.Join(dir, "main.cf")); err != nil {
		return "", err
	}
	if err := writeFile(filepath.Join(dir, "master.cf"), withServices(nil, lines, len(lines)), 0o644); err != nil {
		return "", err
	}
	if err := cooled(dir); err != nil {
		return "", err
	}
	_, stderr, err := output3(ctx, "postconf", "-c", dir, "-M")
	if err != nil {
		return stderr, fmt.Errorf("postfix check on the staged configuration failed: %s", strings.TrimSpace(stderr))
	}
	return stderr, nil
}

// withServices appends service entries to master.cf text; those after the
// first whole ones lose their arguments (the 8 columns stay).
func withServices(master []byte, lines []string, whole int) []byte {
	var m strings.Builder
	m.Write(master)
	if m.Len() > 0 && !strings.HasSuffix(m.String(), "\n") {
		m.WriteString("\n")
	}
	for i, line := range lines {
		if i >= whole {
			line = strings.Join(strings.Fields(line)[:8], " ")
		}
		m.WriteString(line + "\n")
	}
	return []byte(m.String())
}

// cooled dates back main.cf in dir, a throw-away copy made for a check:
// Postfix reads a main.cf changed within the last second again and again,
// 0.3 s apart, until it is older (util/dict.c, dict_load_file_xt), which
// cost every postconf run on a fresh copy about 2 s.
func cooled(dir string) error {
	old := time.Now().Add(-time.Minute)
	if err := os.Chtimes(filepath.Join(dir, "main.cf"), old, old); err != nil {
		return fmt.Errorf("stage: %w", err)
	}
	return nil
}

// checkSample is how many vipmilter services postfix check sees whole.
const checkSample = 100

// commit switches the staged files in: master.cf first (new transports
// exist before anything routes to them), then the tables, main.cf, and
// the stamp last, so an interrupted run is seen as stale.
func (e *edits) commit(dir, stage string) error {
	mv := func(name string) error {
		if err := os.Rename(filepath.Join(stage, name), filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("switch in %s: %w", name, err)
		}
		return nil
	}
	if len(e.services)+len(e.drop)+len(e.pset)+len(e.punset) > 0 {
		if err := mv("master.cf"); err != nil {
			return err
		}
	}
	var stamp []string
	for _, t := range e.tables {
		name := filepath.Base(t.Path)
		if name == StampFile {
			stamp = append(stamp, name)
			continue
		}
		if t.Postmap {
			if err := mv(name + ".db"); err != nil {
				return err
			}
		}
		if err := mv(name); err != nil {
			return err
		}
	}
	if len(e.mset)+len(e.munset) > 0 {
		if err := mv("main.cf"); err != nil {
			return err
		}
	}
	for _, name := range stamp {
		if err := mv(name); err != nil {
			return err
		}
	}
	for _, p := range e.obsolete {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove %s: %w", p, err)
		}
	}
	return nil
}

// editMaster rewrites master.cf text: entries in set are replaced in place
// (or appended), entries in drop are deleted; every other line, comments
// included, stays as it is. An entry is its first line plus the lines that
// continue it (starting with whitespace), as master(5) reads them.
func editMaster(text string, set map[string]string, drop map[string]bool) string {
	lines := strings.SplitAfter(text, "\n")
	var b strings.Builder
	done := map[string]bool{}
	skip := false
	for _, l := range lines {
		if l == "" {
			continue
		}
		if l[0] == ' ' || l[0] == '\t' {
			if strings.TrimSpace(l) != "" && skip {
				continue
			}
			b.WriteString(l)
			continue
		}
		skip = false
		if f := strings.Fields(l); len(f) >= 2 && !strings.HasPrefix(f[0], "#") {
			key := f[0] + "/" + f[1]
			if drop[key] {
				skip = true
				continue
			}
			if line, ok := set[key]; ok {
				b.WriteString(line + "\n")
				done[key] = true
				skip = true
				continue
			}
		}
		b.WriteString(l)
	}
	if s := b.String(); s != "" && !strings.HasSuffix(s, "\n") {
		b.WriteString("\n")
	}
	for _, key := range sortedKeys(set) {
		if !done[key] {
			b.WriteString(set[key] + "\n")
		}
	}
	return b.String()
}

// postfixCheck runs "postfix -c dir check". postfix(1) writes its reasons
// to stderr only when that is a terminal (otherwise only to syslog), so it
// runs under script(1) for a pseudo-terminal when that is available.
func postfixCheck(ctx context.Context, dir string) (string, error) {
	args := []string{"-c", dir, "check"}
	name := "postfix"
	if path, err := exec.LookPath("script"); err == nil {
		name, args = path, []string{"-qec", "postfix -c '" + dir + "' check", "/dev/null"}
	}
	stdout, stderr, err := output3(ctx, name, args...)
	msg := strings.ReplaceAll(stdout+stderr, "\r\n", "\n")
	if err != nil {
		m := strings.TrimSpace(msg)
		if m == "" {
			m = "(no message; see the mail log)"
		}
		return msg, fmt.Errorf("postfix check on the staged configuration failed: %s", m)
	}
	return msg, nil
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return fmt.Errorf("stage: %w", err)
	}
	fi, err := os.Stat(from)
	if err != nil {
		return fmt.Errorf("stage: %w", err)
	}
	if err := writeFile(to, b, fi.Mode().Perm()); err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		os.Lchown(to, int(st.Uid), int(st.Gid))
	}
	return nil
}

// writeFile writes data to path with mode (0 keeps the file's mode).
func writeFile(path string, data []byte, mode os.FileMode) error {
	if mode == 0 {
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		mode = fi.Mode().Perm()
	}
	if err := os.WriteFile(path, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// WriteFile keeps an existing file's mode and applies the umask.
	if err := os.Chmod(path, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ownedParam tells whether a master.cf -o override is vipmilter's: one of
// ownedServiceParams (header checks only while they still name a
// vipmilter table), or any value that names a vipmilter table or cleanup.
func ownedParam(prefix, key, value string) bool {
	svc, name := splitParamKey(key)
	if value == prefix+CleanupSuffix || value == prefix+FilteredSuffix {
		return true
	}
	for _, e := range splitList(value) {
		if ownTable(e) {
			return true
		}
	}
	for _, n := range ownedServiceParams[svc] {
		if n == name && !strings.HasSuffix(name, "header_checks") {
			return true
		}
	}
	return false
}

// splitParamKey splits "name/type/param" into "name/type" and "param".
func splitParamKey(key string) (string, string) {
	i := strings.LastIndex(key, "/")
	return key[:i], key[i+1:]
}

// owns tells whether a master.cf entry is one vipmilter rendered: its name
// starts with the prefix and it carries syslog_name=postfix/<name>.
func owns(prefix, key string, fields []string) bool {
	name, _, _ := strings.Cut(key, "/")
	if !strings.HasPrefix(name, prefix) {
		return false
	}
	for i := 8; i+1 < len(fields); i++ {
		if fields[i] == "-o" && fields[i+1] == "syslog_name=postfix/"+name {
			return true
		}
	}
	return false
}

func parseParams(out string, m map[string]string) {
	for _, line := range strings.Split(out, "\n") {
		k, v, ok := strings.Cut(line, " = ")
		if !ok {
			k, ok = strings.CutSuffix(line, " =")
			if !ok {
				continue
			}
			v = ""
		}
		m[strings.TrimSpace(k)] = v
	}
}

// lineDiff is a line-set diff: enough for small generated tables.
func lineDiff(old, new string) []string {
	o, n := strings.Split(strings.TrimSuffix(old, "\n"), "\n"), strings.Split(strings.TrimSuffix(new, "\n"), "\n")
	in := func(s []string) map[string]bool {
		m := map[string]bool{}
		for _, l := range s {
			m[l] = true
		}
		return m
	}
	om, nm := in(o), in(n)
	var d []string
	for _, l := range o {
		if !nm[l] && old != "" {
			d = append(d, "- "+l)
		}
	}
	for _, l := range n {
		if !om[l] || old == "" {
			d = append(d, "+ "+l)
		}
	}
	return d
}

func sortedKeys[V any](m map[string]V) []string {
	k := make([]string, 0, len(m))
	for s := range m {
		k = append(k, s)
	}
	sort.Strings(k)
	return k
}

func postconf(ctx context.Context, dir string, args ...string) (string, error) {
	stdout, _, err := output3(ctx, "postconf", append([]string{"-c", dir}, args...)...)
	return stdout, err
}

func run(ctx context.Context, name string, args ...string) error {
	_, err := output(ctx, name, args...)
	return err
}

// output runs a Postfix tool and returns its stdout; on failure the error
// carries stderr, which is where Postfix explains itself.
func output(ctx context.Context, name string, args ...string) (string, error) {
	stdout, stderr, err := output3(ctx, name, args...)
	return stdout + stderr, err
}

func output3(ctx context.Context, name string, args ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), stderr.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), stderr.String(), nil
}
