package main

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/vipmilter/vipmilter/sendmail"
)

const sendmailHelp = `
Render the Sendmail side of the binding file into the Sendmail config
directory: vipmilter.m4 (the milter, the socketmap, the queuegroup and
check_compat rulesets, one queue group per binding) and the text maps it
reads (vipmilter-domains for Match_Domain, vipmilter-suspended for
Suspend_Delivery). Only files that differ are written; a second run prints
"no changes". Map changes take effect at once (Sendmail reads text maps on
every lookup); a changed vipmilter.m4 needs sendmail.cf rebuilt
(Debian: make -C /etc/mail) and Sendmail restarted.
Refuses, naming file and line, when the site's sendmail.mc (or a built
sendmail.cf) already defines something the fragment cannot be combined with.
Prints what the binding file asks for that Sendmail cannot honour.
--dry-run prints what would be written and changes nothing.
See docs/sendmail.md.`

func cmdSendmail(c *cli, args []string) error {
	fs := c.flags("sendmail")
	cfgPath := configFlag(fs)
	dir := fs.String("config-dir", "/etc/mail", "Sendmail config `DIR` (holds sendmail.mc)")
	queue := fs.String("queue-dir", sendmail.DefaultQueueDir, "Sendmail's QueueDirectory `DIR`; queue groups are made below it")
	dry := fs.Bool("dry-run", false, "print what would be written; change nothing")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return &exitError{2, fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		printErrors(c.stderr, err)
		return &exitError{1, errors.New("")}
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	included, err := checkSendmailSite(c, abs)
	if err != nil {
		return &exitError{1, err}
	}
	o := sendmail.Options{ConfigDir: abs, QueueDir: *queue}
	files, err := sendmail.Render(cfg, o)
	if err != nil {
		return &exitError{1, err}
	}
	res, err := sendmail.Apply(files, sendmail.QueueDirs(cfg, o), *dry)
	if err != nil {
		return err
	}
	verb := "wrote"
	if *dry {
		verb = "would write"
	}
	for _, p := range res.Written {
		fmt.Fprintf(c.stdout, "%s %s\n", verb, p)
		if *dry {
			for _, f := range files {
				if f.Path == p {
					fmt.Fprintf(c.stdout, "%s\n", indent(string(f.Data)))
				}
			}
		}
	}
	for _, d := range res.Created {
		if *dry {
			fmt.Fprintf(c.stdout, "would create queue group directory %s\n", d)
		} else {
			fmt.Fprintf(c.stdout, "created queue group directory %s\n", d)
		}
	}
	if len(res.Written) == 0 && len(res.Created) == 0 {
		fmt.Fprintln(c.stdout, "no changes")
	}
	for _, l := range sendmail.Limitations(cfg) {
		fmt.Fprintf(c.stdout, "note: %s\n", l)
	}
	frag := filepath.Join(abs, sendmail.FragmentFile)
	switch {
	case !included:
		fmt.Fprintf(c.stdout, "next: add this line to %s after the MAILER lines, then rebuild sendmail.cf and restart Sendmail:\n  include(`%s')dnl\n", filepath.Join(abs, "sendmail.mc"), frag)
	case containsPath(res.Written, frag):
		fmt.Fprintf(c.stdout, "next: %s changed: rebuild sendmail.cf (Debian: make -C %s) and restart Sendmail\n", frag, abs)
	}
	return nil
}

// checkSendmailSite refuses a sendmail.mc or sendmail.cf in dir that the
// fragment cannot be combined with, and reports whether the .mc includes it.
func checkSendmailSite(c *cli, dir string) (included bool, err error) {
	conflicts, included, mcFound, err := sendmail.CheckDir(dir)
	if err != nil {
		return false, err
	}
	if !mcFound {
		fmt.Fprintf(c.stderr, "warning: %s does not exist; the site's rulesets could not be checked\n", filepath.Join(dir, "sendmail.mc"))
	}
	if len(conflicts) == 0 {
		return included, nil
	}
	for _, cf := range conflicts {
		fmt.Fprintf(c.stderr, "error: %v\n", cf)
	}
	return included, fmt.Errorf("%d construct(s) in the site's Sendmail configuration cannot be combined with vipmilter.m4 (it defines the rulesets %s); nothing written", len(conflicts), strings.Join(sendmail.Rulesets, ", "))
}

func containsPath(list []string, p string) bool {
	for _, x := range list {
		if x == p {
			return true
		}
	}
	return false
}

func indent(s string) string {
	return "    " + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n    ")
}
