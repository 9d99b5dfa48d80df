package e2e

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/testenv"
	"github.com/vipmilter/vipmilter/sendmail"
)

// SendmailPackages are the Debian packages the Sendmail harness unpacks with
// dpkg-deb -x. They are never installed: sendmail-bin conflicts with Postfix.
// libwrap0 is sendmail's one library that a Postfix host lacks.
var SendmailPackages = []string{"sendmail-bin", "sendmail-cf", "m4", "libmilter1.0.1", "libwrap0"}

// SendmailDist is an unpacked Sendmail.
type SendmailDist struct {
	Root   string // where the packages were unpacked
	Bin    string // a non-setgid copy of the sendmail binary (a setgid one ignores LD_LIBRARY_PATH)
	M4     string
	CFDir  string // the m4 configuration kit (cf.m4, ostype/, feature/)
	LibDir string // libwrap.so.0
}

// UnpackSendmail downloads the packages into cache with apt-get download
// (unless a .deb of each is there already) and unpacks them into root.
func UnpackSendmail(ctx context.Context, cache, root string) (*SendmailDist, error) {
	if err := os.MkdirAll(cache, 0o755); err != nil {
		return nil, fmt.Errorf("sendmail package cache: %w", err)
	}
	var debs []string
	for _, p := range SendmailPackages {
		m, _ := filepath.Glob(filepath.Join(cache, p+"_*.deb"))
		if len(m) == 0 {
			cmd := exec.CommandContext(ctx, "apt-get", "download", p)
			cmd.Dir = cache
			if out, err := cmd.CombinedOutput(); err != nil {
				return nil, fmt.Errorf("apt-get download %s: %w: %s", p, err, out)
			}
			if m, _ = filepath.Glob(filepath.Join(cache, p+"_*.deb")); len(m) == 0 {
				return nil, fmt.Errorf("apt-get download %s left no .deb in %s", p, cache)
			}
		}
		sort.Strings(m)
		debs = append(debs, m[len(m)-1])
	}
	for _, d := range debs {
		if _, err := testenv.Run(ctx, "dpkg-deb", "-x", d, root); err != nil {
			return nil, err
		}
	}
	dist := &SendmailDist{
		Root:   root,
		Bin:    filepath.Join(root, "sendmail.nosgid"),
		M4:     filepath.Join(root, "usr/bin/m4"),
		CFDir:  filepath.Join(root, "usr/share/sendmail/cf"),
		LibDir: filepath.Join(root, "usr/lib/x86_64-linux-gnu"),
	}
	b, err := os.ReadFile(filepath.Join(root, "usr/libexec/sendmail/sendmail"))
	if err != nil {
		return nil, fmt.Errorf("unpacked sendmail: %w", err)
	}
	if err := os.WriteFile(dist.Bin, b, 0o755); err != nil {
		return nil, fmt.Errorf("sendmail copy: %w", err)
	}
	return dist, nil
}

// Sendmail is a private Sendmail daemon in the mta namespace. It runs in its
// own mount and UTS namespaces, where its hosts file is bind-mounted over
// /etc/hosts (bound addresses must resolve to their EHLO names, and the host
// name must be qualified or Sendmail sleeps a minute at start), so nothing of
// the host's is touched.
type Sendmail struct {
	Dist     *SendmailDist
	Dir      string // its work directory
	ConfDir  string // Dir/etc: where "vipmilter sendmail" writes the fragment
	QueueDir string
	NS       *testenv.NS
	mc, cf   string
	hosts    string
	pidFile  string
}

// SendmailHostName is the private Sendmail's qualified host name.
const SendmailHostName = "mta.e2e.test"

// NewSendmail prepares a Sendmail in dir for namespace ns: a .mc that
// includes dir/etc/vipmilter.m4, and a hosts file with localhost, the
// Sendmail's own name and names, address → name. StartSendmailSystem adds
// the binding addresses' EHLO names with "vipmilter provision
// --hosts-file" (HostsFile), so the suite proves that command.
func NewSendmail(dist *SendmailDist, dir string, ns *testenv.NS, names map[string]string) (*Sendmail, error) {
	s := &Sendmail{Dist: dist, Dir: dir, ConfDir: filepath.Join(dir, "etc"), QueueDir: filepath.Join(dir, "queue"), NS: ns,
		mc: filepath.Join(dir, "sendmail.mc"), cf: filepath.Join(dir, "sendmail.cf"),
		hosts: filepath.Join(dir, "hosts"), pidFile: filepath.Join(dir, "sendmail.pid")}
	for _, d := range []string{s.ConfDir, s.QueueDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("sendmail dir: %w", err)
		}
	}
	// Sendmail refuses a queue directory others can write to.
	if err := os.Chmod(s.QueueDir, 0o700); err != nil {
		return nil, fmt.Errorf("sendmail queue: %w", err)
	}
	hosts := "127.0.0.1 localhost\n" + MTAAddr4 + " " + SendmailHostName + "\n"
	var addrs []string
	for a := range names {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	for _, a := range addrs {
		hosts += a + " " + names[a] + "\n"
	}
	files := map[string]string{
		s.hosts:                              hosts,
		filepath.Join(dir, "service.switch"): "hosts files\naliases files\n",
		s.mc:                                 s.mcText(),
	}
	for p, data := range files {
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			return nil, fmt.Errorf("sendmail setup: %w", err)
		}
	}
	return s, nil
}

// mcText is the test site's sendmail.mc: a plain MTA listening on
// 127.0.0.1:25, relaying for anyone (inside the namespace only), without DNS.
func (s *Sendmail) mcText() string {
	d := func(name, v string) string { return "define(`" + name + "', `" + v + "')dnl\n" }
	return "divert(-1)dnl\ndivert(0)dnl\n" +
		"include(`" + filepath.Join(s.Dist.CFDir, "m4/cf.m4") + "')dnl\n" +
		"OSTYPE(`linux')dnl\n" +
		d("confDOMAIN_NAME", SendmailHostName) +
		d("QUEUE_DIR", s.QueueDir) +
		d("STATUS_FILE", filepath.Join(s.Dir, "sendmail.st")) +
		d("confPID_FILE", s.pidFile) +
		d("ALIAS_FILE", "") +
		d("HELP_FILE", "") +
		d("confHOSTS_FILE", s.hosts) +
		d("confSERVICE_SWITCH_FILE", filepath.Join(s.Dir, "service.switch")) +
		d("confRESOLVER_OPTIONS", "WorkAroundBrokenAAAA") +
		d("confDONT_PROBE_INTERFACES", "True") +
		d("confDELIVERY_MODE", "background") +
		d("confDEF_USER_ID", "nobody:nogroup") +
		d("confTO_CONNECT", "10s") +
		d("confTO_INITIAL", "10s") +
		// The test directory lies under /tmp (sticky, world-writable).
		d("confDONT_BLAME_SENDMAIL", "TrustStickyBit,MapInUnsafeDirPath") +
		"DAEMON_OPTIONS(`Family=inet, Name=MTA, Port=25, Addr=127.0.0.1')dnl\n" +
		"FEATURE(`no_default_msa')dnl\n" +
		"FEATURE(`promiscuous_relay')dnl\n" +
		"FEATURE(`accept_unresolvable_domains')dnl\n" +
		"FEATURE(`nocanonify')dnl\n" +
		"MAILER(`smtp')dnl\n" +
		"include(`" + filepath.Join(s.ConfDir, sendmail.FragmentFile) + "')dnl\n"
}

// HostsFile is the path of the hosts file Sendmail sees as /etc/hosts.
func (s *Sendmail) HostsFile() string { return s.hosts }

// MC is the path of the test site's sendmail.mc.
func (s *Sendmail) MC() string { return s.mc }

// Build turns the .mc into sendmail.cf with the unpacked m4.
func (s *Sendmail) Build(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, s.Dist.M4, "-D_CF_DIR_="+s.Dist.CFDir+"/", s.mc)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("m4 %s: %w: %s", s.mc, err, stderr.String())
	}
	if strings.Contains(stderr.String(), "ERROR") {
		return fmt.Errorf("m4 %s: %s", s.mc, stderr.String())
	}
	if err := os.WriteFile(s.cf, out, 0o644); err != nil {
		return fmt.Errorf("sendmail.cf: %w", err)
	}
	return nil
}

// command runs the unpacked sendmail with args inside the namespaces.
func (s *Sendmail) command(ctx context.Context, args ...string) *exec.Cmd {
	script := `mount --bind "$1" /etc/hosts && hostname "$2" && LD_LIBRARY_PATH="$3" && export LD_LIBRARY_PATH && shift 3 && exec "$@"`
	full := append([]string{"--mount", "--uts", "sh", "-c", script, "sh",
		s.hosts, SendmailHostName, s.Dist.LibDir, s.Dist.Bin, "-C", s.cf}, args...)
	return s.NS.Command(ctx, "unshare", full...)
}

// Start runs the daemon (sendmail -bd) and waits until it listens.
func (s *Sendmail) Start(ctx context.Context) error {
	os.Remove(s.pidFile)
	// A file, not a pipe: the daemon keeps its stdout, and Wait would wait
	// for it.
	logf, err := os.OpenFile(filepath.Join(s.Dir, "daemon.out"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("sendmail -bd: %w", err)
	}
	defer logf.Close()
	cmd := s.command(ctx, "-bd")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Run(); err != nil {
		b, _ := os.ReadFile(logf.Name())
		return fmt.Errorf("sendmail -bd: %w: %s", err, b)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return s.NS.WaitListen(wctx, "127.0.0.1:25")
}

// Stop ends the daemon (the children delivering finish on their own).
func (s *Sendmail) Stop() error {
	b, err := os.ReadFile(s.pidFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("sendmail pid: %w", err)
	}
	var pid int
	if _, err := fmt.Sscanf(string(b), "%d", &pid); err != nil || pid <= 1 {
		return fmt.Errorf("sendmail pid file %q", b)
	}
	syscall.Kill(pid, syscall.SIGTERM)
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	os.Remove(s.pidFile)
	return nil
}

// Restart stops and starts the daemon (after a rebuilt sendmail.cf).
func (s *Sendmail) Restart(ctx context.Context) error {
	if err := s.Stop(); err != nil {
		return err
	}
	return s.Start(ctx)
}

// RunQueue runs every queue group once, in the foreground (sendmail -q).
func (s *Sendmail) RunQueue(ctx context.Context) error {
	if out, err := s.command(ctx, "-q").CombinedOutput(); err != nil {
		return fmt.Errorf("sendmail -q: %w: %s", err, out)
	}
	return nil
}

// Queue is the queue listing (sendmail -bp), for failure messages.
func (s *Sendmail) Queue(ctx context.Context) string {
	out, err := s.command(ctx, "-bp").CombinedOutput()
	if err != nil {
		return fmt.Sprintf("sendmail -bp: %v: %s", err, out)
	}
	return string(out)
}

// QueuedMessage is one message in the Sendmail queue.
type QueuedMessage struct {
	Group   string // queue group directory
	Subject string
	Tries   int // delivery attempts so far (the qf file's N line)
}

// Queued lists the messages in the queue (all queue groups).
func (s *Sendmail) Queued() ([]QueuedMessage, error) {
	files, err := filepath.Glob(filepath.Join(s.QueueDir, "*", "qf*"))
	if err != nil {
		return nil, err
	}
	top, _ := filepath.Glob(filepath.Join(s.QueueDir, "qf*"))
	var out []QueuedMessage
	for _, f := range append(files, top...) {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // delivered meanwhile
		}
		q := QueuedMessage{Group: filepath.Base(filepath.Dir(f))}
		if m := qfSubject.FindSubmatch(b); m != nil {
			q.Subject = string(m[1])
		}
		if m := qfTries.FindSubmatch(b); m != nil {
			fmt.Sscanf(string(m[1]), "%d", &q.Tries)
		}
		out = append(out, q)
	}
	return out, nil
}

var (
	qfSubject = regexp.MustCompile(`(?m)^H(?:\?\?)?Subject: (.*)$`)
	qfTries   = regexp.MustCompile(`(?m)^N(\d+)$`)
)

// SendmailSystem is the whole vipmilter system on Sendmail: namespaces,
// sinks, binding addresses, a private Sendmail configured by
// "vipmilter sendmail", and "vipmilter serve" with the socketmap.
type SendmailSystem struct {
	*System  // Postfix stays nil
	Sendmail *Sendmail
}

// SendmailOptions choose how the system is brought up.
type SendmailOptions struct {
	SystemOptions
	Dist *SendmailDist
}

// StartSendmailSystem brings the system up; on error it tears down what it
// started.
func StartSendmailSystem(ctx context.Context, o SendmailOptions) (*SendmailSystem, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	s := &SendmailSystem{System: &System{Bin: o.Bin, Config: o.Config, Log: o.Log, dir: o.Dir, SinkDir: filepath.Join(o.Dir, "sink")}}
	if err := s.start(ctx, o); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

func (s *SendmailSystem) start(ctx context.Context, o SendmailOptions) error {
	cfg, err := config.Load(o.Config)
	if err != nil {
		return err
	}
	n, err := NewNetwork(ctx)
	if err != nil {
		return err
	}
	s.Net = n
	sk, err := testenv.StartSink(ctx, n.Sink, net.JoinHostPort(SinkAddr4, "25"), s.SinkDir)
	if err != nil {
		return err
	}
	s.sinks = append(s.sinks, sk)
	// Without provision (IPAddrFallback) the harness writes the EHLO
	// names itself; otherwise "provision --hosts-file" does, and the sink
	// checks that each binding's name arrives.
	names := map[string]string{}
	for _, b := range cfg.Bindings {
		if !o.IPAddrFallback {
			break
		}
		for _, p := range b.Addresses {
			if err := n.AddAddress(ctx, p.Addr().String()); err != nil {
				return err
			}
		}
		if a, ok := sendmail.Family(b); ok && sendmail.ResolvedEHLO(b.EHLOHostname) {
			names[a.String()] = b.EHLOHostname
		}
	}
	sm, err := NewSendmail(o.Dist, filepath.Join(o.Dir, "sendmail"), n.MTA, names)
	if err != nil {
		return err
	}
	s.Sendmail = sm
	if !o.IPAddrFallback {
		out, err := s.Vipmilter(ctx, "provision", "-c", o.Config, "--state-dir", filepath.Join(o.Dir, "state"), "--hosts-file", sm.HostsFile())
		if err != nil {
			return err
		}
		s.Log.Info("provisioned", "output", out)
	}
	if err := s.ApplySendmail(ctx, true); err != nil {
		return err
	}
	if err := s.StartServe(ctx); err != nil {
		return err
	}
	s.Log.Info("sendmail system up", "mta", n.MTA, "sendmail", sm.Dir)
	return nil
}

// ApplySendmail runs "vipmilter sendmail"; with rebuild it also rebuilds
// sendmail.cf and restarts the daemon (a changed fragment needs both; a
// changed map needs neither).
func (s *SendmailSystem) ApplySendmail(ctx context.Context, rebuild bool) error {
	if _, err := s.Vipmilter(ctx, "sendmail", "-c", s.Config, "--config-dir", s.Sendmail.ConfDir, "--queue-dir", s.Sendmail.QueueDir); err != nil {
		return err
	}
	if !rebuild {
		return nil
	}
	if err := s.Sendmail.Build(ctx); err != nil {
		return err
	}
	return s.Sendmail.Restart(ctx)
}

// RestartSink stops the sink (dumps stay) and, unless down, starts a new one.
func (s *SendmailSystem) RestartSink(ctx context.Context, down bool) error {
	for _, sk := range s.sinks {
		sk.Stop()
	}
	s.sinks = nil
	if down {
		return nil
	}
	sk, err := testenv.StartSink(ctx, s.Net.Sink, net.JoinHostPort(SinkAddr4, "25"), s.SinkDir)
	if err != nil {
		return err
	}
	s.sinks = append(s.sinks, sk)
	return nil
}

// Close stops Sendmail, then the rest.
func (s *SendmailSystem) Close() error {
	var errs []error
	if s.Sendmail != nil {
		errs = append(errs, s.Sendmail.Stop())
	}
	errs = append(errs, s.System.Close())
	return errors.Join(errs...)
}

// SubmitSession sends msgs as consecutive transactions of one SMTP session
// from inside ns to 127.0.0.1:25; it fails unless every one is accepted.
func SubmitSession(ctx context.Context, ns *testenv.NS, msgs []Message) error {
	if len(msgs) == 0 {
		return nil
	}
	s, err := OpenSession(ctx, ns, msgs[0], false)
	if err != nil {
		return err
	}
	defer s.conn.Close()
	for i, m := range msgs {
		if i > 0 {
			s.m = m
			if err := s.cmd("MAIL FROM:<"+m.From+">", 250); err != nil {
				return fmt.Errorf("session %q: %w", m.Subject, err)
			}
			for _, r := range m.To {
				if err := s.cmd("RCPT TO:<"+r+">", 250); err != nil {
					return fmt.Errorf("session %q: %w", m.Subject, err)
				}
			}
		}
		if err := s.cmd("DATA", 354); err != nil {
			return fmt.Errorf("session %q: %w", m.Subject, err)
		}
		if err := s.tp.PrintfLine("%s", s.header()+"\r\nbody\r\n."); err != nil {
			return fmt.Errorf("session %q: %w", m.Subject, err)
		}
		if _, msg, err := s.tp.ReadResponse(250); err != nil {
			return fmt.Errorf("session %q: end of data: %w (%s)", m.Subject, err, msg)
		}
	}
	s.cmd("QUIT", 221)
	return nil
}

// SendmailDebCache is where the Sendmail packages are kept between runs:
// $VIPE2E_SENDMAIL_DEBS, else the user's cache directory.
func SendmailDebCache() string {
	if d := os.Getenv("VIPE2E_SENDMAIL_DEBS"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "vipmilter-e2e", "sendmail-debs")
	}
	return filepath.Join(os.TempDir(), "vipmilter-e2e-sendmail-debs")
}

// SendmailSocketmapListen is the Sendmail_Socketmap the harness adds to the
// example binding file.
const SendmailSocketmapListen = "inet:127.0.0.1:8895"

// CopySendmailExamples is CopyExamples with Sendmail_Socketmap added.
func CopySendmailExamples(examples, dst string) (string, error) {
	return CopyExamples(examples, dst, "Sendmail_Socketmap = \""+SendmailSocketmapListen+"\"")
}

// SendmailExampleCases are the example cases Sendmail can carry: the IPv6
// one is left out, because a dual-stack binding's mail leaves over IPv4 on
// Sendmail (sendmail.Family).
func SendmailExampleCases(run string) []Case {
	var out []Case
	for _, c := range ExampleCases(run) {
		if c.Msg.To[0] != Rcpt6 {
			out = append(out, c)
		}
	}
	return out
}
