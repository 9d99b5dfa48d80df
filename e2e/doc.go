// Package e2e runs the whole vipmilter system for real: a private Postfix, the
// vipmilter binary and SMTP sinks inside network namespaces it creates, so the
// end-to-end tests, the demo and the Postfix benchmark share one harness and
// never touch the host's interfaces or mail system.
package e2e
