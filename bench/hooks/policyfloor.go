package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"syscall"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/e2e"
	"github.com/vipmilter/vipmilter/internal/testenv"
)

// policyFloorArg runs this binary as the policy floor (os.Args[1]), the
// least an SMTPD policy service can do: read each request to its empty
// line and answer DUNNO, no policy, no log. Postfix is configured exactly
// as for "vipmilter policy" (rendered by "vipmilter postfix"), and the
// benchmark's sender is placed by Match_Domain, which Postfix's
// sender_dependent_default_transport_maps routes without the header; so
// the floor measures what the policy hook costs Postfix and a Go process
// before vipmilter does anything, as the C floor milter does for the
// milter hook. It is Go because serve is: the runtime's cost per request
// (a goroutine woken by the network poller) is part of the floor.
const policyFloorArg = "policy-floor"

// startPolicyFloor starts the policy floor on v.listen in the MTA's
// namespace.
func (b *bench) startPolicyFloor(ctx context.Context, v variant) (running, error) {
	self, err := os.Executable()
	if err != nil {
		return running{stop: func() {}}, err
	}
	// The scheduler as serve sizes it (cmd/vipmilter/procs.go: a quarter of
	// the runtime's default, at least one), so floor and serve differ only
	// in what serve does per request. env execs: the process id stays.
	procs := max(1, (runtime.GOMAXPROCS(0)+3)/4)
	return b.startFloor(ctx, "policy floor", v.listen, "env", "GOMAXPROCS="+strconv.Itoa(procs), self, policyFloorArg, v.listen)
}

// startFloor runs argv (a floor: the C milter or the policy floor) in the
// MTA's namespace and waits until it accepts on listen.
func (b *bench) startFloor(ctx context.Context, what, listen string, argv ...string) (running, error) {
	none := running{stop: func() {}}
	cmd := b.netw.MTA.Command(context.Background(), argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return none, fmt.Errorf("%s: %w", what, err)
	}
	// "ip netns exec" execs the program: this is its process id.
	r := running{pid: func() (int, error) { return cmd.Process.Pid, nil },
		stop: func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }}
	if err := e2e.WaitMilter(ctx, b.netw.MTA, listen); err != nil {
		r.stop()
		return none, fmt.Errorf("%s: %w", what, err)
	}
	return r, nil
}

// runPolicyFloor serves the policy floor on listen until killed.
func runPolicyFloor(listen string) error {
	l, err := config.ParseListen(listen)
	if err != nil {
		return err
	}
	if p := l.Path(); p != "" {
		os.Remove(p) // the previous round's
	}
	ln, err := net.Listen(l.Network, l.Address)
	if err != nil {
		return err
	}
	if p := l.Path(); p != "" {
		if err := os.Chmod(p, 0o666); err != nil { // smtpd runs as postfix
			return err
		}
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go testenv.AnswerDUNNO(c)
	}
}
