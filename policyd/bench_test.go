package policyd

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/internal/testenv"
)

// BenchmarkMessage measures one message as Postfix asks about it (one RCPT
// request, one DATA request, over a unix socket) against the DUNNO
// baseline (testenv.AnswerDUNNO); compare the two figures of one run.
func BenchmarkMessage(b *testing.B) {
	rcpt := strings.Join(req("RCPT", "B1", "sender=a@x.test", "recipient=r@d.test", "queue_id="), "\n") + "\n\n"
	data := strings.Join(req("DATA", "B1", "sender=a@x.test", "recipient=r@d.test", "recipient_count=1", "queue_id=4XyZ1"), "\n") + "\n\n"
	msg := []byte(rcpt + data)
	run := func(b *testing.B, serve func(net.Conn)) {
		addr := config.MustParseListen("unix:" + filepath.Join(b.TempDir(), "p.sock"))
		ln, err := net.Listen(addr.Network, addr.Address)
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go serve(c)
			}
		}()
		c, err := net.Dial(addr.Network, addr.Address)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		br := bufio.NewReader(c)
		reply := func() string {
			line, err := br.ReadString('\n')
			if err != nil {
				b.Fatal(err)
			}
			br.ReadString('\n')
			return line
		}
		b.ReportAllocs()
		cpu0 := cpuTime()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			// Postfix sends one request and waits for its answer.
			if _, err := c.Write(msg[:len(rcpt)]); err != nil {
				b.Fatal(err)
			}
			reply()
			if _, err := c.Write(msg[len(rcpt):]); err != nil {
				b.Fatal(err)
			}
			if a := reply(); a == "" {
				b.Fatal("no answer")
			}
		}
		b.StopTimer()
		// Process CPU (client and server; the client is the same for
		// both): the figure the throughput goal depends on, steadier than
		// latency on a shared machine.
		b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/op")
	}
	b.Run("dunno", func(b *testing.B) { run(b, testenv.AnswerDUNNO) })
	b.Run("policyd", func(b *testing.B) {
		s := newServer(b, testScript)
		run(b, s.ServeConn)
	})
}

// cpuTime is the user+system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
