package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/vipmilter/vipmilter/bench/internal/floormilter"
	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/e2e"
)

// Binding addresses on the mta side: Example's Match_Domain covers the
// benchmark's sender (bench@example.com), so every variant that routes
// sends from exampleAddr.
const (
	defaultAddr = "192.0.2.1"
	exampleAddr = "192.0.2.10"
)

type kind int

const (
	kindNone        kind = iota // Postfix alone
	kindFloor                   // minimal C libmilter milter
	kindMilter                  // vipmilter, 50 header rules: the milter hook
	kindDomain                  // vipmilter, Match_Domain only: no hook
	kindPolicy                  // vipmilter, envelope-only script: the SMTPD policy-service hook
	kindPolicyFloor             // the policy hook's Postfix side, answered by a trivial Go service
)

// variant is one way of running Postfix. listen is the milter's socket
// (the policy service's for kindPolicy), "" for none.
type variant struct {
	name   string
	kind   kind
	listen string
}

// variants are the benchmark's variants; unix sockets go into sockDir.
func variants(sockDir string) []variant {
	unix := func(name string) string { return "unix:" + filepath.Join(sockDir, name+".sock") }
	return []variant{
		{name: "no milter", kind: kindNone},
		{name: "floor milter unix", kind: kindFloor, listen: unix("floor")},
		{name: "floor milter inet", kind: kindFloor, listen: "inet:127.0.0.1:7201"},
		{name: "vipmilter 50 rules unix", kind: kindMilter, listen: unix("vipmilter")},
		{name: "vipmilter 50 rules inet", kind: kindMilter, listen: "inet:127.0.0.1:7202"},
		{name: "vipmilter Match_Domain (no hook)", kind: kindDomain},
		{name: "vipmilter policy unix", kind: kindPolicy, listen: unix("policy")},
		{name: "vipmilter policy inet", kind: kindPolicy, listen: "inet:127.0.0.1:7203"},
		{name: "policy floor unix", kind: kindPolicyFloor, listen: unix("policy-floor")},
		{name: "policy floor inet", kind: kindPolicyFloor, listen: "inet:127.0.0.1:7204"},
	}
}

// floorOf is v's floor on the same socket kind: the floor milter, or for
// the policy hook the policy floor.
func floorOf(v variant) string {
	floor := "floor milter "
	if v.kind == kindPolicy {
		floor = "policy floor "
	}
	return floor + v.name[strings.LastIndexByte(v.name, ' ')+1:]
}

// notAvailable marks a variant this build cannot run as the benchmark
// means it: "vipmilter postfix" rendered another hook than Hook = auto
// should choose for its binding file.
type notAvailable struct{ why string }

func (n notAvailable) Error() string { return n.why }

// running is a set-up variant: pid finds its milter process (nil: none),
// stop ends it (again: nothing), and once it has, served checks that
// the hook decided every one of n messages (nil: nothing to check).
type running struct {
	pid    func() (int, error)
	stop   func()
	served func(n int) error
}

// setup starts the variant's milter or service and configures Postfix for
// it; the caller restarts Postfix.
func (v variant) setup(ctx context.Context, b *bench) (running, error) {
	none := running{stop: func() {}}
	switch v.kind {
	case kindNone:
		return none, nil
	case kindFloor:
		conn, err := floormilter.Conn(v.listen)
		if err != nil {
			return none, err
		}
		r, err := b.startFloor(ctx, "floor milter", v.listen, b.floor, conn)
		if err != nil {
			return none, err
		}
		if err := b.pf.Postconf(ctx, "smtpd_milters="+b.seen(v.listen), "milter_default_action=tempfail", "milter_protocol=6"); err != nil {
			r.stop()
			return none, err
		}
		return r, nil
	}

	conf, err := writeBindings(b.dir, b.sockDir, v)
	if err != nil {
		return none, err
	}
	sys := &e2e.System{Net: b.netw, Postfix: b.pf, Bin: b.bin, Config: conf, Log: slog.New(slog.DiscardHandler)}
	if cached, ok := b.rendered[v.name]; ok {
		// Rendered in an earlier round: the same files again, without
		// the minutes "vipmilter postfix" takes on a loaded machine.
		if err := writeConfig(b.pf.Dir, cached); err != nil {
			return none, err
		}
	} else if err := b.render(ctx, v, sys); err != nil {
		return none, err
	}
	switch v.kind {
	case kindDomain:
		return none, nil
	case kindPolicyFloor:
		return b.startPolicyFloor(ctx, v)
	}
	if err := sys.StartServe(ctx); err != nil {
		return none, err
	}
	r := running{pid: func() (int, error) { return pidOf(b.bin, b.ns[0]) }, stop: func() { sys.StopServe(syscall.SIGTERM) },
		served: func(n int) error { return decided(sys.ServeOutput(), v.kind, n) }}
	if v.kind == kindPolicy {
		if err := e2e.WaitMilter(ctx, b.netw.MTA, v.listen); err != nil {
			r.stop()
			return none, fmt.Errorf("policy service: %w", err)
		}
	}
	return r, nil
}

// render configures Postfix for v with "vipmilter postfix" and keeps the
// result for later rounds.
func (b *bench) render(ctx context.Context, v variant, sys *e2e.System) error {
	if err := sys.ApplyPostfix(ctx); err != nil {
		return err
	}
	if err := b.checkRendered(ctx, v); err != nil {
		return err
	}
	files, err := readConfig(b.pf.Dir)
	if err != nil {
		return err
	}
	if b.rendered == nil {
		b.rendered = map[string]map[string][]byte{}
	}
	b.rendered[v.name] = files
	return nil
}

// checkRendered checks that "vipmilter postfix" chose the hook the
// variant measures (Hook = auto: none for a file without a script, the
// policy service for an envelope-only script, the milter for a header
// script): otherwise the figures would belong to another hook.
func (b *bench) checkRendered(ctx context.Context, v variant) error {
	val, err := b.pf.NS.Run(ctx, "postconf", "-c", b.pf.Dir, "-h",
		"smtpd_milters", "non_smtpd_milters", "smtpd_recipient_restrictions", "smtpd_data_restrictions")
	if err != nil {
		return err
	}
	lines := strings.Split(strings.TrimSuffix(val, "\n"), "\n")
	if len(lines) != 4 {
		return fmt.Errorf("postconf: want 4 lines, got %q", val)
	}
	smtpdMilters, nonSMTPD, rcpt, data := lines[0], lines[1], lines[2], lines[3]
	policy := strings.Contains(rcpt, "check_policy_service") || strings.Contains(data, "check_policy_service")
	var wrong []string
	switch v.kind {
	case kindDomain:
		if smtpdMilters != "" || nonSMTPD != "" {
			wrong = append(wrong, "a milter is attached (smtpd_milters = "+smtpdMilters+", non_smtpd_milters = "+nonSMTPD+")")
		}
		if policy {
			wrong = append(wrong, "check_policy_service is rendered")
		}
	case kindPolicy, kindPolicyFloor:
		// The script reads no recipient and the file has no sticky
		// group, so Postfix asks once per message, at DATA.
		entry := "check_policy_service { " + b.seen(v.listen) + ","
		if !strings.HasPrefix(data, entry) {
			wrong = append(wrong, fmt.Sprintf("check_policy_service on %s is not first in smtpd_data_restrictions (%q)", v.listen, data))
		}
		if strings.Contains(rcpt, "check_policy_service") {
			wrong = append(wrong, fmt.Sprintf("check_policy_service is in smtpd_recipient_restrictions (%q), though no recipient changes the decision", rcpt))
		}
		if smtpdMilters != "" {
			wrong = append(wrong, "smtpd_milters = "+smtpdMilters+": smtpd mail would pass the milter too")
		}
	case kindMilter:
		if !strings.Contains(smtpdMilters, b.seen(v.listen)) {
			wrong = append(wrong, "smtpd_milters = "+smtpdMilters+" lacks "+b.seen(v.listen))
		}
		if policy {
			wrong = append(wrong, "check_policy_service is rendered")
		}
	}
	if len(wrong) > 0 {
		return notAvailable{"\"vipmilter postfix\" did not render the hook this variant measures: " + strings.Join(wrong, "; ")}
	}
	b.log.Info("rendered", "variant", v.name, "smtpd_milters", smtpdMilters, "non_smtpd_milters", nonSMTPD,
		"smtpd_recipient_restrictions", rcpt, "smtpd_data_restrictions", data)
	return nil
}

// decided checks serve's log (text, one line per decision with the queue
// id) for at least n decisions on the variant's hook, each placing the
// benchmark's sender with Example's binding, and none on the other hook.
func decided(log string, k kind, n int) error {
	want, other := "msg=\"milter decision\"", "msg=\"policy decision\""
	if k == kindPolicy {
		want, other = other, want
	}
	var got, misplaced, others int
	var sample string
	for _, l := range strings.Split(log, "\n") {
		switch {
		case strings.Contains(l, want):
			got++
			if !strings.Contains(l, " binding=Example ") {
				misplaced++
				sample = l
			}
		case strings.Contains(l, other):
			others++
		}
	}
	switch {
	case got < n:
		return fmt.Errorf("serve logged %d %s lines for %d messages:\n%s", got, want, n, tail(log, 10))
	case misplaced > 0:
		return fmt.Errorf("%d of %d decisions did not choose binding Example, e.g. %s", misplaced, got, sample)
	case others > 0:
		return fmt.Errorf("%d decisions on the other hook (%s)", others, other)
	}
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// writeBindings writes the variant's binding file (and script) into dir,
// naming its unix milter socket in sockDir.
// The sender's domain is Example's Match_Domain; scripts test 50 things
// that never match, so every message walks all of them and Match_Domain
// places it.
func writeBindings(dir, sockDir string, v variant) (string, error) {
	var head strings.Builder
	fmt.Fprintf(&head, "Binding_Header = \"X-Binding\"\nBinding_Header_Key = %q\nOn_Policy_Error = default\nOn_Milter_Down = tempfail\nInterface = eth0\n",
		filepath.Join(dir, "binding-header.key"))
	var script strings.Builder
	script.WriteString("require [\"envelope\", \"variables\"];\n")
	switch v.kind {
	case kindMilter:
		fmt.Fprintf(&head, "Milter_Listen = %q\n", v.listen)
		for i := range 50 {
			fmt.Fprintf(&script, "if header :contains \"X-Bench-%d\" \"never-%d\" { set \"binding\" \"default\"; stop; }\n", i, i)
		}
	case kindPolicy, kindPolicyFloor:
		// Hook = auto (the default) must choose the policy service for
		// an envelope-only script; the milter stays for mail from
		// sendmail (non_smtpd_milters), which the benchmark does not send.
		fmt.Fprintf(&head, "Milter_Listen = %q\nPolicy_Listen = %q\n", "unix:"+filepath.Join(sockDir, "policy-milter.sock"), v.listen)
		for i := range 50 {
			fmt.Fprintf(&script, "if envelope :domain :is \"from\" \"never-%d.test\" { set \"binding\" \"default\"; stop; }\n", i)
		}
	}
	if v.kind != kindDomain {
		if err := os.WriteFile(filepath.Join(dir, "bench.sieve"), []byte(script.String()), 0o644); err != nil {
			return "", err
		}
		head.WriteString("Sieve_Script = \"bench.sieve\"\n")
	}
	// The milter reads the key; "vipmilter postfix" makes one too, but
	// with the vipmilter group, which a bench machine may not have.
	if _, err := config.EnsureHeaderKey(filepath.Join(dir, "binding-header.key"), -1); err != nil {
		return "", err
	}
	conf := head.String() + `Binding "default" {
  Bind_Address = ` + defaultAddr + `
  EHLO_Hostname = mta.bench.test
}
Binding "Example" {
  Bind_Address = ` + exampleAddr + `
  EHLO_Hostname = mta1.example.com
  Match_Domain = example.com
}
`
	p := filepath.Join(dir, "bench.conf")
	return p, os.WriteFile(p, []byte(conf), 0o644)
}

// pidOf finds the one process running exe inside the namespace with inode ns.
func pidOf(exe string, ns uint64) (int, error) {
	var found []int
	for pid, p := range processes() {
		if p.ns != ns {
			continue
		}
		if target, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/exe"); err == nil && target == exe {
			found = append(found, pid)
		}
	}
	if len(found) != 1 {
		return 0, fmt.Errorf("%s: want one process, found %v", exe, found)
	}
	return found[0], nil
}
