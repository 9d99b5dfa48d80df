#!/usr/bin/env bash
# Checks the systemd integration (make systemd-check; CI runs it):
#   1. make install DESTDIR=<tmp> places every file, with the right modes;
#   2. sysusers/tmpfiles entries apply to that root (users, dirs, owners);
#   3. systemd-analyze verify is clean for the installed units (and for
#      Postfix's postfix@-.service with our drop-in, when Postfix is here);
#   4. systemd-analyze security --offline=true exposure <= 2.0 (milter,
#      socket) and <= 3.0 (provisioner); the figures are printed.
# Without systemd-analyze: fails when CI=true, skips with a message otherwise.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
cd "$repo"

fail() { echo "systemd-check: FAIL: $*" >&2; exit 1; }

if ! command -v systemd-analyze >/dev/null 2>&1; then
	if [ "${CI:-}" = true ]; then
		fail "systemd-analyze not found (CI=true): install systemd (make deps)"
	fi
	echo "systemd-check: SKIP: systemd-analyze not found (install systemd, or run in CI)"
	exit 0
fi
echo "systemd-check: $(systemd-analyze --version | head -n1)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
unitdir=/lib/systemd/system

# 1. install ----------------------------------------------------------------
make --no-print-directory install DESTDIR="$root" PREFIX=/usr UNITDIR=$unitdir >"$tmp/install.log" 2>&1 ||
	{ cat "$tmp/install.log" >&2; fail "make install DESTDIR=$root"; }

want=(
	"0755 /usr/bin/vipmilter"
	"0644 $unitdir/vipmilter.service"
	"0644 $unitdir/vipmilter-provision.service"
	"0644 $unitdir/vipmilter.socket"
	"0644 $unitdir/postfix@.service.d/vipmilter.conf"
	"0644 /usr/lib/sysusers.d/vipmilter.conf"
	"0644 /usr/lib/tmpfiles.d/vipmilter.conf"
	"0644 /usr/share/doc/vipmilter/systemd.md"
	"0644 /etc/vipmilter/vipmilter.conf"
	"0644 /etc/vipmilter/policy.sieve"
)
for w in "${want[@]}"; do
	mode=${w%% *} f=${w#* }
	[ -f "$root$f" ] || fail "make install did not place $f"
	got=$(stat -c %a "$root$f")
	[ "0$got" = "$mode" ] || fail "$f has mode 0$got, want $mode"
done
for u in vipmilter.service vipmilter-provision.service vipmilter.socket; do
	cmp -s "systemd/$u" "$root$unitdir/$u" ||
		fail "installed $u differs from systemd/$u"
done
# A second install must keep an edited configuration.
echo "# edited" >>"$root/etc/vipmilter/vipmilter.conf"
make --no-print-directory install DESTDIR="$root" PREFIX=/usr UNITDIR=$unitdir >"$tmp/install.log" 2>&1 ||
	{ cat "$tmp/install.log" >&2; fail "second make install"; }
tail -n1 "$root/etc/vipmilter/vipmilter.conf" | grep -qx "# edited" ||
	fail "make install overwrote /etc/vipmilter/vipmilter.conf"
echo "systemd-check: make install: ${#want[@]} files placed"

# 2. sysusers + tmpfiles into the install root ----------------------------------
if [ "$(id -u)" = 0 ]; then
	systemd-sysusers --root="$root" >"$tmp/sysusers.log" 2>&1 ||
		{ cat "$tmp/sysusers.log" >&2; fail "systemd-sysusers --root"; }
	# Postfix's group, as the Postfix package would have created it.
	grep -q '^postfix:' "$root/etc/group" || echo 'postfix:x:105:' >>"$root/etc/group"
	systemd-tmpfiles --root="$root" --create >"$tmp/tmpfiles.log" 2>&1 ||
		{ cat "$tmp/tmpfiles.log" >&2; fail "systemd-tmpfiles --root --create"; }
	uid() { [ "$1" = root ] && echo 0 || awk -F: -v n="$1" '$1 == n { print $3 }' "$root/etc/passwd"; }
	gid() { [ "$1" = root ] && echo 0 || awk -F: -v n="$1" '$1 == n { print $3 }' "$root/etc/group"; }
	for u in vipmilter vipmilter-provision; do
		[ -n "$(uid $u)" ] || fail "sysusers did not create user $u"
		awk -F: -v n="$u" '$1 == n { exit $7 != "/usr/sbin/nologin" }' "$root/etc/passwd" ||
			fail "user $u can log in"
	done
	while read -r mode owner group path; do
		got=$(stat -c '%a %u %g' "$root$path" 2>/dev/null) || fail "tmpfiles did not create $path"
		[ "$got" = "$mode $(uid "$owner") $(gid "$group")" ] ||
			fail "$path: got mode/uid/gid $got, want $mode $owner:$group"
	done <<-EOF
		755 root root /etc/vipmilter
		750 vipmilter-provision vipmilter-provision /var/lib/vipmilter
		750 vipmilter postfix /var/spool/postfix/vipmilter
	EOF
	echo "systemd-check: sysusers + tmpfiles: users and directories as declared"
else
	systemd-sysusers --root="$root" --dry-run >/dev/null 2>&1 || fail "systemd-sysusers --dry-run"
	echo "systemd-check: not root: sysusers checked with --dry-run, tmpfiles not applied"
fi

# 3. verify -------------------------------------------------------------------
# verify needs ExecStart binaries to exist: point the units at the installed
# binary. SYSTEMD_UNIT_PATH puts them (and the postfix@ drop-in) ahead of the
# host's units, the trailing ':' keeps the host's for the references.
units=$tmp/units
mkdir -p "$units"
cp -r "$root$unitdir/." "$units/"
sed -i "s|/usr/bin/vipmilter|$root/usr/bin/vipmilter|g" "$units"/vipmilter*.service
targets=("$units/vipmilter.service" "$units/vipmilter-provision.service" "$units/vipmilter.socket")
# Debian's Postfix daemon unit with our drop-in applied, when Postfix is here.
if systemctl cat postfix@.service >/dev/null 2>&1 || [ -f /lib/systemd/system/postfix@.service ] ||
	[ -f /usr/lib/systemd/system/postfix@.service ]; then
	targets+=("postfix@-.service")
fi
if ! SYSTEMD_UNIT_PATH="$units:" systemd-analyze verify --man=no "${targets[@]}" >"$tmp/verify.log" 2>&1; then
	cat "$tmp/verify.log" >&2
	fail "systemd-analyze verify"
fi
if [ -s "$tmp/verify.log" ]; then
	cat "$tmp/verify.log" >&2
	fail "systemd-analyze verify printed warnings"
fi
echo "systemd-check: verify clean: ${targets[*]##*/}"

# 4. security -----------------------------------------------------------------
status=0
for spec in vipmilter.service:2.0 vipmilter-provision.service:3.0; do
	u=${spec%%:*} max=${spec#*:}
	out=$(systemd-analyze security --offline=true --no-pager "$units/$u" 2>&1) ||
		{ echo "$out" >&2; fail "systemd-analyze security $u"; }
	level=$(sed -n "s/.*Overall exposure level for $u: \([0-9.]*\).*/\1/p" <<<"$out")
	[ -n "$level" ] || { echo "$out" >&2; fail "no exposure level for $u"; }
	if awk -v l="$level" -v m="$max" 'BEGIN { exit !(l > m) }'; then
		echo "$out" | grep '✗' >&2 || true
		echo "systemd-check: FAIL: $u exposure $level > $max" >&2
		status=1
	else
		echo "systemd-check: $u exposure $level (limit $max)"
	fi
	# The same limit through systemd-analyze's own threshold (exposure x 10).
	thr=$(awk -v m="$max" 'BEGIN { printf "%d", m * 10 }')
	systemd-analyze security --offline=true --threshold="$thr" --no-pager "$units/$u" >/dev/null 2>&1 ||
		{ echo "systemd-check: FAIL: $u above --threshold=$thr" >&2; status=1; }
done
[ "$status" = 0 ] || exit 1
echo "systemd-check: OK"
