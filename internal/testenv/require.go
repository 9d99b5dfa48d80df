package testenv

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

// A Prereq is something a test needs from the machine it runs on.
type Prereq struct {
	what string      // shown in the failure, e.g. "root"
	hint string      // how to get it
	ok   func() bool // whether it is there
	all  []Prereq    // for a bundle: its members, checked in order
}

// Root is the effective user id 0: network namespaces and Postfix need it.
var Root = Prereq{what: "root", hint: "run as root: network namespaces and Postfix need CAP_SYS_ADMIN and CAP_NET_ADMIN",
	ok: func() bool { return os.Geteuid() == 0 }}

// Command is an executable on PATH, with the Debian package providing it.
func Command(name, pkg string) Prereq {
	return Prereq{what: name + " on PATH", hint: "apt-get install " + pkg,
		ok: func() bool { _, err := exec.LookPath(name); return err == nil }}
}

// All bundles prerequisites into one.
func All(ps ...Prereq) Prereq { return Prereq{all: ps} }

// Bundles of what the environment's parts need.
var (
	// Namespaces: NS, ip(8) and ss(8) inside them.
	Namespaces = All(Root, Command("ip", "iproute2"), Command("ss", "iproute2"))
	// PostfixTools: writing and querying a private Postfix configuration.
	PostfixTools = All(Command("postconf", "postfix"), Command("postmap", "postfix"))
	// PostfixServer: running a private Postfix (start, queue tools, sendmail).
	PostfixServer = All(Root, PostfixTools, Command("postfix", "postfix"), Command("postqueue", "postfix"),
		Command("postsuper", "postfix"), Command("sendmail", "postfix"))
	// SMTPSink: the smtp-sink receiver (Sink).
	SMTPSink = Command("smtp-sink", "postfix")
	// Swaks: the SMTP client Submit uses.
	Swaks = Command("swaks", "swaks")
	// OpenDKIM: the opendkim milter, a companion on the Postfix side.
	OpenDKIM = All(Command("opendkim", "opendkim"), Command("opendkim-genkey", "opendkim-tools"))
)

// InCI reports whether the tests run in continuous integration: the
// environment variable CI is set to a true value ("true", "1"), as CI
// services do.
func InCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}

// Missing names each prerequisite that is missing, with how to get it; nil
// when all are there. Programs (the demo, the benchmarks) report it as an
// error; tests call Require.
func Missing(needs ...Prereq) []string {
	var missing []string
	seen := map[string]bool{}
	var check func(ps []Prereq)
	check = func(ps []Prereq) {
		for _, p := range ps {
			if p.all != nil {
				check(p.all)
				continue
			}
			if !seen[p.what] && !p.ok() {
				missing = append(missing, p.what+" ("+p.hint+")")
			}
			seen[p.what] = true
		}
	}
	check(needs)
	return missing
}

// Require checks every prerequisite. When one is missing the test fails
// under CI (InCI), where every test must run, and is skipped otherwise (a
// developer's laptop); the message names each missing prerequisite and how
// to get it.
func Require(t testing.TB, needs ...Prereq) {
	t.Helper()
	missing := Missing(needs...)
	if len(missing) == 0 {
		return
	}
	msg := "missing prerequisite: " + strings.Join(missing, "; ")
	if InCI() {
		t.Fatal(msg + "; CI=true requires every test to run")
		return
	}
	t.Skip(msg)
}
