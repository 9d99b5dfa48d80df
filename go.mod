module github.com/vipmilter/vipmilter

go 1.26

require (
	github.com/coreos/go-systemd/v22 v22.7.0
	github.com/emersion/go-message v0.18.2
	github.com/emersion/go-milter v0.5.0
	github.com/emersion/go-smtp v0.25.1
	github.com/foxcpp/go-sieve v0.0.0-20260523221512-9ae51b269e52
	github.com/prometheus/client_golang v1.23.2
	github.com/vishvananda/netlink v1.3.1
)
