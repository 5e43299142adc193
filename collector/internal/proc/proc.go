// Package proc reads what the collector needs from a /proc tree: process
// start times, cgroup paths and the owners of socket inodes.
package proc

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/prometheus/procfs"

	"github.com/weir-project/weir/collector/internal/probe"
)

// FS is a /proc tree: the host's /proc, or a copy of it mounted elsewhere
// (for a collector in a pod, e.g. /host/proc).
type FS struct {
	fs procfs.FS
}

// New returns the /proc tree mounted at root.
func New(root string) (*FS, error) {
	fs, err := procfs.NewFS(root)
	if err != nil {
		return nil, fmt.Errorf("proc root %s: %w", root, err)
	}
	return &FS{fs: fs}, nil
}

// Process returns the identity of process pid: its pid, start time (clock
// ticks since boot, field 22 of /proc/PID/stat) and comm.
func (f *FS) Process(pid uint32) (probe.Owner, error) {
	p, err := f.fs.Proc(int(pid))
	if err != nil {
		return probe.Owner{}, err
	}
	st, err := p.Stat()
	if err != nil {
		return probe.Owner{}, err
	}
	return probe.Owner{PID: pid, StartTime: st.Starttime, Comm: st.Comm}, nil
}

// SocketOwners maps the inode of every socket open in a process to that
// process. A socket shared by several processes goes to the lowest pid.
// Processes that exit during the scan or cannot be read are skipped; the
// error is only for a /proc tree that cannot be listed at all.
func (f *FS) SocketOwners() (map[uint64]probe.Owner, error) {
	procs, err := f.fs.AllProcs()
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	owners := make(map[uint64]probe.Owner)
	for _, p := range procs { // in ascending pid order
		targets, err := p.FileDescriptorTargets()
		if err != nil {
			continue
		}
		var owner probe.Owner
		for _, t := range targets {
			inode, ok := socketInode(t)
			if !ok {
				continue
			}
			if _, seen := owners[inode]; seen {
				continue
			}
			if owner.PID == 0 {
				st, err := p.Stat()
				if err != nil {
					break // exited
				}
				owner = probe.Owner{PID: uint32(p.PID), StartTime: st.Starttime, Comm: st.Comm}
			}
			owners[inode] = owner
		}
	}
	return owners, nil
}

// socketInode parses a file descriptor target of the form "socket:[12345]".
func socketInode(target string) (uint64, bool) {
	s, ok := strings.CutPrefix(target, "socket:[")
	if !ok {
		return 0, false
	}
	s, ok = strings.CutSuffix(s, "]")
	if !ok {
		return 0, false
	}
	inode, err := strconv.ParseUint(s, 10, 64)
	return inode, err == nil
}

// ErrReused is returned by CgroupPath when the pid now belongs to another
// process than the one that started at the given time.
var ErrReused = errors.New("pid reused")

// CgroupPath returns the cgroup path of process pid, provided it is still
// the process that started at startTime (0: not checked). It prefers the
// cgroup v2 path (the "0::" line, present on v2 and hybrid hosts) and falls
// back to a v1 hierarchy on v1-only hosts: name=systemd, else memory, else
// cpu, else the first one listed.
func (f *FS) CgroupPath(pid uint32, startTime uint64) (string, error) {
	p, err := f.fs.Proc(int(pid))
	if err != nil {
		return "", err
	}
	cgroups, err := p.Cgroups()
	if err != nil {
		return "", err
	}
	if startTime != 0 {
		// Checked after reading the cgroups: if the pid was reused before
		// that read, the start time differs now.
		st, err := p.Stat()
		if err != nil {
			return "", err
		}
		if st.Starttime != startTime {
			return "", ErrReused
		}
	}
	path, ok := pickCgroup(cgroups)
	if !ok {
		return "", errors.New("no cgroup listed")
	}
	return path, nil
}

// v1Preference ranks the v1 hierarchies whose path stands for the process's
// cgroup when there is no unified hierarchy.
var v1Preference = []string{"name=systemd", "memory", "cpu"}

func pickCgroup(cgroups []procfs.Cgroup) (string, bool) {
	for _, c := range cgroups {
		if c.HierarchyID == 0 && len(c.Controllers) == 0 {
			return c.Path, true
		}
	}
	for _, want := range v1Preference {
		for _, c := range cgroups {
			for _, ctl := range c.Controllers {
				if ctl == want {
					return c.Path, true
				}
			}
		}
	}
	if len(cgroups) > 0 {
		return cgroups[0].Path, true
	}
	return "", false
}

// Details are what the process table wants of a process besides its
// identity.
type Details struct {
	PPID       uint32
	Executable string // empty when the link cannot be read (a kernel thread, or no permission)
	// Cmdline is the command line, arguments joined by spaces, cut to the
	// length asked for.
	Cmdline string
	// Cgroups are the process's cgroup paths, the unified one first, then
	// the v1 hierarchies in the order listed.
	Cgroups []string
}

// Details reads pid's parent, executable, command line and cgroup paths,
// provided it is still the process that started at startTime (0: not
// checked). The command line is cut to maxCmdline bytes.
func (f *FS) Details(pid uint32, startTime uint64, maxCmdline int) (Details, error) {
	p, err := f.fs.Proc(int(pid))
	if err != nil {
		return Details{}, err
	}
	var d Details
	cgroups, err := p.Cgroups()
	if err != nil {
		return Details{}, err
	}
	for _, c := range cgroups {
		if c.HierarchyID == 0 && len(c.Controllers) == 0 {
			d.Cgroups = append(d.Cgroups, c.Path)
		}
	}
	for _, c := range cgroups {
		if c.HierarchyID != 0 || len(c.Controllers) != 0 {
			d.Cgroups = append(d.Cgroups, c.Path)
		}
	}
	d.Executable, _ = p.Executable()
	if args, err := p.CmdLine(); err == nil {
		d.Cmdline = truncate(strings.Join(args, " "), maxCmdline)
	}
	// Checked last: if the pid was reused before the reads above, the
	// start time differs now.
	st, err := p.Stat()
	if err != nil {
		return Details{}, err
	}
	if startTime != 0 && st.Starttime != startTime {
		return Details{}, ErrReused
	}
	d.PPID = uint32(st.PPID)
	return d, nil
}

// truncate cuts s to at most n bytes, on a rune boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
