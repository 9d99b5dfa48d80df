package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"syscall"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/e2e"
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
	none := running{stop: func() {}}
	self, err := os.Executable()
	if err != nil {
		return none, err
	}
	cmd := b.netw.MTA.Command(context.Background(), self, policyFloorArg, v.listen)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return none, fmt.Errorf("policy floor: %w", err)
	}
	r := running{pid: func() (int, error) { return cmd.Process.Pid, nil },
		stop: func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() }}
	if err := e2e.WaitMilter(ctx, b.netw.MTA, v.listen); err != nil {
		r.stop()
		return none, fmt.Errorf("policy floor: %w", err)
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
		go answerDUNNO(c)
	}
}

// answerDUNNO answers every request on c with DUNNO.
func answerDUNNO(c net.Conn) {
	defer c.Close()
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return
		}
		if len(line) == 1 {
			if _, err := io.WriteString(c, "action=DUNNO\n\n"); err != nil {
				return
			}
		}
	}
}
