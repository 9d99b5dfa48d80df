package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Postfix is a private Postfix instance whose configuration, queue, data and
// log all live under Dir, running inside one network namespace.
type Postfix struct {
	Dir string // config_directory; queue/, data/ and maillog are inside it
	NS  string
}

// masterCF is Debian's service list with chroot "n" everywhere, since a chroot
// would need copies of libraries and /etc files inside the temp dir.
const masterCF = `smtp      inet  n       -       n       -       -       smtpd
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
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`

// NewPostfix writes a private main.cf/master.cf under dir and starts Postfix
// in namespace ns. extra lines are appended to main.cf.
func NewPostfix(ctx context.Context, dir, ns string, extra ...string) (*Postfix, error) {
	p := &Postfix{Dir: dir, NS: ns}
	main := []string{
		"compatibility_level = 3.6",
		"queue_directory = " + filepath.Join(dir, "queue"),
		"data_directory = " + filepath.Join(dir, "data"),
		"maillog_file_prefixes = " + dir,
		"maillog_file = " + filepath.Join(dir, "maillog"),
		"myhostname = mta.e2e.test",
		"mydestination =",
		"alias_maps =",
		"alias_database =",
		"inet_interfaces = loopback-only",
		"inet_protocols = all",
		"mynetworks = 127.0.0.0/8 [::1]/128",
		"smtpd_relay_restrictions = permit_mynetworks, reject",
		"smtp_dns_support_level = disabled",
		"smtp_connect_timeout = 5s",
		// Deferred mail must come back quickly in tests that hold and release it.
		"queue_run_delay = 2s",
		"minimal_backoff_time = 2s",
		"maximal_backoff_time = 4s",
		"smtputf8_enable = no",
	}
	main = append(main, extra...)
	if err := os.MkdirAll(filepath.Join(dir, "queue"), 0o755); err != nil {
		return nil, fmt.Errorf("postfix dir: %w", err)
	}
	// Postfix's daemons run as the postfix user and need to walk down to the
	// queue, so every directory above it must be searchable.
	for d := dir; d != "/" && d != "."; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o011 != 0o011 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				return nil, fmt.Errorf("postfix dir: %w", err)
			}
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "main.cf"), []byte(strings.Join(main, "\n")+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("main.cf: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "master.cf"), []byte(masterCF), 0o644); err != nil {
		return nil, fmt.Errorf("master.cf: %w", err)
	}
	if _, err := run(ctx, "ip", "netns", "exec", ns, "postfix", "-c", dir, "start"); err != nil {
		return nil, fmt.Errorf("postfix start: %w\n%s", err, p.LogTail(30))
	}
	return p, nil
}

// Postconf sets main.cf parameters ("name = value" or "name=value").
func (p *Postfix) Postconf(ctx context.Context, settings ...string) error {
	args := append([]string{"-c", p.Dir, "-e"}, settings...)
	if _, err := run(ctx, "postconf", args...); err != nil {
		return err
	}
	return nil
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

// Reload makes Postfix reread main.cf, master.cf and its tables.
func (p *Postfix) Reload(ctx context.Context) error {
	_, err := run(ctx, "ip", "netns", "exec", p.NS, "postfix", "-c", p.Dir, "reload")
	return err
}

// Flush asks the queue manager to retry deferred mail now.
func (p *Postfix) Flush(ctx context.Context) error {
	_, err := run(ctx, "ip", "netns", "exec", p.NS, "postqueue", "-c", p.Dir, "-f")
	return err
}

// Queue lists the queue (postqueue -p).
func (p *Postfix) Queue(ctx context.Context) string {
	out, err := run(ctx, "postqueue", "-c", p.Dir, "-p")
	if err != nil {
		return err.Error()
	}
	return out
}

// QueueEmpty reports whether no message is queued.
func (p *Postfix) QueueEmpty(ctx context.Context) bool {
	out, err := run(ctx, "postqueue", "-c", p.Dir, "-j")
	return err == nil && strings.TrimSpace(out) == ""
}

// Sendmail submits a message through the local pickup path (non_smtpd_milters).
func (p *Postfix) Sendmail(ctx context.Context, from string, to []string, msg []byte) error {
	cmd := exec.CommandContext(ctx, "sendmail", append([]string{"-C", p.Dir, "-f", from, "-i", "--"}, to...)...)
	cmd.Stdin = strings.NewReader(string(msg))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("sendmail: %w: %s", err, out)
	}
	return nil
}

// LogTail returns the last n lines of the instance's maillog.
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

// Log returns the whole maillog.
func (p *Postfix) Log() string {
	b, _ := os.ReadFile(filepath.Join(p.Dir, "maillog"))
	return string(b)
}

// Stop stops the instance; it waits a moment so the namespace can go.
func (p *Postfix) Stop() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := run(ctx, "ip", "netns", "exec", p.NS, "postfix", "-c", p.Dir, "stop")
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
		_, err := run(ctx, "ip", "netns", "exec", p.NS, "postfix", "-c", p.Dir, "start")
		return err == nil, nil
	}, "postfix to restart")
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
	out, err := run(ctx, "postqueue", "-c", p.Dir, "-j")
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

// Requeue runs "postsuper -r ALL".
func (p *Postfix) Requeue(ctx context.Context) error {
	_, err := run(ctx, "ip", "netns", "exec", p.NS, "postsuper", "-c", p.Dir, "-r", "ALL")
	return err
}
