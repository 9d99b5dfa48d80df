package sendmail

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
)

// Result is what Apply did, or would do with DryRun.
type Result struct {
	Written   []string // files whose contents changed
	Unchanged []string // files already as rendered
	Created   []string // queue group directories created
}

// Apply creates the missing queue group directories, with the owner, group
// and mode of their parent (Sendmail's QueueDirectory), and then writes the
// files that differ from what is on disk, each atomically with mode 0644;
// a missing QueueDirectory thus stops it before any file changes. With
// dryRun it only reports. Running it twice changes nothing the second time.
func Apply(files []File, queueDirs []string, dryRun bool) (*Result, error) {
	res := &Result{}
	for _, d := range queueDirs {
		if _, err := os.Stat(d); err == nil {
			continue
		}
		res.Created = append(res.Created, d)
		if dryRun {
			continue
		}
		if err := mkdirLike(d); err != nil {
			return res, err
		}
	}
	for _, f := range files {
		old, err := os.ReadFile(f.Path)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return res, fmt.Errorf("read %s: %w", f.Path, err)
		}
		if err == nil && bytes.Equal(old, f.Data) {
			res.Unchanged = append(res.Unchanged, f.Path)
			continue
		}
		res.Written = append(res.Written, f.Path)
		if dryRun {
			continue
		}
		if err := replaceFile(f.Path, f.Data); err != nil {
			return res, err
		}
	}
	return res, nil
}

// replaceFile writes data to a temporary file beside path and renames it
// over path, so Sendmail never reads a half-written map.
func replaceFile(path string, data []byte) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	name := f.Name()
	if _, err = f.Write(data); err == nil {
		err = f.Chmod(0o644)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(name, path)
	}
	if err != nil {
		os.Remove(name)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// mkdirLike creates dir with its parent's mode and ownership: Sendmail
// checks queue directories as it checks its QueueDirectory.
func mkdirLike(dir string) error {
	parent, err := os.Stat(filepath.Dir(dir))
	if err != nil {
		return fmt.Errorf("queue group directory %s: %w", dir, err)
	}
	if err := os.Mkdir(dir, parent.Mode().Perm()); err != nil {
		return fmt.Errorf("queue group directory %s: %w", dir, err)
	}
	if err := os.Chmod(dir, parent.Mode()&(fs.ModePerm|fs.ModeSetgid)); err != nil {
		return fmt.Errorf("queue group directory %s: %w", dir, err)
	}
	if st, ok := parent.Sys().(*syscall.Stat_t); ok {
		if err := os.Chown(dir, int(st.Uid), int(st.Gid)); err != nil {
			return fmt.Errorf("queue group directory %s: %w", dir, err)
		}
	}
	return nil
}
