package testenv

import (
	"os"
	"syscall"
	"testing"
)

// ReadFile returns the content of path, failing the test when it cannot
// be read.
func ReadFile(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Stat returns path's inode data (inode number, mode, owner, links),
// failing the test when path cannot be stat'ed.
func Stat(t testing.TB, path string) *syscall.Stat_t {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t)
}
