package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestRunDaemon drives the loop serve and provision --watch share with real
// signals (to this process, caught by the loop) and a real sd_notify socket.
func TestRunDaemon(t *testing.T) {
	notify := filepath.Join(t.TempDir(), "notify")
	sd, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sd.Close()
	t.Setenv("NOTIFY_SOCKET", notify)
	next := func() string {
		t.Helper()
		buf := make([]byte, 512)
		sd.SetReadDeadline(time.Now().Add(10 * time.Second))
		n, err := sd.Read(buf)
		if err != nil {
			t.Fatalf("no sd_notify message: %v", err)
		}
		return string(buf[:n])
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))

	reloaded := make(chan struct{}, 1)
	stopped := false
	done := make(chan error, 1)
	go func() {
		done <- runDaemon(log, service{
			name: "test daemon",
			run: func(ctx context.Context, ready func()) error {
				ready()
				<-ctx.Done()
				stopped = true
				return nil
			},
			reload: func() { reloaded <- struct{}{} },
		})
	}()
	if got := next(); got != "READY=1" {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	syscall.Kill(syscall.Getpid(), syscall.SIGHUP)
	if got := next(); !strings.HasPrefix(got, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Fatalf("on SIGHUP: %q, want RELOADING=1 with MONOTONIC_USEC", got)
	}
	select {
	case <-reloaded:
	case <-time.After(10 * time.Second):
		t.Fatal("SIGHUP did not reload")
	}
	if got := next(); got != "READY=1" {
		t.Fatalf("after reload: %q, want READY=1", got)
	}
	syscall.Kill(syscall.Getpid(), syscall.SIGTERM)
	if got := next(); got != "STOPPING=1" {
		t.Fatalf("on SIGTERM: %q, want STOPPING=1", got)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("runDaemon: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("runDaemon did not return after SIGTERM")
	}
	if !stopped {
		t.Error("run was not cancelled")
	}
	if !strings.Contains(logs.String(), `msg="test daemon stopping" signal=terminated`) {
		t.Errorf("no stopping line:\n%s", logs.String())
	}

	// A service that fails ends the loop with its error, named.
	boom := errors.New("boom")
	err = runDaemon(log, service{name: "failing", run: func(context.Context, func()) error { return boom }, reload: func() {}})
	if !errors.Is(err, boom) || !strings.HasPrefix(err.Error(), "failing: ") {
		t.Fatalf("failed service: %v", err)
	}
}

// TestRunDaemonStart: a SIGHUP that arrives while start opens the
// listeners (serve logs "listening" there) is not lost and does not end the
// process: it reloads once run is going. A start error is returned as is,
// and run never runs.
func TestRunDaemonStart(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	reloaded := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- runDaemon(log, service{
			name:  "test daemon",
			start: func() error { return syscall.Kill(syscall.Getpid(), syscall.SIGHUP) },
			run: func(ctx context.Context, ready func()) error {
				ready()
				<-ctx.Done()
				return nil
			},
			reload: func() { reloaded <- struct{}{} },
		})
	}()
	select {
	case <-reloaded:
	case <-time.After(10 * time.Second):
		t.Fatal("the SIGHUP sent during start did not reload")
	}
	syscall.Kill(syscall.Getpid(), syscall.SIGTERM)
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	boom := &exitError{2, errors.New("boom")}
	ran := false
	err := runDaemon(log, service{name: "failing", start: func() error { return boom },
		run: func(context.Context, func()) error { ran = true; return nil }, reload: func() {}})
	if err != boom || ran {
		t.Fatalf("start failed: runDaemon returned %v (want it as is), run called: %v", err, ran)
	}
}
