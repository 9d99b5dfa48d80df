package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestReadVersion(t *testing.T) {
	const rev = "4f65eb42eb59ed1da2ee9d7fe1656149b456d1b4"
	vcs := func(modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs", Value: "git"}, {Key: "vcs.revision", Value: rev},
			{Key: "vcs.time", Value: "2026-11-30T12:04:09Z"}, {Key: "vcs.modified", Value: modified}}
	}
	for _, tc := range []struct {
		name  string
		bi    *debug.BuildInfo
		stamp string
		want  string
	}{
		{"no build info", nil, "", "dev"},
		{"stamp wins", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}, Settings: vcs("false")}, "v1.2.4-3-gabcdef", "v1.2.4-3-gabcdef"},
		{"go install module@version", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}, "", "v1.2.3"},
		{"go build, pseudo-version from VCS", &debug.BuildInfo{Main: debug.Module{Version: "v0.0.0-20261130120409-4f65eb42eb59+dirty"}, Settings: vcs("true")}, "", "v0.0.0-20261130120409-4f65eb42eb59+dirty"},
		{"go build, devel with revision", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("false")}, "", "4f65eb42eb59"},
		{"go build, devel, modified tree", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("true")}, "", "4f65eb42eb59-dirty"},
		{"devel without VCS", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, "", "dev"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := readVersion(tc.bi, tc.stamp).Version; got != tc.want {
				t.Errorf("version %q, want %q", got, tc.want)
			}
		})
	}
}

// TestVersionOfBuiltBinary builds vipmilter as a user would, in a git
// checkout, and checks what "vipmilter version" prints: the checkout's
// revision for "go build", the stamp for -ldflags -X (what make does).
func TestVersionOfBuiltBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	gobin := filepath.Join(runtime.GOROOT(), "bin", "go")
	git, err := exec.LookPath("git")
	if err != nil {
		t.Fatal("git not found: the version test needs it")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	src := root
	// go build records VCS information only in a directory whose .git is
	// a directory; a git worktree's .git is a file. Build a clone of the
	// worktree's commit then.
	if fi, err := os.Stat(filepath.Join(root, ".git")); err != nil {
		t.Fatalf("%s is not a git checkout: %v", root, err)
	} else if !fi.IsDir() {
		src = filepath.Join(t.TempDir(), "src")
		if out, err := exec.Command(git, "clone", "--quiet", "--shared", root, src).CombinedOutput(); err != nil {
			t.Fatalf("git clone: %v\n%s", err, out)
		}
	}
	head, err := exec.Command(git, "-C", src, "rev-parse", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	rev := strings.TrimSpace(string(head))
	bin := filepath.Join(t.TempDir(), "vipmilter")
	build := func(args ...string) {
		t.Helper()
		cmd := exec.Command(gobin, append(append([]string{"build", "-buildvcs=true", "-o", bin}, args...), "./cmd/vipmilter")...)
		cmd.Dir = src
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %q: %v\n%s", args, err, out)
		}
	}
	version := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, append([]string{"version"}, args...)...).Output()
		if err != nil {
			t.Fatalf("vipmilter version %q: %v", args, err)
		}
		return string(out)
	}

	build()
	line := version()
	if strings.Count(line, "\n") != 1 || !strings.Contains(line, rev[:12]) {
		t.Fatalf("go build in a checkout at %s: version printed %q, want one line with %s", rev, line, rev[:12])
	}
	var info versionInfo
	if err := json.Unmarshal([]byte(version("--json")), &info); err != nil {
		t.Fatal(err)
	}
	if info.Version != strings.TrimSpace(line) || info.Revision != rev || info.Go == "" || info.Deps["github.com/foxcpp/go-sieve"] == "" {
		t.Fatalf("version --json = %+v; want version %q, revision %s, go and deps", info, strings.TrimSpace(line), rev)
	}

	build("-ldflags", "-X main.version=v9.8.7-test")
	if got := version(); got != "v9.8.7-test\n" {
		t.Fatalf("with -X main.version: %q, want the stamp", got)
	}
}
