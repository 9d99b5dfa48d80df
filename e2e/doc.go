// Package e2e runs the whole vipmilter system for real: a private Postfix, the
// vipmilter binary and SMTP sinks inside network namespaces it creates, so the
// end-to-end tests, the demo and the Postfix benchmark share one harness and
// never touch the host's interfaces or mail system. The parts (namespaces,
// private Postfix, sinks, waiting) come from internal/testenv; this package
// puts them together (Network, System) and holds the end-to-end cases.
package e2e
