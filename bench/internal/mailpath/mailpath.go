// Package mailpath sets up the path the system benchmarks (bench/hooks,
// bench/milter-socket) send mail through: a work directory, the e2e
// harness's two network namespaces, smtp-sink on the sink side
// (e2e.SinkAddr4, port 25) and a running private Postfix in the mta
// namespace with the harness's main.cf and master.cf. Close tears all of
// it down. Needs root, iproute2 and Debian's postfix (smtp-sink).
package mailpath

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"

	"github.com/vipmilter/vipmilter/e2e"
	"github.com/vipmilter/vipmilter/internal/testenv"
)

// Path is one benchmark's private mail path.
type Path struct {
	Dir     string // work directory (mode 0755: Postfix's user reaches sockets in it); removed by Close
	Net     *e2e.Network
	Postfix *testenv.Postfix // config directory Dir/postfix, in Net.MTA
	sink    *testenv.Sink
}

// New makes the work directory (os.MkdirTemp pattern) and brings the path
// up; on error it removes what it made. addrs are extra addresses for the
// mta's eth0 (binding addresses).
func New(ctx context.Context, pattern string, addrs ...string) (*Path, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("run as root (network namespaces, private Postfix)")
	}
	dir, err := os.MkdirTemp("", pattern)
	if err != nil {
		return nil, err
	}
	p := &Path{Dir: dir}
	if err := p.setup(ctx, addrs); err != nil {
		return nil, errors.Join(err, p.Close())
	}
	return p, nil
}

func (p *Path) setup(ctx context.Context, addrs []string) error {
	if err := os.Chmod(p.Dir, 0o755); err != nil {
		return err
	}
	var err error
	if p.Net, err = e2e.NewNetwork(ctx); err != nil {
		return err
	}
	if p.sink, err = testenv.StartSink(ctx, p.Net.Sink, net.JoinHostPort(e2e.SinkAddr4, "25"), ""); err != nil {
		return err
	}
	for _, a := range addrs {
		if err := p.Net.AddAddress(ctx, a); err != nil {
			return err
		}
	}
	p.Postfix, err = e2e.NewPostfix(ctx, filepath.Join(p.Dir, "postfix"), p.Net.MTA)
	return err
}

// Close stops Postfix and the sink, removes the namespaces and the work
// directory.
func (p *Path) Close() error {
	var errs []error
	if p.Postfix != nil {
		// Its error is "not running" when the benchmark stopped it.
		p.Postfix.Stop()
	}
	if p.sink != nil {
		p.sink.Stop()
	}
	if p.Net != nil {
		errs = append(errs, p.Net.Close())
	}
	errs = append(errs, os.RemoveAll(p.Dir))
	return errors.Join(errs...)
}
