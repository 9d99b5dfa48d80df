// Command vipmilter gives Postfix per-message source addresses (Momentum's
// MultiVIP): a milter decides a binding for every message, Postfix routes it
// to a per-binding smtp transport, and a netlink provisioner keeps every
// binding address on the host.
//
// Every subcommand is one row of the table below; each declares its own
// flags and help, so "vipmilter help" cannot drift from the code.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/vipmilter/vipmilter/config"
)

// command is one subcommand: its name, a one-line synopsis of its
// arguments, a help text, and the function that runs it. run receives the
// arguments after the command name and writes to stdout/stderr.
type command struct {
	name string
	args string
	help string
	run  func(c *cli, args []string) error
}

var commands []command

func init() {
	// Assigned in init so that command functions can refer to the table
	// (help) without an initialisation cycle.
	commands = []command{
		{"serve", "[-c FILE]", serveHelp, cmdServe},
		{"check", "[-c FILE] [--routes [--probe ADDR[,ADDR]]]", checkHelp, cmdCheck},
		{"test", "[-c FILE] --from A --to B [--to C] [--auth U] [--remote-ip IP] [--helo H] [--json] [MESSAGE|-]", testHelp, cmdTest},
		{"postfix", "[-c FILE] [--config-dir DIR] [--dry-run]", postfixHelp, cmdPostfix},
		{"sendmail", "[-c FILE] [--config-dir DIR] [--queue-dir DIR] [--dry-run]", sendmailHelp, cmdSendmail},
		{"provision", "[-c FILE] [--dry-run] [--prune] [--watch] [--state-dir DIR]", provisionHelp, cmdProvision},
		{"version", "", "Print the version of vipmilter and of the libraries it was built with.", cmdVersion},
		{"help", "[COMMAND]", "Print help for all commands or for one.", cmdHelp},
	}
}

// cli carries the process's streams so commands can be run from tests.
type cli struct {
	stdin          io.Reader
	stdout, stderr io.Writer
}

// exitError lets a command choose its exit status (check: 1 on config
// errors; serve: 2 on config errors so systemd does not restart in a loop).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func main() {
	c := &cli{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr}
	os.Exit(c.main(os.Args[1:]))
}

func (c *cli) main(args []string) int {
	if len(args) == 0 {
		c.usage(c.stderr)
		return 2
	}
	name := args[0]
	if name == "-h" || name == "--help" || name == "-help" {
		name = "help"
	}
	for _, cmd := range commands {
		if cmd.name != name {
			continue
		}
		err := cmd.run(c, args[1:])
		if err == nil {
			return 0
		}
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		var ee *exitError
		if errors.As(err, &ee) {
			if ee.err != nil && ee.err.Error() != "" {
				fmt.Fprintf(c.stderr, "vipmilter %s: %v\n", name, ee.err)
			}
			return ee.code
		}
		fmt.Fprintf(c.stderr, "vipmilter %s: %v\n", name, err)
		return 1
	}
	fmt.Fprintf(c.stderr, "vipmilter: unknown command %q\n\n", name)
	c.usage(c.stderr)
	return 2
}

func (c *cli) usage(w io.Writer) {
	fmt.Fprintln(w, "usage: vipmilter COMMAND [FLAGS]")
	fmt.Fprintln(w, "\ncommands:")
	for _, cmd := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", cmd.name, cmd.args)
	}
	fmt.Fprintln(w, "\nRun \"vipmilter help COMMAND\" for the help of one command.")
}

func cmdHelp(c *cli, args []string) error {
	if len(args) == 0 {
		c.usage(c.stdout)
		return nil
	}
	for _, cmd := range commands {
		if cmd.name == args[0] {
			fmt.Fprintf(c.stdout, "usage: vipmilter %s %s\n\n%s\n\nRun \"vipmilter %s -h\" for its flags.\n", cmd.name, cmd.args, strings.TrimSpace(cmd.help), cmd.name)
			return nil
		}
	}
	return fmt.Errorf("unknown command %q", args[0])
}

// flags returns a FlagSet for a command that prints the command's help on
// -h, and reports errors on the cli's stderr.
func (c *cli) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("vipmilter "+name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	for _, cmd := range commands {
		if cmd.name == name {
			fs.Usage = func() {
				fmt.Fprintf(c.stderr, "usage: vipmilter %s %s\n\n%s\n\nflags:\n", cmd.name, cmd.args, strings.TrimSpace(cmd.help))
				fs.PrintDefaults()
			}
		}
	}
	return fs
}

// configFlag adds -c (and --config) to fs. The default is $VIPMILTER_CONFIG,
// else config.DefaultPath.
func configFlag(fs *flag.FlagSet) *string {
	def := os.Getenv("VIPMILTER_CONFIG")
	if def == "" {
		def = config.DefaultPath
	}
	p := fs.String("c", def, "binding `FILE` (default $VIPMILTER_CONFIG, else "+config.DefaultPath+")")
	fs.StringVar(p, "config", def, "same as -c")
	return p
}
