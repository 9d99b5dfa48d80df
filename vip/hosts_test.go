package vip

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/testenv"
	"github.com/vipmilter/vipmilter/sendmail"
)

func entry(binding, addr, name string) HostsEntry {
	return HostsEntry{Binding: binding, Addr: netip.MustParseAddr(addr), Name: name}
}

// block is the managed block holding lines, each ending in eol.
func block(eol string, lines ...string) string {
	s := HostsBegin + eol
	for _, l := range lines {
		s += l + eol
	}
	return s + HostsEnd + eol
}

const hostBase = "127.0.0.1\tlocalhost\n::1 localhost ip6-localhost  # IPv6\n\n# the host's own comment\n"

func TestPlanHosts(t *testing.T) {
	a := entry("A", "192.0.2.10", "out-a.example.com")
	a6 := entry("A", "2001:db8::10", "out-a.example.com")
	b := entry("B", "192.0.2.20", "out-b.example.com")
	lineA, lineA6, lineB := a.line(), a6.line(), b.line()
	cases := []struct {
		name    string
		old     string
		entries []HostsEntry
		want    string
		status  []string // "STATUS ADDR NAME" per result, in order
		notes   []string // substrings of the results' notes
	}{
		{"no block, appended", hostBase, []HostsEntry{a, a6, b},
			hostBase + block("\n", lineA, lineA6, lineB),
			[]string{"added 192.0.2.10 out-a.example.com", "added 2001:db8::10 out-a.example.com", "added 192.0.2.20 out-b.example.com"}, nil},
		{"block current: nothing changes", hostBase + block("\n", lineA, lineB), []HostsEntry{a, b},
			hostBase + block("\n", lineA, lineB),
			[]string{"present 192.0.2.10 out-a.example.com", "present 192.0.2.20 out-b.example.com"}, nil},
		{"block in the middle stays there, host lines around kept", "127.0.0.1 localhost\n" + block("\n", lineA) + "10.0.0.1 db.internal\n", []HostsEntry{a, b},
			"127.0.0.1 localhost\n" + block("\n", lineA, lineB) + "10.0.0.1 db.internal\n",
			[]string{"present 192.0.2.10 out-a.example.com", "added 192.0.2.20 out-b.example.com"}, nil},
		{"binding removed: its line goes", hostBase + block("\n", lineA, lineB), []HostsEntry{b},
			hostBase + block("\n", lineB),
			[]string{"present 192.0.2.20 out-b.example.com", "removed 192.0.2.10 out-a.example.com"}, []string{"line 6"}},
		{"no entries: block removed", hostBase + block("\n", lineA) + "10.0.0.1 db.internal\n", nil,
			hostBase + "10.0.0.1 db.internal\n",
			[]string{"removed 192.0.2.10 out-a.example.com"}, nil},
		{"no entries, no block: nothing", hostBase, nil, hostBase, nil, nil},
		{"empty file", "", []HostsEntry{a}, block("\n", lineA), []string{"added 192.0.2.10 out-a.example.com"}, nil},
		{"edited by hand: foreign lines in the block replaced", hostBase + HostsBegin + "\n" + lineA + "\n10.9.9.9 mine.example # added by hand\n\n" + HostsEnd + "\n", []HostsEntry{a},
			hostBase + block("\n", lineA),
			[]string{"present 192.0.2.10 out-a.example.com", "removed 10.9.9.9 mine.example"}, nil},
		{"name changed", hostBase + block("\n", lineA), []HostsEntry{entry("A", "192.0.2.10", "new-a.example.com")},
			hostBase + block("\n", "192.0.2.10 new-a.example.com # binding A"),
			[]string{"added 192.0.2.10 new-a.example.com", "removed 192.0.2.10 out-a.example.com"}, nil},
		{"reworded begin marker is ours, rewritten", hostBase + "# BEGIN vipmilter (mine)\n" + lineA + "\n" + HostsEnd + "\n", []HostsEntry{a},
			hostBase + block("\n", lineA), []string{"present 192.0.2.10 out-a.example.com"}, nil},
		{"duplicate blocks: first replaced, others removed", hostBase + block("\n", lineA) + "10.0.0.1 db.internal\n" + block("\n", lineB), []HostsEntry{a, b},
			hostBase + block("\n", lineA, lineB) + "10.0.0.1 db.internal\n",
			[]string{"present 192.0.2.10 out-a.example.com", "present 192.0.2.20 out-b.example.com"}, nil},
		{"no trailing newline: one added before the block", "127.0.0.1 localhost", []HostsEntry{a},
			"127.0.0.1 localhost\n" + block("\n", lineA), []string{"added 192.0.2.10 out-a.example.com"}, nil},
		{"end marker without newline at end of file", hostBase + HostsBegin + "\n" + lineA + "\n" + HostsEnd, []HostsEntry{a},
			hostBase + block("\n", lineA), []string{"present 192.0.2.10 out-a.example.com"}, nil},
		{"CRLF file gets a CRLF block", "127.0.0.1 localhost\r\n", []HostsEntry{a},
			"127.0.0.1 localhost\r\n" + block("\r\n", lineA), []string{"added 192.0.2.10 out-a.example.com"}, nil},
		{"CRLF block current", "127.0.0.1 localhost\r\n" + block("\r\n", lineA), []HostsEntry{a},
			"127.0.0.1 localhost\r\n" + block("\r\n", lineA), []string{"present 192.0.2.10 out-a.example.com"}, nil},
		{"host maps the address to another name: conflict, not overridden", "192.0.2.10 mx.example.org mx\n192.0.2.10 other.example\n", []HostsEntry{a, b},
			"192.0.2.10 mx.example.org mx\n192.0.2.10 other.example\n" + block("\n", lineB),
			[]string{"error 192.0.2.10 out-a.example.com", "added 192.0.2.20 out-b.example.com"},
			[]string{"line 1 maps 192.0.2.10 to mx.example.org first, so Sendmail greets with mx.example.org; not overridden"}},
		{"host maps the name as an alias only: conflict", "192.0.2.10 mx.example.org out-a.example.com\n", []HostsEntry{a},
			"192.0.2.10 mx.example.org out-a.example.com\n", []string{"error 192.0.2.10 out-a.example.com"}, []string{"greets with mx.example.org"}},
		{"conflict removes our old line", "192.0.2.10 mx.example.org\n" + block("\n", lineA), []HostsEntry{a},
			"192.0.2.10 mx.example.org\n", []string{"error 192.0.2.10 out-a.example.com", "removed 192.0.2.10 out-a.example.com"}, nil},
		{"host maps it to the same name, another spelling: present, no line", "192.0.2.010 x\n192.0.2.10 OUT-A.example.com\n2001:DB8:0::10 out-a.example.com\n", []HostsEntry{a, a6},
			"192.0.2.010 x\n192.0.2.10 OUT-A.example.com\n2001:DB8:0::10 out-a.example.com\n",
			[]string{"present 192.0.2.10 out-a.example.com", "present 2001:db8::10 out-a.example.com"}, []string{"line 2 maps it already", "line 3 maps it already"}},
		{"a commented-out host line is no mapping", "# 192.0.2.10 mx.example.org\n", []HostsEntry{a},
			"# 192.0.2.10 mx.example.org\n" + block("\n", lineA), []string{"added 192.0.2.10 out-a.example.com"}, nil},
		{"two bindings, one address, two names: the second is refused", "", []HostsEntry{a, entry("C", "192.0.2.10", "out-c.example.com"), entry("D", "192.0.2.10", "out-a.example.com")},
			block("\n", lineA),
			[]string{"added 192.0.2.10 out-a.example.com", "error 192.0.2.10 out-c.example.com", "present 192.0.2.10 out-a.example.com"},
			[]string{"binding A maps 192.0.2.10 to out-a.example.com", "written for binding A"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := PlanHosts([]byte(c.old), c.entries)
			if err != nil {
				t.Fatal(err)
			}
			if string(p.Content) != c.want {
				t.Errorf("content:\n%q\nwant:\n%q", p.Content, c.want)
			}
			if p.Changed != (c.old != c.want) {
				t.Errorf("Changed = %v", p.Changed)
			}
			var got []string
			for _, r := range p.Results {
				got = append(got, strings.TrimSpace(string(r.Status)+" "+r.Addr.String()+" "+r.Name))
			}
			if strings.Join(got, "\n") != strings.Join(c.status, "\n") {
				t.Errorf("results:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(c.status, "\n"))
			}
			for _, n := range c.notes {
				found := false
				for _, r := range p.Results {
					found = found || strings.Contains(r.Note, n)
				}
				if !found {
					t.Errorf("no result note contains %q: %v", n, p.Results)
				}
			}
			// Idempotent: planning again on the result changes nothing.
			again, err := PlanHosts(p.Content, c.entries)
			if err != nil {
				t.Fatal(err)
			}
			if again.Changed {
				t.Errorf("second run changes the file:\n%q", again.Content)
			}
		})
	}
}

func TestPlanHostsUnpairedMarkers(t *testing.T) {
	cases := []struct{ name, old, want string }{
		{"begin without end", hostBase + HostsBegin + "\n192.0.2.10 a.example\n10.0.0.1 db.internal\n", "line 5: \"# BEGIN vipmilter\" without a \"# END vipmilter\" after it"},
		{"end without begin", hostBase + HostsEnd + "\n", "line 5: \"# END vipmilter\" without a \"# BEGIN vipmilter\" before it"},
		{"nested begin", HostsBegin + "\n" + HostsBegin + "\n" + HostsEnd + "\n", "line 2: \"# BEGIN vipmilter\" again, before the \"# END vipmilter\" of the block opened at line 1"},
	}
	for _, c := range cases {
		_, err := PlanHosts([]byte(c.old), []HostsEntry{entry("A", "192.0.2.10", "a.example")})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want %q", c.name, err, c.want)
		}
	}
}

// TestHostsEntries: only bindings whose EHLO_Hostname is a host name get
// lines, one per address, IPv6 without zone or prefix length.
func TestHostsEntries(t *testing.T) {
	dir := t.TempDir()
	conf := filepath.Join(dir, "v.conf")
	os.WriteFile(conf, []byte(`Binding "Name" { Bind_Address = 192.0.2.10/24  Bind_Address = 2001:db8::10/64  EHLO_Hostname = mta1.Example.com }
Binding "Host" { Bind_Address = 192.0.2.11 }
Binding "Msg" { Bind_Address = 192.0.2.12  EHLO_Hostname = __message__  Match_Domain = m.example }
Binding "Lit" { Bind_Address = 192.0.2.13  EHLO_Hostname = "[192.0.2.13]" }
Binding "Num" { Bind_Address = 192.0.2.14  EHLO_Hostname = 192.0.2.14 }
Binding "Idn" { Bind_Address = 192.0.2.15  EHLO_Hostname = mta.Müller.example }
Binding "Short" { Bind_Address = 192.0.2.16  EHLO_Hostname = mailout }
Binding "default" { EHLO_Hostname = x.example }
`), 0o644)
	cfg, err := config.Load(conf)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range HostsEntries(cfg, sendmail.ResolvedEHLO) {
		got = append(got, e.line())
	}
	want := []string{
		"192.0.2.10 mta1.Example.com # binding Name",
		"2001:db8::10 mta1.Example.com # binding Name",
		"192.0.2.15 mta.xn--mller-kva.example # binding Idn",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("entries:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestUpdateHosts writes a temporary file: replaced atomically with mode
// and owner kept, not written when unchanged, a dry run writes nothing, a
// symbolic link is followed and kept, and a file with another hard link is
// rewritten in place.
func TestUpdateHosts(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "hosts")
	if err := os.WriteFile(path, []byte(hostBase), 0o640); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		if err := os.Chown(path, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	before := testenv.Stat(t, path)
	es := []HostsEntry{entry("A", "192.0.2.10", "out-a.example.com")}

	rep, err := UpdateHosts(path, es, true)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Write != HostsWouldWrite || rep.Results[0].Status != WouldAdd || testenv.ReadFile(t, path) != hostBase {
		t.Errorf("dry run: %s %v; file:\n%s", rep.Write, rep.Results, testenv.ReadFile(t, path))
	}

	rep, err = UpdateHosts(path, es, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Write != HostsReplaced || testenv.ReadFile(t, path) != hostBase+block("\n", es[0].line()) {
		t.Errorf("first run: %s; file:\n%s", rep.Summary(), testenv.ReadFile(t, path))
	}
	after := testenv.Stat(t, path)
	if after.Ino == before.Ino {
		t.Error("not replaced: same inode")
	}
	if after.Mode != before.Mode || after.Uid != before.Uid || after.Gid != before.Gid {
		t.Errorf("mode/owner %o %d:%d, want %o %d:%d", after.Mode, after.Uid, after.Gid, before.Mode, before.Uid, before.Gid)
	}
	if want := "hosts file " + path + ": 1 added, 0 errors; " + HostsReplaced; rep.Summary() != want {
		t.Errorf("summary %q, want %q", rep.Summary(), want)
	}

	rep, err = UpdateHosts(path, es, false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Write != HostsUnchanged || testenv.Stat(t, path).Ino != after.Ino {
		t.Errorf("second run: %s (inode %d, was %d)", rep.Summary(), testenv.Stat(t, path).Ino, after.Ino)
	}
	leftovers, _ := filepath.Glob(filepath.Join(dir, ".hosts.vipmilter-*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	// A symbolic link: the target is written, the link stays a link.
	link := filepath.Join(dir, "hosts.link")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if rep, err = UpdateHosts(link, nil, false); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 || testenv.ReadFile(t, path) != hostBase || rep.Path != path {
		t.Errorf("through a link: %s; link %v %v; file:\n%s", rep.Summary(), fi, err, testenv.ReadFile(t, path))
	}

	// A second hard link: rewritten in place, both names see it.
	other := filepath.Join(dir, "hosts.hard")
	if err := os.Link(path, other); err != nil {
		t.Fatal(err)
	}
	ino := testenv.Stat(t, path).Ino
	if rep, err = UpdateHosts(path, es, false); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(rep.Write, "rewritten in place, not atomically (it has 2 hard links") || testenv.Stat(t, path).Ino != ino || testenv.ReadFile(t, other) != hostBase+block("\n", es[0].line()) {
		t.Errorf("hard link: %s; other:\n%s", rep.Summary(), testenv.ReadFile(t, other))
	}

	// Unpaired markers: an error naming file and line, the file untouched.
	bad := hostBase + HostsBegin + "\n"
	os.WriteFile(other, []byte(bad), 0o640)
	if _, err := UpdateHosts(path, es, false); err == nil || !strings.Contains(err.Error(), path+":5: ") {
		t.Errorf("unpaired marker: err = %v", err)
	}
	if testenv.ReadFile(t, path) != bad {
		t.Error("a file with an unpaired marker was written")
	}
	if _, err := UpdateHosts(filepath.Join(dir, "missing"), es, false); err == nil {
		t.Error("a missing file: no error")
	}
}
