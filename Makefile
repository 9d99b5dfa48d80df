# vipmilter — build, test, benchmark, demo, install.
#
#   make            build ./vipmilter (version stamped with git describe)
#   make deps       install what the tests and the demo need (Debian, as root)
#   make test       the whole test suite (unit, milter, Postfix end-to-end, netlink, fuzz, systemd)
#   make demo       the whole system on examples/ in private network namespaces (root)
#   make demo-sendmail  the same on a private Sendmail 8.17 (Debian's packages, unpacked)
#   make run        serve examples/vipmilter.conf in the foreground
#   make bench      Go benchmarks (ratios against baselines run side by side)
#   make bench-system  Postfix and provisioning benchmarks in namespaces (root)
#   make install    DESTDIR-aware install of binary, units, example config

GO        ?= go
# Empty outside a git checkout: the binary then reports its build info.
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null)
LDFLAGS   := -X main.version=$(VERSION)
DESTDIR   ?=
PREFIX    ?= /usr
FUZZTIME  ?= 20s

.PHONY: all build deps test unit fuzz systemd-check demo demo-sendmail run bench bench-system install clean

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o vipmilter ./cmd/vipmilter

# Debian packages the suite and the demo use: postfix (with smtp-sink/
# smtp-source), swaks, iproute2 (ip netns), systemd (systemd-analyze,
# systemd-sysusers, systemd-tmpfiles), opendkim + opendkim-tools (a real
# companion milter), libmilter-dev + m4 (Sendmail's milter library and
# config macros), git (version stamp, version tests) and make. Postfix is
# preseeded to "No configuration" so installing it never asks questions and
# never configures the host's own mail system. Only missing packages are
# installed (apt-get update only then).
DEB_PACKAGES := postfix swaks iproute2 systemd opendkim opendkim-tools libmilter-dev m4 git make

deps:
	@if [ "$$(id -u)" != 0 ]; then echo "make deps: run as root (it uses apt-get)"; exit 1; fi
	echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
	missing=$$(for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -qx 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  DEBIAN_FRONTEND=noninteractive apt-get update && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y $$missing; fi
	$(GO) mod download

test: unit fuzz systemd-check

unit:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 30m ./...

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./config
	$(GO) test -run '^$$' -fuzz '^FuzzRender$$' -fuzztime $(FUZZTIME) ./postfix
	$(GO) test -run '^$$' -fuzz '^FuzzSession$$' -fuzztime $(FUZZTIME) ./milter

systemd-check:
	./systemd/check.sh

demo:
	$(GO) run ./cmd/vipmilter-demo

demo-sendmail:
	$(GO) run ./cmd/vipmilter-demo --sendmail

run: build
	./vipmilter serve -c examples/vipmilter.conf

bench:
	$(GO) test -run '^$$' -bench . -benchmem -cpu 1 -count 3 ./sieve ./milter

bench-system:
	$(GO) run ./bench/provision -n 4096 -repeat 5
	$(GO) run ./bench/hooks -n 1000 -rounds 3
	$(GO) run ./bench/postfix-apply -repeat 3

install: build
	install -D -m 0755 vipmilter $(DESTDIR)$(PREFIX)/bin/vipmilter
	@# units: /lib/systemd/system (Debian 12) unless UNITDIR=...; ExecStart follows PREFIX
	install -d -m 0755 $(DESTDIR)$(or $(UNITDIR),/lib/systemd/system)/postfix@.service.d
	for u in vipmilter.service vipmilter-provision.service vipmilter.socket; do \
	  sed 's|/usr/bin/vipmilter|$(PREFIX)/bin/vipmilter|g' systemd/$$u > $(DESTDIR)$(or $(UNITDIR),/lib/systemd/system)/$$u && \
	  chmod 0644 $(DESTDIR)$(or $(UNITDIR),/lib/systemd/system)/$$u || exit 1; \
	done
	install -m 0644 systemd/postfix@.service.d-vipmilter.conf $(DESTDIR)$(or $(UNITDIR),/lib/systemd/system)/postfix@.service.d/vipmilter.conf
	install -D -m 0644 systemd/vipmilter.sysusers $(DESTDIR)$(PREFIX)/lib/sysusers.d/vipmilter.conf
	install -D -m 0644 systemd/vipmilter.tmpfiles $(DESTDIR)$(PREFIX)/lib/tmpfiles.d/vipmilter.conf
	install -D -m 0644 docs/systemd.md $(DESTDIR)$(PREFIX)/share/doc/vipmilter/systemd.md
	install -d -m 0755 $(DESTDIR)/etc/vipmilter
	test -e $(DESTDIR)/etc/vipmilter/vipmilter.conf || install -m 0644 examples/vipmilter.conf $(DESTDIR)/etc/vipmilter/vipmilter.conf
	test -e $(DESTDIR)/etc/vipmilter/policy.sieve || install -m 0644 examples/policy.sieve $(DESTDIR)/etc/vipmilter/policy.sieve

clean:
	rm -f vipmilter
