package main

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

// idleSessions and idleGrowthLimit: issue 11 measured 1,000 open sessions at
// 25 MiB RSS; the limit is generous (a memory regression shows as hundreds of
// MiB, as the unbounded header buffers did), not a performance target.
const (
	idleSessions    = 1000
	idleGrowthLimit = 64 << 20
)

// idleTimeout is the test's Milter_Idle_Timeout: long enough to open every
// session well before it passes.
const idleTimeout = 5 * time.Second

// TestServeIdleSessionsMemory (issue 11, "1,000 open sessions at 25 MiB
// RSS"): 1,000 milter sessions negotiated with a "vipmilter serve" process
// and left idle must grow its resident memory by less than 64 MiB, serve
// must keep deciding meanwhile, and once Milter_Idle_Timeout has passed it
// must have closed them all.
func TestServeIdleSessionsMemory(t *testing.T) {
	needLoad(t)
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	if lim.Cur < 2*idleSessions+100 {
		t.Fatalf("RLIMIT_NOFILE %d: need %d descriptors for %d sessions (ulimit -n)", lim.Cur, 2*idleSessions+100, idleSessions)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "milter.sock")
	conf := filepath.Join(dir, "vipmilter.conf")
	writeFile(t, conf, strings.ReplaceAll(serveConf, "%SOCK%", sock)+fmt.Sprintf("Milter_Idle_Timeout = %ds\n", int(idleTimeout.Seconds())))
	writeFile(t, filepath.Join(dir, "policy.sieve"), "require [\"envelope\", \"variables\"];\nif envelope :domain :is \"from\" \"beta.test\" { set \"binding\" \"Beta\"; }\n")
	p := startServe(t, conf, "--postfix-dir", dir)
	p.waitLog("milter listening", 1)
	c := serveClient(sock)
	// Warm up: the first session allocates what every later one shares.
	if got := decided(t, c, "b@beta.test"); got != "Beta" {
		t.Fatalf("binding %q, want Beta", got)
	}
	before := rss(t, p.cmd.Process.Pid)
	idle := openSockets(t, p.cmd.Process.Pid)
	begin := time.Now()

	sessions := make([]*gomilter.ClientSession, 0, idleSessions)
	defer func() {
		for _, s := range sessions {
			s.Close()
		}
	}()
	for range idleSessions {
		s, err := c.Session(nil) // connects and negotiates options
		if err != nil {
			t.Fatalf("session %d: %v", len(sessions)+1, err)
		}
		sessions = append(sessions, s)
	}
	if el := time.Since(begin); el >= idleTimeout {
		t.Fatalf("opening %d sessions took %v, not less than Milter_Idle_Timeout %v: the machine is too slow for this test", idleSessions, el, idleTimeout)
	}
	// Every session is open on serve's side: one more still decides.
	if got := decided(t, c, "b@beta.test"); got != "Beta" {
		t.Fatalf("with %d idle sessions: binding %q, want Beta", idleSessions, got)
	}
	after := rss(t, p.cmd.Process.Pid)
	growth := after - before
	t.Logf("RSS %.1f MiB before, %.1f MiB with %d idle sessions: +%.1f MiB, %.1f KiB a session",
		float64(before)/(1<<20), float64(after)/(1<<20), idleSessions, float64(growth)/(1<<20), float64(growth)/1024/idleSessions)
	if growth > idleGrowthLimit {
		t.Errorf("RSS grew by %d MiB for %d idle sessions, want < %d MiB", growth>>20, idleSessions, idleGrowthLimit>>20)
	}
	if n := openSockets(t, p.cmd.Process.Pid); n < idleSessions {
		t.Errorf("serve holds %d sockets, want >= %d: the sessions were not all open", n, idleSessions)
	}
	// Past Milter_Idle_Timeout serve has closed every idle session.
	testenv.Eventually(t, "idle sessions closed after Milter_Idle_Timeout", func() bool {
		return openSockets(t, p.cmd.Process.Pid) <= idle
	}, func() string {
		return fmt.Sprintf("serve holds %d sockets %v after opening the sessions, %d before", openSockets(t, p.cmd.Process.Pid), time.Since(begin), idle)
	})
	if el := time.Since(begin); el < idleTimeout {
		t.Fatalf("idle sessions closed after %v, before Milter_Idle_Timeout %v", el, idleTimeout)
	}
	if got := decided(t, c, "b@beta.test"); got != "Beta" {
		t.Fatalf("after the idle sessions closed: binding %q, want Beta", got)
	}
	p.signal(syscall.SIGKILL)
}

// rss is VmRSS of process pid in bytes (proc(5)).
func rss(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("VmRSS %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// openSockets counts the sockets among process pid's descriptors.
func openSockets(t *testing.T, pid int) int {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if l, err := os.Readlink(filepath.Join(dir, fd.Name())); err == nil && strings.HasPrefix(l, "socket:") {
			n++
		}
	}
	return n
}
