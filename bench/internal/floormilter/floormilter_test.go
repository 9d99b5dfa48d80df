package floormilter

import (
	"context"
	"errors"
	"os/exec"
	"testing"

	"github.com/vipmilter/vipmilter/internal/testenv"
)

func TestConn(t *testing.T) {
	for _, c := range []struct{ listen, want string }{
		{"unix:/run/vipmilter/floor.sock", "unix:/run/vipmilter/floor.sock"},
		{"inet:127.0.0.1:7201", "inet:7201@127.0.0.1"},
		{"inet6:[::1]:7201", "inet6:7201@::1"},
	} {
		got, err := Conn(c.listen)
		if err != nil || got != c.want {
			t.Errorf("Conn(%q) = %q, %v; want %q", c.listen, got, err, c.want)
		}
	}
	if _, err := Conn("tcp:127.0.0.1:1"); err == nil {
		t.Error("Conn accepted a listen value config refuses")
	}
}

// TestBuild compiles the floor milter and runs it without arguments: it
// must print its usage and exit 2, so the build links against libmilter.
func TestBuild(t *testing.T) {
	testenv.Require(t, testenv.Command("cc", "gcc"))
	bin, err := Build(context.Background(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin).CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 2 {
		t.Fatalf("floor-milter without arguments: %v, %s; want exit 2 with usage", err, out)
	}
}
