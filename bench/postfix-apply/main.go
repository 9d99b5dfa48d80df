// Command postfix-apply measures "vipmilter postfix" (postfix.ReadState,
// Render and Apply, with its staging, postmap and postfix check) on a
// private Postfix config directory at 10, 100, 1,000 and 3,000 bindings, in
// one run: the first apply, and a re-run that finds nothing to change. It
// reports each size's median over -repeat runs and its ratio to the first
// apply of the smallest size (goal: 3,000 ≤ 3×) and the re-run's ratio to
// its own first apply (goal: ≤ 0.2×). Sizes are interleaved round by round
// so machine noise spreads over all of them.
//
// Run as root from the module root (postfix check needs it):
//
//	go run ./bench/postfix-apply [-sizes 10,100,1000,3000] [-repeat 3]
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vipmilter/vipmilter/config"
	"github.com/vipmilter/vipmilter/postfix"
)

const masterCF = `smtp      inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
error     unix  -       -       n       -       -       error
`

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/postfix-apply:", err)
		os.Exit(1)
	}
}

func run() error {
	sizesFlag := flag.String("sizes", "10,100,1000,3000", "binding counts, comma-separated")
	repeat := flag.Int("repeat", 3, "rounds")
	flag.Parse()
	if os.Geteuid() != 0 {
		return errors.New("run as root (postfix check)")
	}
	var sizes []int
	for _, s := range strings.Split(*sizesFlag, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n < 1 {
			return fmt.Errorf("-sizes: %q", s)
		}
		sizes = append(sizes, n)
	}
	tmp, err := os.MkdirTemp("", "vipmilter-bench-apply-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	os.Chmod(tmp, 0o755)
	key := strings.Repeat("ab", config.HeaderKeyLen/2)
	first, again := map[int][]time.Duration{}, map[int][]time.Duration{}
	for round := range *repeat {
		for _, n := range sizes {
			dir := filepath.Join(tmp, fmt.Sprintf("r%d-n%d", round, n))
			if err := privateDir(dir); err != nil {
				return err
			}
			cfg, err := bindings(n)
			if err != nil {
				return err
			}
			d1, changes, err := apply(dir, cfg, key)
			if err != nil {
				return fmt.Errorf("%d bindings, first apply: %w", n, err)
			}
			if changes == 0 {
				return fmt.Errorf("%d bindings: the first apply changed nothing", n)
			}
			d2, changes, err := apply(dir, cfg, key)
			if err != nil {
				return fmt.Errorf("%d bindings, re-run: %w", n, err)
			}
			if changes != 0 {
				return fmt.Errorf("%d bindings: the re-run changed %d items", n, changes)
			}
			first[n], again[n] = append(first[n], d1), append(again[n], d2)
			os.RemoveAll(dir)
		}
	}
	base := median(first[sizes[0]])
	w := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "bindings\tfirst apply\tvs %d\tre-run\tre-run/first\t\n", sizes[0])
	for _, n := range sizes {
		f, a := median(first[n]), median(again[n])
		fmt.Fprintf(w, "%d\t%v\t%.2f×\t%v\t%.2f×\t\n", n, f.Round(time.Millisecond), float64(f)/float64(base), a.Round(time.Millisecond), float64(a)/float64(f))
	}
	w.Flush()
	fmt.Printf("median of %d interleaved rounds; goals: %d bindings ≤ 3× of %d, re-run ≤ 0.2× of first apply\n", *repeat, sizes[len(sizes)-1], sizes[0])
	return nil
}

// apply is what "vipmilter postfix" does, timed whole.
func apply(dir string, cfg *config.Config, key string) (time.Duration, int, error) {
	ctx := context.Background()
	start := time.Now()
	st, err := postfix.ReadState(ctx, dir)
	if err != nil {
		return 0, 0, err
	}
	opts := st.Options()
	opts.Key = key
	plan, err := postfix.Render(cfg, opts)
	if err != nil {
		return 0, 0, err
	}
	res, err := postfix.Apply(ctx, plan, st, postfix.ApplyOptions{Out: io.Discard, NoReload: true})
	if err != nil {
		return 0, 0, err
	}
	return time.Since(start), len(res.Changes), nil
}

// bindings builds a binding file of n bindings, each with its own address,
// EHLO name and Match_Domain, and loads it as vipmilter does.
func bindings(n int) (*config.Config, error) {
	var b strings.Builder
	b.WriteString("Binding \"default\" { Bind_Address = 10.0.0.1 }\n")
	addr := netip.MustParseAddr("10.1.0.0")
	for i := range n {
		addr = addr.Next()
		fmt.Fprintf(&b, "Binding \"b%d\" {\n  Bind_Address = %s\n  EHLO_Hostname = b%d.example.net\n  Match_Domain = d%d.example.com\n}\n", i, addr, i, i)
	}
	return config.Parse("/etc/vipmilter/bench.conf", []byte(b.String()))
}

func privateDir(dir string) error {
	q := filepath.Join(dir, "queue")
	if err := os.MkdirAll(q, 0o755); err != nil {
		return err
	}
	main := "compatibility_level = 3.6\nqueue_directory = " + q + "\ndata_directory = " + filepath.Join(dir, "data") +
		"\nalias_maps =\nalias_database =\nmydestination =\n"
	if err := os.WriteFile(filepath.Join(dir, "main.cf"), []byte(main), 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "master.cf"), []byte(masterCF), 0o644)
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}
