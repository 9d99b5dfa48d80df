package policyd

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// Limits on one request. Postfix sends about 30 short attributes; anything
// far beyond is not Postfix, and the protocol's answer to trouble is to
// log and disconnect (SMTPD_POLICY_README, "Protocol description").
const (
	MaxLineBytes    = 16 << 10 // one name=value line, newline included
	MaxRequestBytes = 64 << 10 // all lines of one request
	MaxAttributes   = 128      // lines of one request
)

// Request holds the attributes of one policy request that vipmilter reads
// (SMTPD_POLICY_README lists them all; others are ignored, as the protocol
// asks). Values are as Postfix sent them; an absent attribute is "".
type Request struct {
	Request        string // "smtpd_access_policy"
	State          string // protocol_state: CONNECT, EHLO, HELO, MAIL, RCPT, DATA, END-OF-MESSAGE, VRFY, ETRN
	Instance       string // the same for every request about one message on one connection
	Sender         string // envelope sender without <>, "" for the null sender
	Recipient      string // RCPT: this recipient; DATA: the only one, when there is exactly one
	RecipientCount int    // DATA and END-OF-MESSAGE: recipients Postfix accepted; 0 elsewhere
	QueueID        string
	SASLUsername   string
	ClientAddress  string
	ClientName     string // verified client name, "unknown" when none
	HeloName       string
	Size           int    // MAIL FROM SIZE= (0 if none); the real size only at END-OF-MESSAGE
	PolicyContext  string // smtpd_policy_service_policy_context (Postfix ≥ 3.1)
}

// errTooLong is a line or request over the limits above.
var errTooLong = errors.New("request exceeds the size limits")

// readRequest reads one request: name=value lines up to an empty line. It
// returns io.EOF when the connection closed cleanly between requests. A
// line without "=" or over the limits is an error; the caller disconnects.
// Of an attribute sent twice, the last value counts (the protocol allows
// either).
func readRequest(br *bufio.Reader, r *Request) error {
	*r = Request{}
	total, n := 0, 0
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return errTooLong
			}
			if err == io.EOF && n == 0 && len(line) == 0 {
				return io.EOF
			}
			if err == io.EOF {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		total += len(line)
		n++
		if len(line) > MaxLineBytes || total > MaxRequestBytes || n > MaxAttributes {
			return errTooLong
		}
		line = bytes.TrimSuffix(line[:len(line)-1], []byte("\r"))
		if len(line) == 0 {
			if n == 1 {
				// An empty line with no attributes before it: not a
				// request; Postfix never sends one.
				return errors.New("empty request")
			}
			return nil
		}
		eq := bytes.IndexByte(line, '=')
		if eq <= 0 {
			return fmt.Errorf("attribute line %d is not name=value", n)
		}
		if err := r.set(line[:eq], line[eq+1:]); err != nil {
			return err
		}
	}
}

// set records one attribute. The switch on string(name) does not allocate.
func (r *Request) set(name, value []byte) error {
	switch string(name) {
	case "request":
		r.Request = string(value)
	case "protocol_state":
		r.State = string(value)
	case "instance":
		r.Instance = string(value)
	case "sender":
		r.Sender = string(value)
	case "recipient":
		r.Recipient = string(value)
	case "recipient_count":
		n, err := number(name, value)
		r.RecipientCount = n
		return err
	case "queue_id":
		r.QueueID = string(value)
	case "sasl_username":
		r.SASLUsername = string(value)
	case "client_address":
		r.ClientAddress = string(value)
	case "client_name":
		r.ClientName = string(value)
	case "helo_name":
		r.HeloName = string(value)
	case "size":
		n, err := number(name, value)
		r.Size = n
		return err
	case "policy_context":
		r.PolicyContext = string(value)
	}
	return nil
}

// number parses a numeric attribute; Postfix sends "" or "0" when unknown.
func number(name, value []byte) (int, error) {
	if len(value) == 0 {
		return 0, nil
	}
	n, err := strconv.Atoi(string(value))
	if err != nil || n < 0 {
		return 0, fmt.Errorf("attribute %s=%q is not a count", name, value)
	}
	return n, nil
}
