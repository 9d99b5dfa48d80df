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

// sizeScheduler applies serveProcs to this process and returns it.
func sizeScheduler(envSet bool) (n int, from string) {
	n, from = serveProcs(runtime.GOMAXPROCS(0), envSet)
	runtime.GOMAXPROCS(n)
	return n, from
}

// goMaxProcsSet reports whether the environment sets GOMAXPROCS to a value
// the Go runtime honours (a positive integer; it ignores anything else).
func goMaxProcsSet() bool {
	n, err := strconv.Atoi(os.Getenv("GOMAXPROCS"))
	return err == nil && n > 0
}
