package config

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// HeaderKeyLen is the length of a binding header key in hex digits.
const HeaderKeyLen = 32

// ReadHeaderKey reads the binding header key (Binding_Header_Key): one line
// of HeaderKeyLen lower-case hex digits. The key is what makes a binding
// header trustworthy: the milter writes it, the MTA's tables require it, and
// a client cannot know it.
func ReadHeaderKey(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("binding header key: %w", err)
	}
	k := strings.TrimSpace(string(b))
	if !validHeaderKey(k) {
		return "", fmt.Errorf("binding header key %s: want one line of %d lower-case hex digits", path, HeaderKeyLen)
	}
	return k, nil
}

// EnsureHeaderKey returns the key at path, creating the file (mode 0640,
// parent directories 0755) with a fresh random key when it does not exist.
// gid, when ≥ 0, is given group ownership so that the unprivileged milter
// can read it.
func EnsureHeaderKey(path string, gid int) (string, error) {
	k, err := ReadHeaderKey(path)
	if err == nil || !errors.Is(err, fs.ErrNotExist) {
		return k, err
	}
	var b [HeaderKeyLen / 2]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("binding header key: %w", err)
	}
	k = hex.EncodeToString(b[:])
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", fmt.Errorf("binding header key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		if errors.Is(err, fs.ErrExist) { // another process made it first
			return ReadHeaderKey(path)
		}
		return "", fmt.Errorf("binding header key: %w", err)
	}
	if _, err := f.WriteString(k + "\n"); err != nil {
		f.Close()
		os.Remove(path)
		return "", fmt.Errorf("binding header key %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		os.Remove(path)
		return "", fmt.Errorf("binding header key %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			return "", fmt.Errorf("binding header key %s: %w", path, err)
		}
	}
	return k, nil
}

func validHeaderKey(k string) bool {
	if len(k) != HeaderKeyLen {
		return false
	}
	for i := 0; i < len(k); i++ {
		if c := k[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}
