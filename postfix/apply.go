package postfix

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// State is what a Postfix config directory holds now, as postconf reports it.
type State struct {
	Dir           string
	Main          map[string]string   // postconf -n
	Services      map[string][]string // "name/type" -> fields of its postconf -M entry
	ServiceParams map[string]string   // postconf -P: "name/type/param" -> value
	QueueDir      string
	// LocalDomains are domains this Postfix delivers to itself (explicit
	// mydestination, virtual and relay domains): FILTER would send their
	// inbound mail out by SMTP.
	LocalDomains []string
}

// ReadState reads dir's configuration with postconf.
func ReadState(ctx context.Context, dir string) (*State, error) {
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
	if out, err = postconf(ctx, dir, "-xh", "queue_directory"); err != nil {
		return nil, err
	}
	st.QueueDir = strings.TrimSpace(out)
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
	return st, nil
}

// Options derives Render's options from the current master.cf.
func (st *State) Options() Options {
	o := Options{ConfigDir: st.Dir, QueueDir: st.QueueDir}
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

// ApplyOptions control Apply.
type ApplyOptions struct {
	DryRun   bool      // print the diff, change nothing
	NoReload bool      // do not reload a running Postfix
	Out      io.Writer // the diff and progress; nil = discard
}

// Result says what Apply did.
type Result struct {
	Changes  []string // one line per changed item
	Check    string   // output of postfix check
	Reloaded bool
	Running  bool
}

type change struct {
	desc string
	diff []string
	run  func(context.Context) error
}

// Apply brings dir (st.Dir) to plan, changing only what differs, then runs
// postfix check and reloads a running Postfix. Running it twice changes
// nothing the second time.
func Apply(ctx context.Context, plan *Plan, st *State, ao ApplyOptions) (*Result, error) {
	out := ao.Out
	if out == nil {
		out = io.Discard
	}
	dir := st.Dir
	var changes []change
	pc := func(args ...string) func(context.Context) error {
		return func(ctx context.Context) error { _, err := postconf(ctx, dir, args...); return err }
	}

	// Tables first: the parameters below name them.
	for _, t := range plan.Tables {
		old, err := os.ReadFile(t.Path)
		if err != nil && !os.IsNotExist(err) {
			return nil, fmt.Errorf("read %s: %w", t.Path, err)
		}
		missingDB := false
		if t.Postmap {
			if _, err := os.Stat(t.Path + ".db"); os.IsNotExist(err) {
				missingDB = true
			}
		}
		if string(old) == t.Content && !missingDB {
			continue
		}
		t := t
		c := change{desc: "table " + t.Path, run: func(ctx context.Context) error {
			if err := writeAtomic(t.Path, []byte(t.Content)); err != nil {
				return err
			}
			if t.Postmap {
				return run(ctx, "postmap", "-c", dir, "hash:"+t.Path)
			}
			return nil
		}}
		c.diff = lineDiff(string(old), t.Content)
		if len(c.diff) == 0 {
			c.diff = []string{"  (rebuild " + t.Path + ".db)"}
		}
		changes = append(changes, c)
	}

	want := map[string]bool{}
	for _, s := range plan.Services {
		want[s.Key()] = true
		cur, ok := st.Services[s.Key()]
		if ok && strings.Join(cur, " ") == strings.Join(strings.Fields(s.Line), " ") {
			continue
		}
		c := change{desc: "master.cf " + s.Key(), run: pc("-M", s.Key()+"="+s.Line)}
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
		changes = append(changes, change{desc: "master.cf " + key + " (removed)",
			diff: []string{"- " + strings.Join(st.Services[key], " ")}, run: pc("-MX", key)})
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
		c := change{desc: "master.cf " + p.Key(), run: pc("-P", p.Key()+"="+p.Value)}
		if ok {
			c.diff = append(c.diff, "- "+svc+" -o "+p.Name+"="+cur)
		}
		c.diff = append(c.diff, "+ "+svc+" -o "+p.Name+"="+p.Value)
		changes = append(changes, c)
	}
	for svc, names := range ownedServiceParams {
		for _, n := range names {
			key := svc + "/" + n
			if cur, ok := st.ServiceParams[key]; ok && !wantP[key] {
				changes = append(changes, change{desc: "master.cf " + key + " (removed)",
					diff: []string{"- " + svc + " -o " + n + "=" + cur}, run: pc("-PX", key)})
			}
		}
	}

	wantM := map[string]bool{}
	var set []string
	var setDiff []string
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
		set = append(set, p.Name+"="+p.Value)
	}
	if len(set) > 0 {
		changes = append(changes, change{desc: "main.cf", diff: setDiff, run: pc(append([]string{"-e"}, set...)...)})
	}
	var unset []string
	var unsetDiff []string
	for _, name := range sortedKeys(st.Main) {
		if !wantM[name] && strings.HasPrefix(name, plan.Prefix) && strings.HasSuffix(name, concurrencySuffix) {
			unset = append(unset, name)
			unsetDiff = append(unsetDiff, "- "+name+" = "+st.Main[name])
		}
	}
	if len(unset) > 0 {
		changes = append(changes, change{desc: "main.cf (removed)", diff: unsetDiff, run: pc(append([]string{"-X"}, unset...)...)})
	}

	res := &Result{}
	for _, c := range changes {
		res.Changes = append(res.Changes, c.desc)
		fmt.Fprintf(out, "%s\n", c.desc)
		for _, d := range c.diff {
			fmt.Fprintf(out, "  %s\n", d)
		}
	}
	if len(changes) == 0 {
		fmt.Fprintln(out, "no changes")
	}
	if ao.DryRun {
		return res, nil
	}
	for _, c := range changes {
		if err := c.run(ctx); err != nil {
			return res, fmt.Errorf("%s: %w", c.desc, err)
		}
	}
	check, err := output(ctx, "postfix", "-c", dir, "check")
	res.Check = check
	if check != "" {
		fmt.Fprint(out, check)
	}
	if err != nil {
		return res, fmt.Errorf("postfix check: %w", err)
	}
	res.Running = run(ctx, "postfix", "-c", dir, "status") == nil
	switch {
	case len(changes) == 0:
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

func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
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
