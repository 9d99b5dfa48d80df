package testenv

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Postfix is a private Postfix instance: its own config_directory Dir with
// queue/, data/ and maillog inside, running (once started) in namespace NS
// (nil: the host namespace). Commands name the instance with -c Dir, so the
// host's /etc/postfix is never read or changed.
type Postfix struct {
	Dir string
	NS  *NS
}

// MasterCF is Debian's service list with chroot "n" everywhere: a chroot
// would need copies of libraries and /etc files inside the temp dir.
const MasterCF = `smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

// NewPostfix writes a private main.cf and master.cf (MasterCF) under dir;
// it does not start the instance. main.cf holds what makes the instance
// private (its directories and maillog, no aliases) and the main settings
// ("name = value", or several such lines in one string), which override
// those.
func NewPostfix(dir string, ns *NS, main ...string) (*Postfix, error) {
	base := []string{
		"compatibility_level = 3.6",
		"queue_directory = " + filepath.Join(dir, "queue"),
		// Postfix creates data_directory itself, owned by the postfix user.
		"data_directory = " + filepath.Join(dir, "data"),
		// maillog_file must start with one of the prefixes, or Postfix
		// does not start.
		"maillog_file_prefixes = " + dir,
		"maillog_file = " + filepath.Join(dir, "maillog"),
		"alias_maps =",
		"alias_database =",
		"myhostname = mta.test",
	}
	if err := os.MkdirAll(filepath.Join(dir, "queue"), 0o755); err != nil {
		return nil, fmt.Errorf("postfix dir: %w", err)
	}
	// Postfix's daemons run as the postfix user and walk down to the
	// queue, so every directory above it must be searchable.
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o011 != 0o011 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				return nil, fmt.Errorf("postfix dir: %w", err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "main.cf"), []byte(mainCF(base, main)), 0o644); err != nil {
		return nil, fmt.Errorf("main.cf: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "master.cf"), []byte(MasterCF), 0o644); err != nil {
		return nil, fmt.Errorf("master.cf: %w", err)
	}
	return &Postfix{Dir: dir, NS: ns}, nil
}

// mainCF merges settings (lines, blank ones left out): a later "name = value" replaces an earlier one in
// place. Postfix would take the last one too, but it warns about each
// duplicate in every process, and its postlogd, logging its own warnings
// to itself, can deadlock on them.
func mainCF(settings ...[]string) string {
	var order []string
	value := map[string]string{}
	for _, entries := range settings {
		for _, l := range strings.Split(strings.Join(entries, "\n"), "\n") {
			if strings.TrimSpace(l) == "" {
				continue
			}
			name, _, _ := strings.Cut(l, "=")
			name = strings.TrimSpace(name)
			if _, ok := value[name]; !ok {
				order = append(order, name)
			}
			value[name] = l
		}
	}
	var b strings.Builder
	for _, name := range order {
		b.WriteString(value[name] + "\n")
	}
	return b.String()
}

// NewTestPostfix is NewPostfix in a temp dir of the test, for tests that
// read and render the configuration; it needs the PostfixTools.
func NewTestPostfix(t testing.TB, ns *NS, main ...string) *Postfix {
	t.Helper()
	Require(t, PostfixTools)
	p, err := NewPostfix(t.TempDir(), ns, main...)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// StartTestPostfix is NewTestPostfix, started; it needs the PostfixServer
// prerequisites. When the test ends the instance stops, and a failed test
// logs the maillog's tail and the queue.
func StartTestPostfix(t testing.TB, ns *NS, main ...string) *Postfix {
	t.Helper()
	Require(t, PostfixServer)
	p := NewTestPostfix(t, ns, main...)
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("maillog tail:\n%s\nqueue:\n%s", p.LogTail(60), p.Queue(context.Background()))
		}
		if err := p.Stop(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func (p *Postfix) run(ctx context.Context, name string, args ...string) (string, error) {
	return p.NS.Run(ctx, name, append([]string{"-c", p.Dir}, args...)...)
}

// Start starts the instance; an error carries the maillog's tail.
func (p *Postfix) Start(ctx context.Context) error {
	if _, err := p.run(ctx, "postfix", "start"); err != nil {
		return fmt.Errorf("postfix start: %w\n%s", err, p.LogTail(30))
	}
	return nil
}

// Stop stops the instance.
func (p *Postfix) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := p.run(ctx, "postfix", "stop")
	return err
}

// Restart stops and starts the instance, so no process of the previous
// configuration serves another session (a reload lets busy ones finish).
func (p *Postfix) Restart(ctx context.Context) error {
	if err := p.Stop(); err != nil {
		return err
	}
	// master exits asynchronously after "stop"; start refuses while it runs.
	return Poll(ctx, 100*time.Millisecond, func() (bool, error) {
		_, err := p.run(ctx, "postfix", "start")
		return err == nil, nil
	}, "postfix to restart")
}

// Reload makes Postfix reread main.cf, master.cf and its tables (regexp
// tables are read once per process).
func (p *Postfix) Reload(ctx context.Context) error {
	_, err := p.run(ctx, "postfix", "reload")
	return err
}

// Postconf sets main.cf parameters ("name = value" or "name=value").
func (p *Postfix) Postconf(ctx context.Context, settings ...string) error {
	_, err := p.run(ctx, "postconf", append([]string{"-e"}, settings...)...)
	return err
}

// AppendMaster adds service lines to master.cf.
func (p *Postfix) AppendMaster(lines string) error {
	f, err := os.OpenFile(filepath.Join(p.Dir, "master.cf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("master.cf: %w", err)
	}
	defer f.Close()
	if _, err := f.WriteString(lines); err != nil {
		return fmt.Errorf("master.cf: %w", err)
	}
	return nil
}

// Flush asks the queue manager to retry deferred mail now (postqueue -f).
func (p *Postfix) Flush(ctx context.Context) error {
	_, err := p.run(ctx, "postqueue", "-f")
	return err
}

// Requeue runs "postsuper -r ALL".
func (p *Postfix) Requeue(ctx context.Context) error {
	_, err := p.run(ctx, "postsuper", "-r", "ALL")
	return err
}

// Queue lists the queue as "postqueue -p" prints it (the error text if it
// fails: it is for failure messages).
func (p *Postfix) Queue(ctx context.Context) string {
	out, err := p.run(ctx, "postqueue", "-p")
	if err != nil {
		return err.Error()
	}
	return out
}

// QueueEmpty reports whether no message is queued.
func (p *Postfix) QueueEmpty(ctx context.Context) bool {
	out, err := p.run(ctx, "postqueue", "-j")
	return err == nil && strings.TrimSpace(out) == ""
}

// QueueEntry is one message of "postqueue -j".
type QueueEntry struct {
	QueueName  string `json:"queue_name"`
	QueueID    string `json:"queue_id"`
	Sender     string `json:"sender"`
	Recipients []struct {
		Address     string `json:"address"`
		DelayReason string `json:"delay_reason"`
	} `json:"recipients"`
}

// Entries lists the queue.
func (p *Postfix) Entries(ctx context.Context) ([]QueueEntry, error) {
	out, err := p.run(ctx, "postqueue", "-j")
	if err != nil {
		return nil, err
	}
	var qs []QueueEntry
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" {
			continue
		}
		var q QueueEntry
		if err := json.Unmarshal([]byte(line), &q); err != nil {
			return nil, fmt.Errorf("postqueue -j: %w", err)
		}
		qs = append(qs, q)
	}
	return qs, nil
}

// Sendmail submits msg through the local pickup path, where
// non_smtpd_milters apply.
func (p *Postfix) Sendmail(ctx context.Context, from string, to []string, msg []byte) error {
	cmd := p.NS.Command(ctx, "sendmail", append([]string{"-C", p.Dir, "-f", from, "-i", "--"}, to...)...)
	cmd.Stdin = strings.NewReader(string(msg))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sendmail: %w: %s", err, out)
	}
	return nil
}

// Log returns the whole maillog ("" before the first line).
func (p *Postfix) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	return string(b)
}

// LogTail returns the last n lines of the maillog.
func (p *Postfix) LogTail(n int) string {
	b, err := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	if err != nil {
		return "(no maillog: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
