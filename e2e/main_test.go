package e2e

import (
	"fmt"
	"os"
	"testing"
	"time"
)

// TestMain doubles as the concurrency sink: the test re-executes its own
// binary inside the sink namespace with VIPE2E_GOSINK set.
func TestMain(m *testing.M) {
	if addr := os.Getenv("VIPE2E_GOSINK"); addr != "" {
		if err := RunConcurrencySink(addr, os.Getenv("VIPE2E_GOSINK_STATS"), 50*time.Millisecond); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}
