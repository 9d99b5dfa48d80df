package main

import (
	"os"
	"runtime"
	"strconv"
)

// procsShare is the share of the CPUs Go would use that serve runs on
// when GOMAXPROCS is not set: one in four. serve answers the MTA on the
// same host, and per message it needs a small fraction of the MTA's CPU
// (bench/hooks on Postfix 3.7: 0.8–1.1 ms for the 50-rule milter, 0.3 ms
// for the policy service, against 4.5–6 ms for Postfix itself), so a
// quarter of the CPUs is not what limits throughput. Fewer Go Ps mean
// fewer idle threads woken (futex) and polled (epoll_wait) for each
// packet the MTA sends, which is most of serve's CPU: on 2 CPUs, 1 P cut
// the milter's CPU per message by 10–18 % and the policy service's by
// 3–10 % (bench/hooks, the variants alternated in one run).
const procsShare = 4

// serveProcs is the GOMAXPROCS serve runs with: what the environment's
// GOMAXPROCS says when it is set (Go has applied it already; envSet),
// else procs (the runtime's default: the CPUs, or the cgroup's CPU limit)
// divided by procsShare, rounded up.
func serveProcs(procs int, envSet bool) (n int, from string) {
	if envSet {
		return procs, "GOMAXPROCS"
	}
	return max(1, (procs+procsShare-1)/procsShare), "auto"
}

// sizeScheduler applies serveProcs to this process once, at start, and
// returns it with the runtime's value before (its default when the
// environment does not set one). Go then no longer follows a changed
// cgroup CPU limit (it does only while GOMAXPROCS was never set).
func sizeScheduler(envSet bool) (n int, from string, before int) {
	before = runtime.GOMAXPROCS(0)
	n, from = serveProcs(before, envSet)
	runtime.GOMAXPROCS(n)
	return n, from, before
}

// goMaxProcsSet reports whether the environment sets GOMAXPROCS to a value
// the Go runtime honours; it ignores anything else and uses its default.
func goMaxProcsSet() bool { return honoured(os.Getenv("GOMAXPROCS")) }

// honoured is the Go runtime's own test (runtime.schedinit, Go 1.26): a
// decimal int32 above 0, sign allowed.
func honoured(v string) bool {
	n, err := strconv.ParseInt(v, 10, 32)
	return err == nil && n > 0
}
