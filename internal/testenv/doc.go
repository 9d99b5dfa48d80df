// Package testenv is the one test environment of vipmilter's tests: the
// end-to-end harness (e2e), the package tests that need the kernel or a real
// Postfix (vip, postfix, cmd/vipmilter) and the system benchmarks build on it.
//
// It provides
//   - Require: the prerequisite check with the one CI convention (CI set:
//     a missing prerequisite fails the test; otherwise it skips);
//   - NS: a network namespace the test creates (lo up, veth pairs,
//     addresses, commands and sockets inside it, a netlink handle);
//   - Postfix: a private Postfix instance whose configuration, queue, data
//     and log live in a temporary directory;
//   - Sink and GoSink: receiving SMTP servers (smtp-sink dumping each
//     message with its source address and EHLO name; a go-smtp server
//     counting concurrent sessions);
//   - Poll and Eventually: the one way to wait for a condition.
//
// Nothing here touches the host's interfaces or mail system: namespaces are
// made by the test and Postfix runs with its own config_directory.
package testenv
