package main

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unicode/utf8"
)

// TestCommandHelp: every command answers -h and "help NAME" with exit 0
// and a usage generated from its flag set: every flag it declares is
// listed, including the ones the hand-written usage had lost.
func TestCommandHelp(t *testing.T) {
	must := map[string][]string{
		"serve":     {"-c, --config FILE", "--log-level LEVEL", "--log-format FORMAT", "--shutdown-timeout"},
		"check":     {"--routes", "--probe ADDR[,ADDR]"},
		"test":      {"--from ADDR", "--to ADDR", "--remote-host HOST", "--daemon NAME", "--queue-id ID", "[MESSAGE|-]"},
		"postfix":   {"--config-dir DIR", "--dry-run", "--no-reload", "--allow-local-domains"},
		"provision": {"--watch", "--prune", "--state-dir DIR", "--log-format FORMAT"},
		"version":   {"--json"},
		"help":      {"[COMMAND|all]"},
	}
	for _, cmd := range commands {
		t.Run(cmd.name, func(t *testing.T) {
			fs, err := describe(&cmd)
			if err != nil {
				t.Fatal(err)
			}
			for _, args := range [][]string{{cmd.name, "-h"}, {cmd.name, "--help"}, {"help", cmd.name}} {
				code, out, errOut := run(args...)
				if code != 0 {
					t.Fatalf("%q: exit %d, stderr %s", args, code, errOut)
				}
				if !strings.HasPrefix(out, "usage: vipmilter "+cmd.name) {
					t.Fatalf("%q: output does not start with the synopsis:\n%s", args, out)
				}
				n := 0
				fs.VisitAll(func(f *flagVar) {
					n++
					if !strings.Contains(out, dashes(f.Name)) {
						t.Errorf("%q: flag %s not in the help:\n%s", args, dashes(f.Name), out)
					}
				})
				for _, w := range must[cmd.name] {
					if !strings.Contains(out, w) {
						t.Errorf("%q: help lacks %q:\n%s", args, w, out)
					}
				}
				if n == 0 && cmd.name != "help" {
					t.Errorf("%s declares no flags", cmd.name)
				}
			}
		})
	}
	if code, out, _ := run("help"); code != 0 || !strings.Contains(out, "provision  put binding addresses") {
		t.Fatalf("help: exit %d:\n%s", code, out)
	}
	if code, _, errOut := run("help", "nosuch"); code != 2 || !strings.Contains(errOut, `unknown command "nosuch"`) {
		t.Fatalf("help nosuch: exit %d, %s", code, errOut)
	}
}

// TestInterspersedFlags: for every command that takes arguments, flags
// after them are flags and "--" ends the flags; a command that takes none
// refuses one (exit 2); an unknown flag is a usage error.
func TestInterspersedFlags(t *testing.T) {
	for _, cmd := range commands {
		t.Run(cmd.name, func(t *testing.T) {
			if cmd.params == "" {
				fs, _ := describe(&cmd)
				fs.c.describing = false
				err := fs.Parse([]string{"extra"})
				var ee *exitError
				if !errors.As(err, &ee) || ee.code != 2 || !strings.Contains(err.Error(), `unexpected arguments ["extra"]`) {
					t.Errorf("positional argument: %v, want a usage error", err)
				}
			} else {
				for _, tc := range []struct{ args, pos []string }{
					{[]string{"a", "b"}, []string{"a", "b"}},
					{[]string{"a", "--", "-h", "b"}, []string{"a", "-h", "b"}},
					{[]string{"-", "b"}, []string{"-", "b"}},
				} {
					fs := parseWith(t, &cmd, tc.args)
					if got := fs.Args(); strings.Join(got, "|") != strings.Join(tc.pos, "|") {
						t.Errorf("%q: positional %q, want %q", tc.args, got, tc.pos)
					}
				}
			}
			// Every flag that takes a value, between positional arguments
			// when the command takes them.
			fs, _ := describe(&cmd)
			fs.VisitAll(func(f *flagVar) {
				if isBool(f) {
					return
				}
				var val string
				switch {
				case strings.Contains(f.Usage, "LEVEL"):
					val = "debug"
				case strings.Contains(f.Usage, "FORMAT"):
					val = "json"
				case f.DefValue == "10s":
					val = "3s"
				case strings.Contains(f.Usage, "SERVICE/TYPE=NAME"):
					val = "submission/inet=submission"
				default:
					val = "x" + f.DefValue
				}
				args, pos := []string{"--" + f.Name, val}, []string(nil)
				if cmd.params != "" {
					args, pos = append(append([]string{"pos"}, args...), "last"), []string{"pos", "last"}
				}
				got := parseWith(t, &cmd, args)
				if v := got.Lookup(f.Name).Value.String(); v != val {
					t.Errorf("%q: --%s = %q, want %q", args, f.Name, v, val)
				}
				if a := got.Args(); strings.Join(a, "|") != strings.Join(pos, "|") {
					t.Errorf("%q: positional %q, want %q", args, a, pos)
				}
			})
			if code, _, errOut := run(cmd.name, "--no-such-flag"); code != 2 || !strings.Contains(errOut, "usage: vipmilter "+cmd.name) {
				t.Errorf("unknown flag: exit %d, stderr %s", code, errOut)
			}
		})
	}
}

// parseWith parses args with a fresh copy of cmd's flag set.
func parseWith(t *testing.T, cmd *command, args []string) *flagSet {
	t.Helper()
	fs, err := describe(cmd)
	if err != nil {
		t.Fatal(err)
	}
	fs.c.describing = false
	if err := fs.Parse(args); err != nil {
		t.Fatalf("%q: %v", args, err)
	}
	return fs
}

// TestTestFlagsAfterMessage: the case the issue reported.
func TestTestFlagsAfterMessage(t *testing.T) {
	needLoad(t)
	msg := filepath.Join(t.TempDir(), "m.eml")
	if err := os.WriteFile(msg, []byte("From: a@example.com\r\nList-Id: <news.example.org>\r\n\r\nbody\r\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := "../../examples/vipmilter.conf"
	code1, first, e1 := run("test", "-c", conf, "--from", "a@example.com", "--to", "b@example.org", msg)
	code2, after, e2 := run("test", msg, "--from", "a@example.com", "-c", conf, "--to", "b@example.org")
	if code1 != 0 || code2 != 0 {
		t.Fatalf("exit %d/%d: %s %s", code1, code2, e1, e2)
	}
	if first != after || !strings.Contains(after, "binding: Newsletters") {
		t.Fatalf("flags first:\n%s\nflags after the message:\n%s", first, after)
	}
}

// TestMissingConfig: without a binding file the error says how to point
// at one.
func TestMissingConfig(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "vipmilter.conf")
	t.Setenv("VIPMILTER_CONFIG", missing)
	for _, args := range [][]string{{"check"}, {"test", "--to", "a@b.example"}, {"postfix", "--config-dir", t.TempDir()}, {"provision", "--dry-run"}} {
		code, out, errOut := run(args...)
		if code == 0 {
			t.Errorf("%q: exit 0:\n%s", args, out)
		}
		if !strings.Contains(errOut, missing) || !strings.Contains(errOut, "-c FILE or VIPMILTER_CONFIG") {
			t.Errorf("%q: stderr does not name the file and how to point at one:\n%s", args, errOut)
		}
	}
}

// TestCommandsReference keeps docs/commands.md generated from the flag
// sets.
func TestCommandsReference(t *testing.T) {
	code, out, errOut := run("help", "all")
	if code != 0 {
		t.Fatalf("help all: exit %d: %s", code, errOut)
	}
	for _, cmd := range commands {
		if !strings.Contains(out, "## vipmilter "+cmd.name+"\n") {
			t.Errorf("help all lacks %s", cmd.name)
		}
	}
	doc, err := os.ReadFile("../../docs/commands.md")
	if err != nil {
		t.Fatal(err)
	}
	if string(doc) != out {
		t.Fatal("docs/commands.md is stale: run go generate ./cmd/vipmilter")
	}
}

type flagVar = flag.Flag

func isBool(f *flag.Flag) bool {
	b, ok := f.Value.(interface{ IsBoolFlag() bool })
	return ok && b.IsBoolFlag()
}

// TestHelpWrapped keeps every command's help text readable in an 80-column
// terminal, as docs/commands.md is generated from it.
func TestHelpWrapped(t *testing.T) {
	for _, c := range commands {
		for i, line := range strings.Split(c.help, "\n") {
			if n := utf8.RuneCountInString(line); n > 80 {
				t.Errorf("vipmilter help %s, line %d: %d columns (wrap at 80): %q", c.name, i+1, n, line)
			}
		}
	}
}
