package vip

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
)

// stateFile records the addresses vipmilter added. --prune removes only
// these: an address someone else configured is never vipmilter's to remove,
// even if it matches a binding that was deleted. IPv4 labels ("eth0:vip")
// mark ownership in "ip addr" output too, but the kernel has no label for
// IPv6, so the file is the record.
const stateFile = "provisioned.json"

type owned struct {
	Prefix    netip.Prefix `json:"address"`
	Interface string       `json:"interface"`
}

type state struct {
	Added []owned `json:"added"`
}

func loadState(dir string) (*state, error) {
	st := &state{}
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if errors.Is(err, os.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("state file: %w", err)
	}
	if err := json.Unmarshal(b, st); err != nil {
		return nil, fmt.Errorf("state file %s: %w", filepath.Join(dir, stateFile), err)
	}
	return st, nil
}

func (s *state) add(p netip.Prefix, iface string) {
	o := owned{p, iface}
	if !slices.Contains(s.Added, o) {
		s.Added = append(s.Added, o)
	}
}

func (s *state) remove(p netip.Prefix, iface string) {
	s.Added = slices.DeleteFunc(s.Added, func(o owned) bool { return o.Prefix.Addr() == p.Addr() && o.Interface == iface })
}

// save writes the file atomically: a crash mid-write must not forget which
// addresses are ours.
func (s *state) save(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, stateFile+".*")
	if err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	defer os.Remove(tmp.Name())
	// Not secret, and administrators read it to see what --prune may touch.
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return fmt.Errorf("state file: %w", err)
	}
	if _, err := tmp.Write(append(b, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("state file: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("state file: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, stateFile)); err != nil {
		return fmt.Errorf("state file: %w", err)
	}
	return nil
}
