package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// Patience bounds how long Eventually waits. It only keeps a broken test
// from hanging; it is not a performance assertion.
const Patience = 30 * time.Second

// Poll calls cond every interval until it reports true, returns an error, or
// ctx ends; the error says what was awaited.
func Poll(ctx context.Context, interval time.Duration, cond func() (bool, error), what string) error {
	for {
		ok, err := cond()
		if err != nil {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		case <-time.After(interval):
		}
	}
}

// Eventually polls cond every 20ms until it holds, and fails the test after
// Patience. explain, if given, adds context to the failure (a log, a
// process's output).
func Eventually(t testing.TB, what string, cond func() bool, explain ...func() string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), Patience)
	defer cancel()
	err := Poll(ctx, 20*time.Millisecond, func() (bool, error) { return cond(), nil }, what)
	if err == nil {
		return
	}
	for _, e := range explain {
		err = fmt.Errorf("%w\n%s", err, e())
	}
	t.Fatal(err)
}
