package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ticks are USER_HZ clock ticks (1/100 s on Linux), the unit of both
// /proc/stat and /proc/<pid>/stat.
type ticks int64

const tickSeconds = 0.01

// procCPU is one process's CPU from /proc/<pid>/stat: its own user and
// system time and that of the children it has reaped (cutime, cstime;
// proc(5)). A Postfix daemon that exits during a burst moves its time into
// master's cutime/cstime, so summing the whole tree at both ends of a
// burst counts every process that ran, however short-lived.
type procCPU struct {
	ppid int
	own  ticks // utime + stime
	kids ticks // cutime + cstime
	ns   uint64
}

// processes reads every process's CPU and network namespace inode.
func processes() map[int]procCPU {
	ents, _ := os.ReadDir("/proc")
	ps := make(map[int]procCPU, len(ents))
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		p, err := readProc(pid)
		if err != nil {
			continue // exited meanwhile
		}
		ps[pid] = p
	}
	return ps
}

func readProc(pid int) (procCPU, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procCPU{}, err
	}
	// comm may hold spaces and parentheses: fields start after the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procCPU{}, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 15 {
		return procCPU{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	// After comm: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
	n := func(field int) ticks { v, _ := strconv.ParseInt(f[field-3], 10, 64); return ticks(v) }
	p := procCPU{ppid: int(n(4)), own: n(14) + n(15), kids: n(16) + n(17)}
	var st syscall.Stat_t
	if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil {
		p.ns = st.Ino
	}
	return p, nil
}

// nsInode is the inode of a named network namespace (/var/run/netns/NAME),
// which /proc/<pid>/ns/net of its processes shares.
func nsInode(name string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join("/var/run/netns", name), &st); err != nil {
		return 0, fmt.Errorf("namespace %s: %w", name, err)
	}
	return st.Ino, nil
}

// machine is the machine-wide CPU from the first line of /proc/stat.
type machine struct {
	tasks ticks // user + nice + system: time processes ran
	total ticks // every column: the machine's capacity over the interval
}

func readMachine() (machine, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return machine{}, err
	}
	line, _, _ := bytes.Cut(b, []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) < 8 || f[0] != "cpu" {
		return machine{}, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	var m machine
	for i, s := range f[1:] {
		v, _ := strconv.ParseInt(s, 10, 64)
		if i >= 8 { // guest time is already counted in user
			break
		}
		m.total += ticks(v)
		if i <= 2 {
			m.tasks += ticks(v)
		}
	}
	return m, nil
}

// snapshot is the CPU of everything a burst involves at one instant.
type snapshot struct {
	machine machine
	postfix ticks // master and every descendant, reaped ones included
	milter  ticks // the milter process (all its threads, reaped children)
	ours    ticks // processes in the benchmark's namespaces, and this program with what it reaped
}

// probe names the processes a snapshot attributes.
type probe struct {
	masterPID int      // Postfix master
	milterPID int      // 0: no milter
	ns        []uint64 // the benchmark's namespaces
}

func (pr probe) take() (snapshot, error) {
	m, err := readMachine()
	if err != nil {
		return snapshot{}, err
	}
	ps := processes()
	s := snapshot{machine: m}
	inTree := func(pid int) bool {
		for seen := 0; pid > 1 && seen < 64; seen++ {
			if pid == pr.masterPID {
				return true
			}
			pid = ps[pid].ppid
		}
		return false
	}
	self := os.Getpid()
	for pid, p := range ps {
		all := p.own + p.kids
		if pid == pr.masterPID || inTree(p.ppid) {
			s.postfix += all
		}
		if pid == pr.milterPID {
			s.milter += all
		}
		ours := pid == self
		for _, ino := range pr.ns {
			ours = ours || p.ns == ino
		}
		if ours {
			s.ours += all
		}
	}
	return s, nil
}

// usage is the CPU spent between two snapshots, in seconds, and the share
// of the machine's capacity that processes outside the benchmark used.
type usage struct {
	postfix, milter float64
	others          float64 // share of all CPUs' time, 0–1
	busy            float64 // share of all CPUs' time any process used
}

func since(a, b snapshot) usage {
	total := float64(b.machine.total - a.machine.total)
	if total <= 0 {
		total = 1
	}
	tasks := float64(b.machine.tasks - a.machine.tasks)
	ours := float64(b.ours - a.ours)
	others := max(0, tasks-ours) / total
	return usage{
		postfix: float64(b.postfix-a.postfix) * tickSeconds,
		milter:  float64(b.milter-a.milter) * tickSeconds,
		others:  others,
		busy:    tasks / total,
	}
}
