package milter

import (
	"time"

	"github.com/vipmilter/vipmilter/config"
)

// Settings are what the milter itself needs to know; serve builds them from
// the loaded Config and the header key file, tests write them directly.
// Zero durations and sizes take the binding file's defaults (config.Default*).
type Settings struct {
	// BindingHeader is the header field written at end of message, e.g.
	// "X-Binding" (Binding_Header).
	BindingHeader string
	// HeaderKey is the per-install secret (Binding_Header_Key). The header
	// value is "<binding> <key>" with the key moved past what Postfix logs
	// (config.BindingHeaderValue); just "<binding>" when HeaderKey is empty
	// (tests only: the Postfix side routes only on keyed values).
	HeaderKey string
	// NoHeader writes no binding header: the MTA learns the decision from
	// Decided instead (Sendmail's socketmap), and Sendmail could not strip
	// a milter-added header on delivery, so it would reach recipients.
	NoHeader bool
	// MaxBodyBytes caps the body bytes kept for a policy that reads the
	// body (Max_Body_Bytes); the size test still counts every byte.
	MaxBodyBytes int64
	// MaxHeaderBytes caps the header bytes (name + value) kept per message
	// for a policy that reads headers (Max_Header_Bytes); only fields the
	// policy reads count. Fields past the cap are counted in the size but
	// not seen by the policy (logged, counted in
	// vipmilter_milter_headers_capped_total). Default
	// config.DefaultMaxHeaderBytes.
	MaxHeaderBytes int64
	// OnPolicyError applies to failures the policy could not report itself
	// (a panic while deciding): "default" writes the fallback binding
	// config.DefaultBindingName, "tempfail" answers 451. Policy errors the
	// policy reports already carry their action (sieve.Decision.Action).
	OnPolicyError config.PolicyErrorAction
	// Decided, when set, is called once per accepted message at end of
	// message, after the binding header was sent, with the MTA's queue id
	// (macro i; "" if the MTA sent none) and the binding name. The Sendmail
	// socketmap records queue id → binding through it. It must not block.
	Decided func(queueID, binding string)

	// MaxConnections caps concurrent MTA connections (Max_Connections);
	// further connections wait in the listen backlog. Default
	// config.DefaultMaxConnections.
	MaxConnections int
	// CommandTimeout is how long the milter waits for the MTA's next
	// command once negotiated (Milter_Idle_Timeout). The MTA paces it by
	// its SMTP client, so it must exceed the MTA's own SMTP timeouts
	// (Postfix smtpd_timeout 300s, Sendmail Timeout.command 1h). Default
	// config.DefaultMilterIdleTimeout.
	CommandTimeout time.Duration
	// PacketTimeout is how long the rest of a packet may take once its
	// first byte arrived (Milter_Packet_Timeout; Postfix's
	// milter_command_timeout is 30s). Default
	// config.DefaultMilterPacketTimeout. The option negotiation itself must
	// arrive within one second of connecting (go-milter's fixed limit).
	PacketTimeout time.Duration
	// SocketMode is the mode of a unix socket Listen creates. Default
	// DefaultSocketMode.
	SocketMode uint32
}

// DefaultSocketMode makes the socket connectable by Postfix's smtpd and
// cleanup (user "postfix", normally not in vipmilter's group); restrict
// access with the mode of the socket's directory (e.g. 0750
// root:postfix) instead.
const DefaultSocketMode = 0o666

// maxPacketBytes bounds one milter packet from the MTA (length prefix
// included in neither): both MTAs send body chunks of at most 64 KiB (1 MiB
// when negotiated), and Postfix's headers are limited by header_size_limit
// (100 KiB by default). A longer packet ends the session before go-milter
// allocates it.
const maxPacketBytes = 1 << 20

func (s Settings) withDefaults() Settings {
	if s.BindingHeader == "" {
		s.BindingHeader = config.DefaultBindingHeader
	}
	if s.MaxBodyBytes <= 0 {
		s.MaxBodyBytes = config.DefaultMaxBodyBytes
	}
	if s.MaxHeaderBytes <= 0 {
		s.MaxHeaderBytes = config.DefaultMaxHeaderBytes
	}
	if s.OnPolicyError == "" {
		s.OnPolicyError = config.PolicyErrorDefault
	}
	if s.MaxConnections <= 0 {
		s.MaxConnections = config.DefaultMaxConnections
	}
	if s.CommandTimeout <= 0 {
		s.CommandTimeout = config.DefaultMilterIdleTimeout
	}
	if s.PacketTimeout <= 0 {
		s.PacketTimeout = config.DefaultMilterPacketTimeout
	}
	if s.SocketMode == 0 {
		s.SocketMode = DefaultSocketMode
	}
	return s
}

// headerValue is the binding header's value for binding
// (config.BindingHeaderValue: the key past what Postfix logs).
func (s Settings) headerValue(binding string) string {
	return config.BindingHeaderValue(s.BindingHeader, binding, s.HeaderKey)
}
