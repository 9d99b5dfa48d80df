package main

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// provisionEnv is a network namespace with a veth pair eth0/eth1 (eth0 with
// a default IPv4 route), a world-readable directory holding a copy of the
// test binary (which runs vipmilter's main, see TestMain) and a binding
// file. Nothing the tests do reaches the host's own interfaces.
type provisionEnv struct {
	t    *testing.T
	ns   *testenv.NS
	dir  string
	bin  string
	conf string
}

func newProvisionEnv(t *testing.T) *provisionEnv {
	t.Helper()
	ns := testenv.NewTestNS(t, "vipc")
	// Not t.TempDir: its parent is private to root, and one test runs the
	// binary as nobody.
	dir, err := os.MkdirTemp("", "vipprov")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "vipmilter")
	copyFile(t, self, bin, 0o755)
	e := &provisionEnv{t: t, ns: ns, dir: dir, bin: bin, conf: filepath.Join(dir, "vipmilter.conf")}
	ctx := context.Background()
	if err := ns.Veth(ctx, "eth0", ns, "eth1"); err != nil {
		t.Fatal(err)
	}
	if err := ns.AddAddr(ctx, "eth0", netip.MustParsePrefix("10.99.0.1/24")); err != nil {
		t.Fatal(err)
	}
	ns.MustIP(t, "route", "add", "default", "via", "10.99.0.254")
	return e
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
}

// write replaces the binding file: bindings on eth0, state in the
// directory.
func (e *provisionEnv) write(bindings string) {
	e.t.Helper()
	s := "Interface = eth0\nState_Dir = " + filepath.Join(e.dir, "state") + "\n" + bindings
	if err := os.WriteFile(e.conf, []byte(s), 0o644); err != nil {
		e.t.Fatal(err)
	}
}

// command is vipmilter with args, run inside the namespace, optionally
// through a wrapper (setpriv) between "ip netns exec" and the binary.
func (e *provisionEnv) command(wrap []string, args ...string) *exec.Cmd {
	argv := append(append(wrap[:len(wrap):len(wrap)], e.bin), args...)
	cmd := e.ns.Command(context.Background(), argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), serveChildEnv+"=1", "NOTIFY_SOCKET=", "VIPMILTER_CONFIG=")
	return cmd
}

func (e *provisionEnv) run(wrap []string, args ...string) (int, string) {
	e.t.Helper()
	out, err := e.command(wrap, args...).CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		e.t.Fatal(err)
	}
	return code, string(out)
}

func (e *provisionEnv) addrs(dev string) string {
	e.t.Helper()
	return e.ns.MustIP(e.t, "addr", "show", "dev", dev)
}

// TestProvisionCommand runs the real command inside a namespace the test
// creates: output lines, summary, exit status, --dry-run, --prune, and
// check --routes.
func TestProvisionCommand(t *testing.T) {
	e := newProvisionEnv(t)
	conf := e.conf
	e.write(`Binding "A" { Bind_Address = 192.0.2.10  Bind_Address = 2001:db8::10 }
Binding "B" { Bind_Address = 192.0.2.20 }
`)
	steps := []struct {
		name string
		conf string
		args []string
		code int
		want []string
	}{
		{"dry run", "", []string{"provision", "-c", conf, "--dry-run"}, 0, []string{"would add    192.0.2.10/32", "3 would add, 0 errors"}},
		{"first run", "", []string{"provision", "-c", conf}, 0, []string{"added        192.0.2.10/32", "added        2001:db8::10/128", "3 added, 0 errors"}},
		{"second run changes nothing", "", []string{"provision", "-c", conf}, 0, []string{"3 present, 0 errors"}},
		{"routes", "", []string{"check", "-c", conf, "--routes"}, 1, []string{"ok   A 192.0.2.10 -> 198.51.100.1 via 10.99.0.254 dev eth0", "FAIL A 2001:db8::10 -> 2001:db8:ffff::1"}},
		{"routes, IPv4 only", `Binding "A" { Bind_Address = 192.0.2.10 }
Binding "B" { Bind_Address = 192.0.2.20 }`, []string{"check", "-c", conf, "--routes", "--probe", "203.0.113.7"}, 0, []string{"ok   B 192.0.2.20 -> 203.0.113.7 via 10.99.0.254 dev eth0"}},
		{"prune after removing B", `Binding "A" { Bind_Address = 192.0.2.10  Bind_Address = 2001:db8::10 }`, []string{"provision", "-c", conf, "--prune"}, 0, []string{"removed      192.0.2.20/32", "2 present, 1 removed, 0 errors"}},
		{"move to another interface in one run", `Binding "A" { Bind_Address = 192.0.2.10  Bind_Address = 2001:db8::10  Interface = eth1 }`, []string{"provision", "-c", conf, "--prune"}, 0, []string{"added        192.0.2.10/32                               on eth1", "removed      192.0.2.10/32                               on eth0", "2 added, 2 removed, 0 errors"}},
		{"missing interface", `Binding "C" { Bind_Address = 192.0.2.30  Interface = nope0 }`, []string{"provision", "-c", conf}, 1, []string{`interface "nope0" does not exist`, "1 error"}},
		{"address on another interface", `Binding "D" { Bind_Address = 10.99.0.1  Interface = eth1 }`, []string{"provision", "-c", conf}, 1, []string{"already configured on interface eth0", "1 error"}},
	}
	for _, s := range steps {
		if s.conf != "" {
			e.write(s.conf)
		}
		code, out := e.run(nil, s.args...)
		if code != s.code {
			t.Errorf("%s: exit %d, want %d\n%s", s.name, code, s.code, out)
		}
		for _, w := range s.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", s.name, w, out)
			}
		}
	}
	eth0, eth1 := e.addrs("eth0"), e.addrs("eth1")
	if strings.Contains(eth0, "192.0.2.") || !strings.Contains(eth0, "10.99.0.1/24") {
		t.Errorf("eth0: want vipmilter's addresses gone and the foreign 10.99.0.1 kept:\n%s", eth0)
	}
	if !strings.Contains(eth1, "192.0.2.10/32 scope global eth1:vip") || !strings.Contains(eth1, "2001:db8::10/128") {
		t.Errorf("eth1: want binding A's addresses:\n%s", eth1)
	}
}

// TestProvisionWithoutPermission: run as nobody with no capabilities, the
// kernel refuses every add and each line says CAP_NET_ADMIN is needed.
func TestProvisionWithoutPermission(t *testing.T) {
	e := newProvisionEnv(t)
	testenv.Require(t, testenv.Command("setpriv", "util-linux"))
	e.write(`Binding "A" { Bind_Address = 192.0.2.10  Bind_Address = 2001:db8::10 }`)
	nobody := []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--"}
	stateDir := filepath.Join(e.dir, "nobody-state")
	code, out := e.run(nobody, "provision", "-c", e.conf, "--state-dir", stateDir)
	if code != 1 {
		t.Errorf("exit %d, want 1\n%s", code, out)
	}
	if n := strings.Count(out, "CAP_NET_ADMIN"); n != 2 {
		t.Errorf("%d lines mention CAP_NET_ADMIN, want 2:\n%s", n, out)
	}
	if !strings.Contains(out, "\n2 errors\n") {
		t.Errorf("summary:\n%s", out)
	}
	if _, err := os.Stat(stateDir); err == nil {
		t.Error("a run that added nothing wrote a state file")
	}
}

// TestProvisionWatchCommand: --watch tells systemd it is ready, re-adds a
// deleted address, re-reads the file on SIGHUP (and re-applies
// --hosts-file) and exits 0 on SIGTERM.
func TestProvisionWatchCommand(t *testing.T) {
	e := newProvisionEnv(t)
	e.write(`Binding "A" { Bind_Address = 192.0.2.10  Bind_Address = 2001:db8::10  EHLO_Hostname = out-a.example.com }`)
	hosts := filepath.Join(e.dir, "hosts")
	if err := os.WriteFile(hosts, []byte("127.0.0.1 localhost\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hostsHas := func(line string) bool {
		b, _ := os.ReadFile(hosts)
		return strings.Contains(string(b), "\n"+line+" # binding ")
	}
	notify := filepath.Join(e.dir, "notify")
	sd, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sd.Close()
	cmd := e.command(nil, "provision", "-c", e.conf, "--watch", "--hosts-file", hosts)
	cmd.Env = append(cmd.Env, "NOTIFY_SOCKET="+notify)
	var stderr, stdout lockedBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{}) // closed when Wait returns, with waitErr set
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	// "ip netns exec" execs the command, so cmd.Process is vipmilter.
	notified := func(want string) {
		t.Helper()
		buf := make([]byte, 4096)
		sd.SetReadDeadline(time.Now().Add(20 * time.Second))
		for {
			n, err := sd.Read(buf)
			if err != nil {
				t.Fatalf("waiting for sd_notify %q: %v\nstderr:\n%s", want, err, stderr.String())
			}
			if strings.Contains(string(buf[:n]), want) {
				return
			}
		}
	}
	notified("READY=1")
	if out := e.addrs("eth0"); !strings.Contains(out, "192.0.2.10/32") || !strings.Contains(out, "2001:db8::10/128") {
		t.Fatalf("ready before the addresses are on eth0:\n%s", out)
	}
	if !hostsHas("192.0.2.10 out-a.example.com") || !hostsHas("2001:db8::10 out-a.example.com") {
		t.Errorf("hosts file at start:\n%s", testenv.ReadFile(t, hosts))
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		testenv.Eventually(t, what, cond, func() string { return "stderr:\n" + stderr.String() })
	}
	e.ns.MustIP(t, "addr", "del", "192.0.2.10/32", "dev", "eth0")
	waitFor("192.0.2.10 re-added", func() bool { return strings.Contains(e.addrs("eth0"), "192.0.2.10/32") })
	waitFor("a log line saying so", func() bool { return strings.Contains(stderr.String(), "disappeared; added it again") })

	e.write(`Binding "A" { Bind_Address = 192.0.2.10  Bind_Address = 2001:db8::10  EHLO_Hostname = out-a.example.com }
Binding "B" { Bind_Address = 192.0.2.40  EHLO_Hostname = out-b.example.com }`)
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	notified("RELOADING=1")
	notified("READY=1")
	waitFor("192.0.2.40 added after SIGHUP", func() bool { return strings.Contains(e.addrs("eth0"), "192.0.2.40/32") })
	waitFor("the hosts file re-applied after SIGHUP", func() bool { return hostsHas("192.0.2.40 out-b.example.com") })
	e.ns.MustIP(t, "addr", "del", "192.0.2.40/32", "dev", "eth0")
	waitFor("the reloaded binding's address re-added", func() bool { return strings.Contains(e.addrs("eth0"), "192.0.2.40/32") })

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Errorf("exit after SIGTERM: %v\nstderr:\n%s", waitErr, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("still running 20s after SIGTERM")
	}
	// The start and the reload each log a summary of addresses and one of
	// the hosts file (the reload's says "1 added" unless the watcher,
	// reading the new file, got there first); a daemon prints nothing
	// outside its logger.
	if n := strings.Count(stderr.String(), ", 0 errors"); n != 4 {
		t.Errorf("want 4 summaries, addresses and hosts file at start and reload, got %d:\n%s", n, stderr.String())
	}
	if n := strings.Count(stderr.String(), "hosts file "+hosts+": "); n != 2 {
		t.Errorf("want 2 hosts file summaries, got %d:\n%s", n, stderr.String())
	}
	if out := stdout.String(); out != "" {
		t.Errorf("--watch printed outside its logger:\n%s", out)
	}
}

// TestProvisionPruneDryRunCommand: "provision --prune --dry-run" prints
// the lines "provision --prune" then prints, with "would" for changes, for
// an address re-configured by hand, one removed and one moved to another
// interface; and addresses a local route covers are reported, not added.
func TestProvisionPruneDryRunCommand(t *testing.T) {
	e := newProvisionEnv(t)
	e.write(`Binding "Drop" { Bind_Address = 192.0.2.10 }
Binding "Hand" { Bind_Address = 192.0.2.11 }
Binding "Move" { Bind_Address = 192.0.2.12 }
`)
	if code, out := e.run(nil, "provision", "-c", e.conf); code != 0 {
		t.Fatalf("setup: exit %d\n%s", code, out)
	}
	e.ns.MustIP(t, "addr", "del", "192.0.2.11/32", "dev", "eth0")
	e.ns.MustIP(t, "addr", "add", "192.0.2.11/32", "dev", "eth0")
	e.write(`Binding "Move" { Bind_Address = 192.0.2.12  Interface = eth1 }
Binding_Group "Loop" {
  Binding "Loop1" { Bind_Address = 127.0.0.6 }
  Binding "Loop2" { Bind_Address = 127.0.0.7 }
}
`)
	code, dry := e.run(nil, "provision", "-c", e.conf, "--prune", "--dry-run")
	if code != 0 {
		t.Errorf("dry run: exit %d\n%s", code, dry)
	}
	code, real := e.run(nil, "provision", "-c", e.conf, "--prune")
	if code != 0 {
		t.Errorf("real run: exit %d\n%s", code, real)
	}
	predicted := strings.NewReplacer("would add    ", "added        ", "would remove ", "removed      ", "would forget ", "forgotten    ",
		"would add", "added", "would remove", "removed", "would forget", "forgotten").Replace(dry)
	if real != predicted {
		t.Errorf("--prune --dry-run predicted:\n%s\n--prune did:\n%s", dry, real)
	}
	for _, w := range []string{
		"forgotten    192.0.2.11/32", "removed      192.0.2.10/32", "added        192.0.2.12/32                               on eth1",
		"covered      127.0.0.6/32", "local route 127.0.0.0/8 dev lo covers it", "1 added, 2 covered, 2 removed, 1 forgotten, 0 errors",
	} {
		if !strings.Contains(real, w) {
			t.Errorf("output lacks %q:\n%s", w, real)
		}
	}
	if eth0 := e.addrs("eth0"); !strings.Contains(eth0, "192.0.2.11/32") || strings.Contains(eth0, "127.0.0.6") {
		t.Errorf("eth0: want the hand-configured address kept and no covered address added:\n%s", eth0)
	}
	// check --routes agrees that the loopback bindings are on the host (it
	// fails them for another reason: they cannot reach the world).
	_, out := e.run(nil, "check", "-c", e.conf, "--routes")
	if strings.Contains(out, "not configured") || !strings.Contains(out, "FAIL Loop1 127.0.0.6 -> 198.51.100.1: a loopback address") {
		t.Errorf("check --routes:\n%s", out)
	}
}

// TestProvisionHostsFileCommand: provision --hosts-file on a temporary
// hosts file: dry run, add, no-op re-run, a removed binding, a host line
// that maps a binding address to another name, a bind-mounted file (as
// /etc/hosts in a container) rewritten in place, and the block removed
// when no binding needs it, the host's lines kept byte for byte.
func TestProvisionHostsFileCommand(t *testing.T) {
	e := newProvisionEnv(t)
	hosts := filepath.Join(e.dir, "hosts")
	base := "127.0.0.1\tlocalhost\n# the host's comment\n::1 localhost ip6-localhost\n"
	if err := os.WriteFile(hosts, []byte(base), 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(hosts, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	a := `Binding "A" { Bind_Address = 192.0.2.10  Bind_Address = 2001:db8::10  EHLO_Hostname = out-a.example.com }
`
	b := `Binding "B" { Bind_Address = 192.0.2.20  EHLO_Hostname = out-b.example.com }
Binding "C" { Bind_Address = 192.0.2.30 }
`
	block := func(lines ...string) string {
		return "# BEGIN vipmilter (managed by vipmilter provision; do not edit)\n" + strings.Join(lines, "\n") + "\n# END vipmilter\n"
	}
	lineA := "192.0.2.10 out-a.example.com # binding A\n2001:db8::10 out-a.example.com # binding A"
	lineB := "192.0.2.20 out-b.example.com # binding B"
	bindSrc := filepath.Join(e.dir, "hosts.container")
	bindMount := []string{"unshare", "--mount", "sh", "-c", `mount --bind "$1" "$2" && shift 2 && exec "$@"`, "sh", bindSrc, hosts}
	// The bind-mounted file then deleted (replaced) outside.
	deletedMount := []string{"unshare", "--mount", "sh", "-c", `mount --bind "$1" "$2" && rm "$1" && shift 2 && exec "$@"`, "sh", bindSrc, hosts}
	// What systemd's ProtectSystem=strict with ReadWritePaths=/etc/hosts
	// gives the service: the directory read-only, the file a writable
	// bind mount of itself.
	readOnlyDir := []string{"unshare", "--mount", "sh", "-c", `mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && mount --bind "$2" "$2" && mount -o remount,bind,rw "$2" && shift 2 && exec "$@"`, "sh", e.dir, hosts}
	steps := []struct {
		name   string
		conf   string
		edit   func() // before the run
		wrap   []string
		args   []string
		code   int
		want   []string
		file   string // hosts content afterwards
		inode  string // "same" or "new" compared with before the step
		onFile string // the file to read afterwards (default hosts)
	}{
		{name: "dry run", conf: a + b, args: []string{"--dry-run"},
			want: []string{"would add    192.0.2.10 out-a.example.com", "would add    2001:db8::10 out-a.example.com", "would add    192.0.2.20 out-b.example.com",
				"hosts file " + hosts + ": 3 would add, 0 errors; would be written"},
			file: base, inode: "same"},
		{name: "first run", want: []string{"added        192.0.2.20 out-b.example.com                hosts file         binding B", "hosts file " + hosts + ": 3 added, 0 errors; replaced atomically"},
			file: base + block(lineA, lineB), inode: "new"},
		{name: "second run changes nothing", want: []string{": 3 present, 0 errors; unchanged"}, file: base + block(lineA, lineB), inode: "same"},
		{name: "binding B removed", conf: a, want: []string{"removed      192.0.2.20 out-b.example.com", ": 2 present, 1 removed, 0 errors; replaced atomically"},
			file: base + block(lineA), inode: "new"},
		{name: "host line maps A's address to another name", edit: func() { appendFile(t, hosts, "192.0.2.10 mx.example.org\n") }, code: 1,
			want: []string{"error        192.0.2.10 out-a.example.com                hosts file         binding A: line 8 maps 192.0.2.10 to mx.example.org first, so Sendmail greets with mx.example.org; not overridden",
				"removed      192.0.2.10 out-a.example.com", ": 1 present, 1 removed, 1 error; replaced"},
			file: base + block("2001:db8::10 out-a.example.com # binding A") + "192.0.2.10 mx.example.org\n", inode: "new"},
		{name: "bind-mounted file rewritten in place", conf: a + b, edit: func() { os.WriteFile(hosts, []byte(base+block(lineA)), 0o640); copyFile(t, hosts, bindSrc, 0o640) }, wrap: bindMount,
			want: []string{"added        192.0.2.20 out-b.example.com", ": 1 added, 2 present, 0 errors; rewritten in place, not atomically (cannot rename a file over it: device or resource busy)"},
			file: base + block(lineA, lineB), onFile: bindSrc},
		{name: "bind-mounted file deleted outside: refused", conf: a, wrap: deletedMount, code: 1,
			want: []string{"error        hosts file " + hosts + ": the file this process sees was deleted or replaced after it was bind-mounted here"},
			file: base + block(lineA), inode: "same"},
		{name: "read-only directory, writable file (systemd ReadWritePaths=)", conf: a + b, wrap: readOnlyDir,
			want: []string{"added        192.0.2.20 out-b.example.com", ": 1 added, 2 present, 0 errors; rewritten in place, not atomically (cannot create a file in " + e.dir + ": read-only file system)"},
			file: base + block(lineA, lineB), inode: "same"},
		{name: "no binding needs a line: block removed", conf: `Binding "C" { Bind_Address = 192.0.2.30 }
`, want: []string{": 3 removed, 0 errors; replaced"}, file: base, inode: "new"},
	}
	for _, s := range steps {
		if s.conf != "" {
			e.write(s.conf)
		}
		if s.edit != nil {
			s.edit()
		}
		before := testenv.Stat(t, hosts)
		code, out := e.run(s.wrap, append([]string{"provision", "-c", e.conf, "--hosts-file", hosts}, s.args...)...)
		if code != s.code {
			t.Errorf("%s: exit %d, want %d\n%s", s.name, code, s.code, out)
		}
		for _, w := range s.want {
			if !strings.Contains(out, w) {
				t.Errorf("%s: output lacks %q:\n%s", s.name, w, out)
			}
		}
		file := hosts
		if s.onFile != "" {
			file = s.onFile
		}
		if got, err := os.ReadFile(file); err != nil || string(got) != s.file {
			t.Errorf("%s: %s is\n%s\nwant\n%s", s.name, file, got, s.file)
		}
		after := testenv.Stat(t, hosts)
		if after.Mode != before.Mode || after.Uid != 65534 || after.Gid != 65534 {
			t.Errorf("%s: mode %o owner %d:%d, want %o 65534:65534", s.name, after.Mode, after.Uid, after.Gid, before.Mode)
		}
		if (s.inode == "same" && after.Ino != before.Ino) || (s.inode == "new" && after.Ino == before.Ino) {
			t.Errorf("%s: inode %d, was %d: want %s", s.name, after.Ino, before.Ino, s.inode)
		}
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}
