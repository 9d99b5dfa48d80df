package vip

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// How a hosts file was written (HostsReport.Write).
const (
	HostsUnchanged  = "unchanged"
	HostsReplaced   = "replaced atomically (a new file renamed over it)"
	HostsWouldWrite = "would be written"
	hostsInPlace    = "rewritten in place, not atomically"
)

// HostsReport is one run of UpdateHosts.
type HostsReport struct {
	Path    string // the file read and written (symbolic links resolved)
	Results []HostsResult
	// Write says whether and how the file was written: HostsUnchanged,
	// HostsReplaced, HostsWouldWrite, or "rewritten in place, not
	// atomically (why it could not be replaced)".
	Write string
}

// Failed reports whether some entry could not be written (a conflict).
func (r *HostsReport) Failed() bool {
	return (&HostsPlan{Results: r.Results}).Failed()
}

// Summary is the run in one line, e.g. "hosts file /etc/hosts: 2 added,
// 1 removed, 0 errors; replaced atomically (…)".
func (r *HostsReport) Summary() string {
	counts := map[Status]int{}
	for _, x := range r.Results {
		counts[x.Status]++
	}
	var parts []string
	for _, s := range []Status{Added, WouldAdd, Present, Removed, WouldDrop} {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", counts[s], s))
		}
	}
	parts = append(parts, errorCount(counts[Failed]))
	return fmt.Sprintf("hosts file %s: %s; %s", r.Path, strings.Join(parts, ", "), r.Write)
}

// errHostsChanged: someone wrote the file between our reading and writing
// it; planning again on the new content keeps their change.
var errHostsChanged = errors.New("changed while being updated")

// UpdateHosts keeps vipmilter's block of the hosts file at path (PlanHosts)
// holding entries; with dryRun it only reports ("would add", "would
// remove"). The file must exist. It is written only if its content
// changes, keeping its mode and owner: through a temporary file in its
// directory renamed over it, or, where it cannot be replaced (a file
// bind-mounted over /etc/hosts in a container or by systemd's
// ReadWritePaths, a directory the process may not write, an owner it may
// not give, other hard links), by rewriting it in place; Write says which
// and why. A file edited by someone else meanwhile is read and planned
// again. A file with no name left (bind-mounted here, then replaced
// outside) is an error, not written. Errors name the file; unpaired block
// markers also the line.
func UpdateHosts(path string, entries []HostsEntry, dryRun bool) (*HostsReport, error) {
	target, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("hosts file: %w", err)
	}
	for attempt := 1; ; attempt++ {
		if err := checkLinked(target); err != nil {
			return nil, fmt.Errorf("hosts file %s: %w", target, err)
		}
		old, err := os.ReadFile(target)
		if err != nil {
			return nil, fmt.Errorf("hosts file: %w", err)
		}
		plan, err := PlanHosts(old, entries)
		var he *HostsError
		if errors.As(err, &he) {
			return nil, fmt.Errorf("hosts file %s:%d: %s", target, he.Line, he.Msg)
		}
		if err != nil {
			return nil, fmt.Errorf("hosts file %s: %w", target, err)
		}
		rep := &HostsReport{Path: target, Results: plan.Results, Write: HostsUnchanged}
		switch {
		case !plan.Changed:
			return rep, nil
		case dryRun:
			for i := range rep.Results {
				rep.Results[i].Status = would(rep.Results[i].Status)
			}
			rep.Write = HostsWouldWrite
			return rep, nil
		}
		rep.Write, err = writeHosts(target, old, plan.Content)
		if errors.Is(err, errHostsChanged) && attempt < 3 {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("hosts file %s: %w", target, err)
		}
		return rep, nil
	}
}

// checkLinked refuses a file with no name left: one bind-mounted into this
// mount namespace (systemd ReadWritePaths=, a container's /etc/hosts) and
// then deleted or replaced by rename outside it. Its content is no longer
// what the host resolves with, and writing it would change a file nobody
// reads.
func checkLinked(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink == 0 {
		return errors.New("the file this process sees was deleted or replaced after it was bind-mounted here (e.g. by systemd ReadWritePaths=); restart this process to see the new one")
	}
	return nil
}

// writeHosts replaces the file holding old by one holding data, or
// rewrites it in place when it cannot be replaced; it returns how.
func writeHosts(path string, old, data []byte) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	var why string
	switch {
	case st == nil:
		why = "no owner information"
	case st.Nlink > 1:
		why = fmt.Sprintf("it has %d hard links, which a new file would not keep", st.Nlink)
	default:
		err := replaceHosts(path, fi, st, old, data)
		if err == nil {
			return HostsReplaced, nil
		}
		if errors.Is(err, errHostsChanged) {
			return "", err
		}
		why = err.Error()
	}
	if err := rewriteHosts(path, old, data); err != nil {
		return "", fmt.Errorf("%w (rewriting in place because %s)", err, why)
	}
	return hostsInPlace + " (" + why + ")", nil
}

// replaceHosts writes data to a temporary file beside path, with path's
// mode and owner, and renames it over path.
func replaceHosts(path string, fi fs.FileInfo, st *syscall.Stat_t, old, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".vipmilter-*")
	if err != nil {
		return fmt.Errorf("cannot create a file in %s: %w", dir, cause(err))
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("cannot write %s: %w", f.Name(), cause(err))
	}
	if err := f.Chmod(fi.Mode().Perm()); err != nil {
		return fmt.Errorf("cannot give the new file mode %v: %w", fi.Mode().Perm(), cause(err))
	}
	if err := f.Chown(int(st.Uid), int(st.Gid)); err != nil {
		return fmt.Errorf("cannot give the new file owner %d:%d: %w", st.Uid, st.Gid, cause(err))
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("cannot write %s: %w", f.Name(), cause(err))
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("cannot write %s: %w", f.Name(), cause(err))
	}
	if cur, err := os.ReadFile(path); err != nil || !bytes.Equal(cur, old) {
		return errHostsChanged
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("cannot rename a file over it: %w", cause(err))
	}
	// The rename is durable once the directory is.
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// rewriteHosts overwrites path with data through the same inode. The new
// content is written over the old before the file is cut to length, so a
// reader in between sees the host's lines (before the block) intact.
func rewriteHosts(path string, old, data []byte) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	cur, err := io.ReadAll(f)
	if err != nil {
		return err
	}
	if !bytes.Equal(cur, old) {
		return errHostsChanged
	}
	if _, err := f.WriteAt(data, 0); err != nil {
		return err
	}
	if err := f.Truncate(int64(len(data))); err != nil {
		return err
	}
	return f.Sync()
}

// cause strips the operation and path of a *fs.PathError or
// *os.LinkError, which the message around it already says.
func cause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err
	}
	return err
}
