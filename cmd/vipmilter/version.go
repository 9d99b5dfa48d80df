package main

import (
	"fmt"
	"runtime/debug"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func cmdVersion(c *cli, args []string) error {
	fs := c.flags("version")
	if err := fs.Parse(args); err != nil {
		return err
	}
	fmt.Fprintf(c.stdout, "vipmilter %s\n", version)
	if bi, ok := debug.ReadBuildInfo(); ok {
		fmt.Fprintf(c.stdout, "go %s\n", bi.GoVersion)
		for _, d := range bi.Deps {
			fmt.Fprintf(c.stdout, "%s %s\n", d.Path, d.Version)
		}
	}
	return nil
}
