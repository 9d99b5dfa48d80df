package config

import (
	"strconv"
	"strings"
)

// scope is where a keyword may appear; keywords that configure a binding
// may also be written at group or file level, where they set the default for
// the bindings inside (as in Momentum, the innermost scope wins).
type scope uint8

const (
	inGlobal scope = 1 << iota
	inGroup
	inBinding
)

const everywhere = inGlobal | inGroup | inBinding

// keyword is one row of the binding file's vocabulary. The same table drives
// decoding, "did you mean" suggestions and docs/config.md, so the reference
// cannot drift from the code.
type keyword struct {
	Name   string // canonical spelling
	Scopes scope
	Stanza bool // Name "label" { ... } instead of Name = value
	Repeat bool // may appear more than once in one scope
	Values string
	// Default is the value the decoder assumes when the keyword is not
	// written, spelled as it would be written in the file; it is built from
	// the Default* constants so the reference cannot drift from them. A
	// setting without a default value has "" here and says what being
	// unset means in Unset.
	Default string
	Unset   string
	Doc     string

	set func(d *decoder, n *Node, v *values) // nil for stanzas
}

var keywords []*keyword

var keywordIndex map[string]*keyword

func init() {
	keywords = []*keyword{
		{Name: "Milter_Listen", Scopes: inGlobal, Values: "`unix:/path`, `inet:host:port`, `inet6:[addr]:port`", Default: DefaultMilterListen,
			Doc: "Where `vipmilter serve` listens, in Postfix notation. When master.cf runs smtpd and cleanup chrooted (Debian does), a unix socket must live under Postfix's queue directory (normally /var/spool/postfix) and `vipmilter postfix` names it as seen from the jail; it refuses one outside, and any unix socket when smtpd and cleanup differ in chroot (docs/postfix.md, \"Milter address and Debian's chroot\"). Ignored when systemd passes a listening socket (socket activation).",
			set: setMilterListen},
		{Name: "Sieve_Script", Scopes: inGlobal, Values: "file name", Unset: "none",
			Doc: "The Sieve policy, relative to the binding file's directory. Without a script, bindings are chosen by `Match_Domain` alone.",
			set: setSieveScript},
		{Name: "Binding_Header", Scopes: inGlobal, Values: "header field name", Default: DefaultBindingHeader,
			Doc: "The header the milter writes with the chosen binding (and the `Binding_Header_Key`) and Postfix routes on. A copy a client sends never routes a message: it lacks the key, and the MTA strips it. Standard headers (From, Received, Content-*, …) are refused.",
			set: setBindingHeader},
		{Name: "On_Policy_Error", Scopes: inGlobal, Values: "`default` \\| `tempfail`", Default: string(DefaultOnPolicyError),
			Doc: "What happens when the Sieve script fails at run time or names no known binding or group: `default` delivers through the fallback binding and logs an error; `tempfail` answers 4xx so the client retries later.",
			set: setOnPolicyError},
		{Name: "On_Milter_Down", Scopes: inGlobal, Values: "`accept` \\| `tempfail`", Default: string(DefaultOnMilterDown),
			Doc: "What Postfix does when it cannot reach vipmilter: rendered as the `default_action` of vipmilter's own milter entry (`{ inet:…, default_action=accept }`; main.cf's `milter_default_action` stays the host's) and, with the policy hook, of its `check_policy_service` entry (`DUNNO` or `DEFER_IF_PERMIT`). With `accept`, mail still flows and `Match_Domain` bindings are still honoured through `sender_dependent_default_transport_maps`; with `tempfail`, clients get 4xx and retry.",
			set: setOnMilterDown},
		{Name: "Max_Body_Bytes", Scopes: inGlobal, Values: "bytes, optional suffix `K`, `M`, `G` (binary)", Default: sizeText(DefaultMaxBodyBytes),
			Doc: "How much of the body a script that requires `body` may see. Postfix is only asked for the body when the script needs it.",
			set: setMaxBodyBytes},
		{Name: "Max_Header_Bytes", Scopes: inGlobal, Values: "bytes, 1K–1G, optional suffix `K`, `M`, `G` (binary)", Default: sizeText(DefaultMaxHeaderBytes),
			Doc: "How many header bytes (field names and values) of one message the milter keeps for a script that tests headers. Only the fields the script can read are kept (all of them when a test names a field through a variable); fields past the limit are left out of what the policy sees (logged with `headers_capped`, counted in `vipmilter_milter_headers_capped_total`) but still count for the `size` test. Bounds the milter's memory per message; Postfix itself limits one header to `header_size_limit` (100K by default).",
			set: setMaxHeaderBytes},
		{Name: "Max_Connections", Scopes: inGlobal, Values: "1–1000000", Default: strconv.Itoa(DefaultMaxConnections),
			Doc: "Open connections `vipmilter serve` accepts on each of its listening sockets: the milter (one per Postfix smtpd or cleanup process, or Sendmail queue runner, that has it open), the SMTPD policy service and the Sendmail socketmap. Further connections wait in the listen backlog until one closes (on the milter's socket this is logged and counted in `vipmilter_milter_connection_cap_reached_total`). Keep it, times the sockets in use, below the unit's `LimitNOFILE` (8192). Read when `serve` starts; a reload keeps the running value.",
			set: setMaxConnections},
		{Name: "Milter_Idle_Timeout", Scopes: inGlobal, Values: "time: a whole number with unit `s`, `m`, `h`, `d`, `w` (seconds when none), 1s–1w", Default: durationText(DefaultMilterIdleTimeout),
			Doc: "How long the milter waits for the MTA's next command on a connection before closing it. The MTA paces its commands by its own SMTP client, so this must exceed the MTA's SMTP timeouts (Postfix `smtpd_timeout`, 300s; Sendmail `Timeout.command`, 1h): a shorter value drops a slow client's message to `On_Milter_Down`. Bounds how long an idle connection holds a `Max_Connections` slot.",
			set: setMilterIdleTimeout},
		{Name: "Milter_Packet_Timeout", Scopes: inGlobal, Values: "time, as for `Milter_Idle_Timeout`, 1s–1h", Default: durationText(DefaultMilterPacketTimeout),
			Doc: "How long the rest of one milter packet may take once its first byte arrived; a connection stalled in mid-packet is closed. The MTA sends a packet at once, so the default matches Postfix's own `milter_command_timeout` (30s), after which Postfix gives up on the milter anyway. The option negotiation right after connecting has go-milter's fixed one-second limit.",
			set: setMilterPacketTimeout},
		{Name: "Interface", Scopes: everywhere, Values: "interface name", Unset: "none",
			Doc: "The network interface on which `vipmilter provision` configures binding addresses. Needed by the provisioner for every binding with an address (`check` warns about bindings without one); the milter and the Postfix renderer do not use it.",
			set: setInterface},
		{Name: "Bind_Prefix", Scopes: everywhere, Values: "1–32", Default: strconv.Itoa(DefaultBindPrefix4),
			Doc: "Prefix length given to IPv4 binding addresses the provisioner adds, unless the address is written as `addr/len`.",
			set: setInt(1, 32, func(v *values) *setting[int] { return &v.pfx4 })},
		{Name: "Bind_Prefix6", Scopes: everywhere, Values: "1–128", Default: strconv.Itoa(DefaultBindPrefix6),
			Doc: "Prefix length given to IPv6 binding addresses the provisioner adds, unless the address is written as `addr/len`.",
			set: setInt(1, 128, func(v *values) *setting[int] { return &v.pfx6 })},
		{Name: "Transport_Prefix", Scopes: inGlobal, Values: "`[A-Za-z][A-Za-z0-9_-]`, up to 32", Default: DefaultTransportPrefix,
			Doc: "Prefix of the master.cf services and main.cf parameters that `vipmilter postfix` owns; the transport of binding `B` is `<prefix>B`.",
			set: setTransportPrefix},
		{Name: "Keep_Header_On_Delivery", Scopes: inGlobal, Values: "boolean", Default: strconv.FormatBool(DefaultKeepHeader),
			Doc: "Keep the binding header on mail that leaves. By default the binding transports strip it.",
			set: setKeepHeader},
		{Name: "Metrics_Listen", Scopes: inGlobal, Values: "`host:port`", Unset: "none (off)",
			Doc: "Serve Prometheus metrics at `http://host:port/metrics`.",
			set: setMetricsListen},
		{Name: "State_Dir", Scopes: inGlobal, Values: "absolute path", Default: DefaultStateDir,
			Doc: "Where the provisioner records which addresses it added, so that `--prune` never removes an address it did not add.",
			set: setStateDir},
		{Name: "Binding_Header_Key", Scopes: inGlobal, Values: "file name, relative to the binding file's directory", Default: DefaultHeaderKeyFile,
			Doc: "A per-install secret that the milter (and the policy service) writes into every binding header and that the rendered Postfix tables require, so that a binding header a client forged (by SMTP or local `sendmail`, on any path, including requeue and a milter that was down) never routes a message. `vipmilter postfix` creates it (mode 0640, group `vipmilter`; it warns when that group does not exist, since the milter then cannot read it) when it does not exist; `vipmilter serve` reads it. Not used on a Sendmail host, where no binding header is written. The default puts it next to the binding file (`/etc/vipmilter/binding-header.key` for the default file).",
			set: setHeaderKeyFile},
		{Name: "Sendmail_Socketmap", Scopes: inGlobal, Values: "`unix:/path`, `inet:host:port`, `inet6:[addr]:port`", Unset: "none (no Sendmail)",
			Doc: "Where `vipmilter serve` answers Sendmail's socketmap with the binding and address it decided for each queue id, and where the fragment `vipmilter sendmail` renders points Sendmail. Set it only on a Sendmail host; see docs/sendmail.md.",
			set: setSendmailSocketmap},
		{Name: "Hook", Scopes: inGlobal, Values: "`auto` \\| `milter` \\| `policy`", Default: string(HookAuto),
			Doc: "How Postfix asks vipmilter for a binding. `auto` takes the cheapest hook that sees what the policy reads: none for `Match_Domain` alone (Postfix's `sender_dependent_default_transport_maps`), Postfix's SMTPD policy delegation when the script reads only the envelope and connection (sender, recipients, SASL login, client address and name, HELO, queue id, service), the milter when it reads headers, the body or the size. `vipmilter check` prints the choice and why. `milter` forces the milter; `policy` forces the policy service and is refused when the script reads what Postfix does not send to one. Mail submitted with `sendmail` never passes smtpd: with the policy hook it still passes the milter (`non_smtpd_milters`).",
			set: setHook},
		{Name: "Policy_Listen", Scopes: inGlobal, Values: "`unix:/path`, `inet:host:port`, `inet6:[addr]:port`", Default: DefaultPolicyListen,
			Doc: "Where `vipmilter serve` answers Postfix's SMTPD policy requests (`check_policy_service`) when the policy hook is in use. A unix socket must be reachable by every smtpd service: under the queue directory when they run chrooted (named as seen from the jail); refused when some run chrooted and some not.",
			set: setPolicyListen},
		{Name: "Binding", Scopes: inGlobal | inGroup, Stanza: true, Repeat: true, Values: "name: `[A-Za-z0-9._-]`, 1–64, case-sensitive",
			Doc: "A source identity: addresses, EHLO name and delivery limits. The binding named `default` is the fallback for mail the policy does not place; without one, such mail takes Postfix's ordinary delivery. Names must also differ in more than letter case: `Pool` next to `pool` is refused as a likely typo. The names `cleanup` and `filtered` are reserved (`<prefix>cleanup` and `<prefix>filtered` are cleanup services `vipmilter postfix` adds), and a name whose transport `<prefix><name>` is a stock Postfix service (`smtp`, `local`, `default`, …) is refused."},
		{Name: "Binding_Group", Scopes: inGlobal, Stanza: true, Repeat: true, Values: "name, as for Binding",
			Doc: "A pool of bindings. Naming the group in the policy picks one live member. Settings written in the group (other than `Bind_Address`, `Match_Domain`, `Weight`) are defaults for its members."},
		{Name: "Selection", Scopes: inGroup, Values: "`sticky` \\| `random` \\| `round_robin`", Default: string(DefaultSelection),
			Doc: "How a group picks a member: `sticky` by weighted rendezvous hashing of the first recipient's domain (a destination keeps seeing the same address), `random` by weight, `round_robin` in turn. Suspended members and members whose address is not on the host are skipped. When every member is suspended, all are candidates, so mail waits in the queue rather than leaving from an address outside the group; when a missing address leaves no member, the message follows `On_Policy_Error`.",
			set: setSelection},
		{Name: "Bind_Address", Scopes: inBinding, Repeat: true, Values: "IPv4 or IPv6 address, optional `/len`",
			Doc: "The source address. Repeat the keyword to give one IPv4 and one IPv6 address; at most one of each. Required in every binding except `default` (where it also binds the mail Postfix generates itself, such as bounces).",
			set: setBindAddress},
		{Name: "EHLO_Hostname", Scopes: everywhere, Values: "`__hostname__` \\| `__message__` \\| host name \\| address literal `[192.0.2.1]`, `[IPv6:2001:db8::1]`", Default: DefaultEHLOHostname,
			Doc: "The name sent in EHLO. `__hostname__` is Postfix's `$myhostname`. An internationalized name is sent in its A-label form; an address literal is written as in RFC 5321, with the `IPv6:` tag and without a zone. `__message__` (Momentum: the envelope sender's domain) can only be honoured when the binding has exactly one `Match_Domain`, because Postfix sets the EHLO name per transport; otherwise `check` warns and the binding greets with `$myhostname`.",
			set: setEHLO},
		{Name: "Max_Outbound_Connections", Scopes: everywhere, Values: "0–10000 (0: no limit)", Default: strconv.Itoa(DefaultMaxOutbound),
			Doc: "Concurrent connections from this binding to one destination domain, as in Momentum (Postfix's `<transport>_destination_concurrency_limit`).",
			set: setInt(0, 10000, func(v *values) *setting[int] { return &v.moc })},
		{Name: "Server_Max_Outbound_Connections", Scopes: everywhere, Values: "0–10000 (0: Postfix's default_process_limit)", Default: strconv.Itoa(DefaultServerMaxOutbound),
			Doc: "Concurrent connections from this binding in total (the transport's master.cf process limit).",
			set: setInt(0, 10000, func(v *values) *setting[int] { return &v.smoc })},
		{Name: "Suspend_Delivery", Scopes: everywhere, Values: "boolean", Default: strconv.FormatBool(DefaultSuspendDelivery),
			Doc: "Hold this binding's mail in the queue: it is neither delivered from any address nor bounced (until `maximal_queue_lifetime`), and leaves from the binding's address once unsuspended and re-applied with `vipmilter postfix`. Group members that are suspended are skipped by selection.",
			set: setSuspend},
		{Name: "Match_Domain", Scopes: inBinding, Repeat: true, Values: "domain name",
			Doc: "Mail whose envelope sender is in exactly this domain (case-insensitive; an internationalized domain may be written with U-labels, `müller.example`, or A-labels, `xn--mller-kva.example`, which are the same domain; a trailing dot is ignored) uses this binding unless the Sieve script chose one. Repeatable; a domain may belong to one binding only. Also rendered for Postfix, so it keeps working when the milter is down.",
			set: setMatchDomain},
		{Name: "Weight", Scopes: inBinding, Values: "1–1000", Default: strconv.Itoa(DefaultWeight),
			Doc: "A group member's share of `sticky` and `random` selection. Only inside a Binding_Group.",
			set: setWeight},
		{Name: "Relay", Scopes: everywhere, Values: "Postfix next hop: `host`, `host:port`, `[host]`, `[host]:port`, `[addr]`, `[ipv6:addr]:port`", Unset: "none (the recipient's domain)",
			Doc: "Send this binding's mail through a smarthost. Needed on sites with a relayhost: routing by binding bypasses `relayhost` and `transport_maps`.",
			set: setRelay},
	}
	keywordIndex = make(map[string]*keyword, len(keywords))
	for _, k := range keywords {
		keywordIndex[strings.ToLower(k.Name)] = k
	}
}

func lookupKeyword(name string) *keyword { return keywordIndex[strings.ToLower(name)] }

// suggest returns the keyword closest to name, or "" when none is close
// enough to be a plausible typo.
func suggest(name string) string {
	names := make([]string, len(keywords))
	for i, k := range keywords {
		names[i] = k.Name
	}
	return Closest(name, names)
}

// Closest returns the candidate nearest to s by edit distance (letter case
// ignored), or "" when none is near enough to be a plausible typo: at most
// a third of s's length, and at least 2, edits away. "Did you mean" in
// config and script errors.
func Closest(s string, candidates []string) string {
	ls := strings.ToLower(s)
	best, bestDist := "", max(2, len(s)/3)+1
	for _, c := range candidates {
		if d := editDistance(ls, strings.ToLower(c)); d < bestDist {
			best, bestDist = c, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (s scope) String() string {
	var parts []string
	if s&inGlobal != 0 {
		parts = append(parts, "file")
	}
	if s&inGroup != 0 {
		parts = append(parts, "Binding_Group")
	}
	if s&inBinding != 0 {
		parts = append(parts, "Binding")
	}
	return strings.Join(parts, ", ")
}
