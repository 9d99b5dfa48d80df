package main

import (
	"encoding/json"
	"fmt"
	"runtime/debug"
)

// version is stamped at build time with -ldflags "-X main.version=..." (the
// Makefile stamps "git describe --always --dirty"). When it is empty the
// version comes from the build info (see buildVersion).
var version string

const versionHelp = `Print the version of vipmilter: one line, the same value the milter logs
when it starts. It is the stamp "make" puts in ("git describe"), else the
module version of a "go install ...@VERSION" build, else the git revision
"go build" records in a checkout ("-dirty" when the tree had changes), else
"dev". --json prints one object with the Go version and the libraries too.`

// versionInfo is the JSON form of "vipmilter version --json".
type versionInfo struct {
	Version  string            `json:"version"`
	Go       string            `json:"go,omitempty"`
	Revision string            `json:"revision,omitempty"` // full VCS revision, when recorded
	Time     string            `json:"time,omitempty"`     // commit time (RFC 3339), when recorded
	Modified bool              `json:"modified,omitempty"` // the tree had uncommitted changes
	Deps     map[string]string `json:"deps,omitempty"`     // module path → version
}

func cmdVersion(c *cli, args []string) error {
	fs := c.flags("version")
	asJSON := fs.Bool("json", false, "print one JSON object: version, go, revision, time, modified, deps")
	if err := fs.Parse(args); err != nil {
		return err
	}
	bi, _ := debug.ReadBuildInfo()
	info := readVersion(bi, version)
	if !*asJSON {
		fmt.Fprintln(c.stdout, info.Version)
		return nil
	}
	return json.NewEncoder(c.stdout).Encode(info)
}

// currentVersion is this binary's version, as "vipmilter version" prints it.
func currentVersion() string {
	bi, _ := debug.ReadBuildInfo()
	return readVersion(bi, version).Version
}

// readVersion derives the version from a -X stamp and the build info (nil
// when the binary has none). Precedence: stamp; main module version unless
// it is "(devel)" (go build in a checkout); VCS revision (first 12 hex
// digits, "-dirty" when modified); "dev".
func readVersion(bi *debug.BuildInfo, stamp string) versionInfo {
	var v versionInfo
	if bi != nil {
		v.Go = bi.GoVersion
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Revision = s.Value
			case "vcs.time":
				v.Time = s.Value
			case "vcs.modified":
				v.Modified = s.Value == "true"
			}
		}
		if len(bi.Deps) > 0 {
			v.Deps = map[string]string{}
			for _, d := range bi.Deps {
				v.Deps[d.Path] = d.Version
			}
		}
	}
	switch {
	case stamp != "":
		v.Version = stamp
	case bi != nil && bi.Main.Version != "" && bi.Main.Version != "(devel)":
		v.Version = bi.Main.Version
	case v.Revision != "":
		v.Version = v.Revision
		if len(v.Version) > 12 {
			v.Version = v.Version[:12]
		}
		if v.Modified {
			v.Version += "-dirty"
		}
	default:
		v.Version = "dev"
	}
	return v
}
