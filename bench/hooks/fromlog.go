package main

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// readLog rebuilds the bursts of earlier runs from their log (stderr, slog
// text: the "start" line's n, one "burst" line per burst), so their report
// can be printed again, e.g. with another -max-other. Logs of several runs
// may follow each other: each start line begins new rounds, numbered on
// from the previous run's, and n is that run's. The log rounds CPU to
// 0.01 ms per message and rates to whole messages per second, so figures
// may differ from the run's own report in the last digit.
func readLog(r io.Reader) (bursts []burst, n int, err error) {
	offset, next := 0, 0 // round numbers of this run start at offset; next is one past the last seen
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for line := 1; sc.Scan(); line++ {
		kv := logFields(sc.Text())
		num := func(key string) float64 {
			if err != nil {
				return 0
			}
			var v float64
			v, err = strconv.ParseFloat(strings.TrimSuffix(kv[key], "%"), 64)
			if err != nil {
				err = fmt.Errorf("log line %d: %s=%q: %w", line, key, kv[key], err)
			}
			return v
		}
		switch kv["msg"] {
		case "start":
			n = int(num("n"))
			offset = next
		case "burst":
			if n == 0 {
				return nil, 0, fmt.Errorf("log line %d: a burst before the start line", line)
			}
			b := burst{variant: kv["variant"], round: offset + int(num("round")) - 1, n: n}
			next = max(next, b.round+1)
			b.secs = float64(n) / num("msgs_per_s")
			b.use = usage{postfix: num("postfix_ms_per_msg") * float64(n) / 1000, milter: num("milter_ms_per_msg") * float64(n) / 1000,
				others: num("others_share") / 100, busy: num("busy") / 100}
			bursts = append(bursts, b)
		}
		if err != nil {
			return nil, 0, err
		}
	}
	if err := sc.Err(); err != nil {
		return nil, 0, err
	}
	if len(bursts) == 0 {
		return nil, 0, fmt.Errorf("no burst lines in the log")
	}
	return bursts, n, nil
}

// logFields splits one slog text line into its keys and values (quoted
// values unquoted).
func logFields(line string) map[string]string {
	kv := map[string]string{}
	for line != "" {
		key, rest, ok := strings.Cut(strings.TrimLeft(line, " "), "=")
		if !ok {
			break
		}
		var val string
		if strings.HasPrefix(rest, `"`) {
			q, err := strconv.QuotedPrefix(rest)
			if err != nil {
				break
			}
			val, _ = strconv.Unquote(q)
			rest = rest[len(q):]
		} else {
			val, rest, _ = strings.Cut(rest, " ")
			rest = " " + rest
		}
		kv[key] = val
		line = rest
	}
	return kv
}
