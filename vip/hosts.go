package vip

import (
	"bytes"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/vipmilter/vipmilter/config"
)

// The managed block of a hosts file (provision --hosts-file). Sendmail
// greets with the name its bound address resolves to (ClientPortOptions
// Modifiers=h), so a binding's EHLO_Hostname is honoured there only if the
// address resolves to it; the block makes it so. Lines between the markers
// are vipmilter's: they are rewritten on every run. Everything outside is
// the host's and kept byte for byte.
const (
	HostsBegin = "# BEGIN vipmilter (managed by vipmilter provision; do not edit)"
	HostsEnd   = "# END vipmilter"
	// hostsBeginPrefix recognizes a begin marker whose explanation someone
	// reworded.
	hostsBeginPrefix = "# BEGIN vipmilter"
)

// HostsEntry is one line of the managed block: a binding address and the
// EHLO name it must resolve to.
type HostsEntry struct {
	Binding string
	Addr    netip.Addr // no zone
	Name    string     // an EHLO_Hostname that is a DNS host name (config.ValidHostname)
}

// line is the block line for e, per hosts(5): address, name, and a comment
// naming the binding. Every part is safe in a hosts line: the address is
// netip's text, the name passed config.ValidHostname (letters, digits,
// hyphens, dots) and the binding name config.ValidName (no space or '#').
func (e HostsEntry) line() string {
	return e.Addr.String() + " " + e.Name + " # binding " + e.Binding
}

// HostsEntries lists, in binding file order, one entry per binding address
// whose EHLO_Hostname the MTA would greet with if the address resolved to
// it, as greets reports (for Sendmail, sendmail.ResolvedEHLO: not
// __hostname__ or __message__, not an address literal, not a name without
// a dot or one that reads as an address). The MTA's rule is passed in so
// that vip stays beside the MTA packages, not above them.
func HostsEntries(cfg *config.Config, greets func(ehlo string) bool) []HostsEntry {
	var es []HostsEntry
	for _, b := range cfg.Bindings {
		if !greets(b.EHLOHostname) {
			continue
		}
		for _, p := range b.Addresses {
			es = append(es, HostsEntry{Binding: b.Name, Addr: p.Addr().WithZone(""), Name: b.EHLOHostname})
		}
	}
	return es
}

// HostsResult is what happened to one entry, or to one line of the old
// block that is no longer wanted (Binding empty, Status Removed).
type HostsResult struct {
	HostsEntry
	Status Status // Added, Present, Removed (or their "would" forms) or Failed
	Note   string // why, for Present through a host's line and for Failed
}

func (r HostsResult) String() string {
	what := r.Addr.String() + " " + r.Name
	if !r.Addr.IsValid() {
		what = r.Name // a line of the old block that names no address
	}
	s := fmt.Sprintf("%-12s %-43s hosts file", r.Status, what)
	if r.Binding != "" {
		// Aligned with the address lines' "on IFACE binding NAME".
		s += "         binding " + r.Binding
	}
	if r.Note != "" {
		s += ": " + r.Note
	}
	return s
}

// HostsPlan is the new content of a hosts file and what it changes.
type HostsPlan struct {
	Content []byte // the whole new file
	Changed bool   // Content differs from the old content
	// Results has one entry per HostsEntry in order, then one per line of
	// the old block that the new one lacks.
	Results []HostsResult
}

// Failed reports whether some entry could not be written (a conflict).
func (p *HostsPlan) Failed() bool {
	return slices.ContainsFunc(p.Results, func(r HostsResult) bool { return r.Status == Failed })
}

// HostsError is a hosts file whose block markers do not pair up: vipmilter
// refuses to guess where its block ends, since a wrong guess deletes the
// host's own lines.
type HostsError struct {
	Line int // 1-based
	Msg  string
}

func (e *HostsError) Error() string { return fmt.Sprintf("line %d: %s", e.Line, e.Msg) }

// hostsLine is one line of a hosts file with its terminator ("", "\n" or
// "\r\n").
type hostsLine struct {
	text, eol string
	num       int
}

func splitHostsLines(b []byte) []hostsLine {
	var ls []hostsLine
	for n := 1; len(b) > 0; n++ {
		i := bytes.IndexByte(b, '\n')
		var l hostsLine
		if i < 0 {
			l = hostsLine{text: string(b), num: n}
			b = nil
		} else {
			l = hostsLine{text: string(b[:i]), eol: "\n", num: n}
			b = b[i+1:]
		}
		if t, ok := strings.CutSuffix(l.text, "\r"); ok && l.eol != "" {
			l.text, l.eol = t, "\r\n"
		}
		ls = append(ls, l)
	}
	return ls
}

// hostsFields reads a hosts(5) line: the address and its names, without the
// comment; ok is false for a blank or comment line or a first field that is
// no address.
func hostsFields(text string) (addr netip.Addr, names []string, ok bool) {
	if i := strings.IndexByte(text, '#'); i >= 0 {
		text = text[:i]
	}
	f := strings.Fields(text)
	if len(f) == 0 {
		return netip.Addr{}, nil, false
	}
	a, err := netip.ParseAddr(f[0])
	if err != nil {
		return netip.Addr{}, nil, false
	}
	return a.WithZone(""), f[1:], true
}

func isBegin(text string) bool {
	return strings.HasPrefix(strings.TrimRight(text, " \t"), hostsBeginPrefix)
}

func isEnd(text string) bool { return strings.TrimRight(text, " \t") == HostsEnd }

// PlanHosts computes the hosts file that holds entries in vipmilter's block,
// from the file's old content. It is pure: the same input gives the same
// output, and the real run and --dry-run share it.
//
// The rules: everything outside the block is kept byte for byte. The block
// replaces the first old one where it stands, or is appended (after a
// newline, if the file lacks a final one); further old blocks are removed;
// with no lines to hold, no block is written. An address that a line of
// the host (outside the block) already maps is not overridden: the resolver
// answers with the first line that has the address, so if that line's first
// name is the entry's name the entry is Present, else Failed, naming the
// name Sendmail would greet with. Lines end as the file's first line does
// (CRLF or LF). A begin marker without an end marker, or the reverse, is a
// *HostsError.
func PlanHosts(old []byte, entries []HostsEntry) (*HostsPlan, error) {
	lines := splitHostsLines(old)
	eol := "\n"
	if len(lines) > 0 && lines[0].eol == "\r\n" {
		eol = "\r\n"
	}
	// Find the blocks; outside lines and the old block's lines.
	type span struct{ begin, end int } // indexes into lines, inclusive
	var blocks []span
	open := -1
	for i, l := range lines {
		switch {
		case isBegin(l.text) && open >= 0:
			return nil, &HostsError{l.num, fmt.Sprintf("%q again, before the %q of the block opened at line %d; fix the file by hand", hostsBeginPrefix, HostsEnd, lines[open].num)}
		case isBegin(l.text):
			open = i
		case isEnd(l.text) && open < 0:
			return nil, &HostsError{l.num, fmt.Sprintf("%q without a %q before it; fix the file by hand", HostsEnd, hostsBeginPrefix)}
		case isEnd(l.text):
			blocks = append(blocks, span{open, i})
			open = -1
		}
	}
	if open >= 0 {
		return nil, &HostsError{lines[open].num, fmt.Sprintf("%q without a %q after it; fix the file by hand", hostsBeginPrefix, HostsEnd)}
	}
	inBlock := make([]bool, len(lines))
	for _, b := range blocks {
		for i := b.begin; i <= b.end; i++ {
			inBlock[i] = true
		}
	}
	// The host's own mapping of each address: the first line with it.
	type hostMap struct {
		name string
		num  int
	}
	host := map[netip.Addr]hostMap{}
	oldLines := map[string]bool{}
	var oldOrder []hostsLine
	for i, l := range lines {
		if inBlock[i] {
			if !isBegin(l.text) && !isEnd(l.text) && strings.TrimSpace(l.text) != "" {
				oldLines[l.text] = true
				oldOrder = append(oldOrder, l)
			}
			continue
		}
		a, names, ok := hostsFields(l.text)
		if !ok || len(names) == 0 {
			continue
		}
		if _, seen := host[a]; !seen {
			host[a] = hostMap{names[0], l.num}
		}
	}

	plan := &HostsPlan{}
	var block []string
	written := map[netip.Addr]HostsEntry{}
	for _, e := range entries {
		r := HostsResult{HostsEntry: e}
		h, mapped := host[e.Addr]
		prev, dup := written[e.Addr]
		switch {
		case mapped && strings.EqualFold(h.name, e.Name):
			r.Status, r.Note = Present, fmt.Sprintf("line %d maps it already", h.num)
		case mapped:
			r.Status = Failed
			r.Note = fmt.Sprintf("line %d maps %s to %s first, so Sendmail greets with %s; not overridden: change that line or EHLO_Hostname", h.num, e.Addr, h.name, h.name)
		case dup && strings.EqualFold(prev.Name, e.Name):
			r.Status, r.Note = Present, "written for binding "+prev.Binding
		case dup:
			r.Status = Failed
			r.Note = fmt.Sprintf("binding %s maps %s to %s, so Sendmail greets with %s", prev.Binding, e.Addr, prev.Name, prev.Name)
		default:
			written[e.Addr] = e
			block = append(block, e.line())
			r.Status = Added
			if oldLines[e.line()] {
				r.Status = Present
			}
		}
		plan.Results = append(plan.Results, r)
	}
	for _, l := range oldOrder {
		if slices.Contains(block, l.text) {
			continue
		}
		r := HostsResult{Status: Removed, Note: fmt.Sprintf("line %d", l.num)}
		if a, names, ok := hostsFields(l.text); ok {
			r.Addr = a
			r.Name = strings.Join(names, " ")
		} else {
			r.Name = strings.TrimSpace(l.text)
		}
		plan.Results = append(plan.Results, r)
	}

	var out bytes.Buffer
	writeBlock := func() {
		if len(block) == 0 {
			return
		}
		out.WriteString(HostsBegin + eol)
		for _, l := range block {
			out.WriteString(l + eol)
		}
		out.WriteString(HostsEnd + eol)
	}
	for i, l := range lines {
		if !inBlock[i] {
			out.WriteString(l.text + l.eol)
			continue
		}
		if i == blocks[0].begin {
			writeBlock()
		}
	}
	if len(blocks) == 0 && len(block) > 0 {
		if n := len(lines); n > 0 && lines[n-1].eol == "" {
			out.WriteString(eol)
		}
		writeBlock()
	}
	plan.Content = out.Bytes()
	plan.Changed = !bytes.Equal(plan.Content, old)
	return plan, nil
}
