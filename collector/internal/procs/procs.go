// Package procs keeps the node's process table, fed by the kernel's process
// events, and describes a process (parent, executable, command line, cgroup
// path, container) once per lifetime for the wire.
package procs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/collector/internal/cgroups"
	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/proc"
)

// Info describes a process.
type Info struct {
	PID        uint32
	PPID       uint32
	StartTime  uint64 // clock ticks since boot
	Comm       string
	Executable string
	Cmdline    string
	// Cgroup is the cgroup path that stands for the process: the unified
	// one on v2 and hybrid hosts, else a v1 hierarchy's.
	Cgroup    string
	Container cgroups.Container
}

// Reader reads a process's details from /proc.
type Reader interface {
	Details(pid uint32, startTime uint64, maxCmdline int) (proc.Details, error)
}

// CgroupIndex finds a cgroup v2 path by its id.
type CgroupIndex interface {
	Path(id uint64) (string, bool)
}

// Events is the kernel's stream of process events.
type Events interface {
	ReadEvent() (probe.ProcessEvent, error)
}

// Config sizes a Table.
type Config struct {
	// MaxProcesses caps the entries (flag --max-processes); an event for a
	// new process beyond it is dropped and counted.
	MaxProcesses int
	// MaxCmdline cuts command lines to this many bytes (flag --max-cmdline).
	MaxCmdline int
	// ExitedTTL is how long an exited process stays described, for the
	// sockets it left behind.
	ExitedTTL time.Duration
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{MaxProcesses: 65536, MaxCmdline: 256, ExitedTTL: time.Minute}
}

// Validate reports a bad field, named by its flag.
func (c Config) Validate() error {
	if c.MaxProcesses <= 0 {
		return fmt.Errorf("--max-processes: %d is not positive", c.MaxProcesses)
	}
	if c.MaxCmdline < 0 {
		return fmt.Errorf("--max-cmdline: %d is negative", c.MaxCmdline)
	}
	return nil
}

type key struct {
	pid   uint32
	start uint64
}

type entry struct {
	Info
	// cgroupID is the cgroup v2 id the kernel reported at its fork or
	// exec; 0 if unknown.
	cgroupID uint64
	read     bool      // details read from /proc since the last exec
	exited   time.Time // zero while alive
}

// Table is the process table. It is safe for concurrent use.
type Table struct {
	cfg     Config
	reader  Reader
	cgroups CgroupIndex // nil: none
	now     func() time.Time

	mu     sync.Mutex
	byPID  map[uint32]*entry // the newest process of each pid
	exited []key             // exited processes in exit order, for expiry

	events  *prometheus.CounterVec
	dropped prometheus.Counter
	reads   *prometheus.CounterVec
	size    prometheus.GaugeFunc
}

// New returns an empty table whose metrics are registered with reg.
func New(cfg Config, reader Reader, reg prometheus.Registerer) (*Table, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	t := &Table{cfg: cfg, reader: reader, now: time.Now, byPID: make(map[uint32]*entry)}
	t.events = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_collector_process_events_total",
		Help: "Process events read from the kernel, by kind (fork, exec, exit).",
	}, []string{"kind"})
	t.dropped = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "weir_collector_processes_dropped_total",
		Help: "New processes not tracked because the table was at --max-processes.",
	})
	t.reads = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_collector_process_reads_total",
		Help: "Reads of a process's details from /proc, by result (ok, gone: exited or pid reused).",
	}, []string{"result"})
	t.size = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "weir_collector_processes",
		Help: "Processes in the collector's process table.",
	}, func() float64 {
		t.mu.Lock()
		defer t.mu.Unlock()
		return float64(len(t.byPID))
	})
	for _, c := range []prometheus.Collector{t.events, t.dropped, t.reads, t.size} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register process metrics: %w", err)
		}
	}
	return t, nil
}

// SetCgroupIndex makes the table name the cgroup of a process that exited
// before /proc was read from the cgroup id of its last exec.
func (t *Table) SetCgroupIndex(x CgroupIndex) { t.cgroups = x }

// Len returns the number of processes in the table.
func (t *Table) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.byPID)
}

// Follow applies the events of src until it fails (ErrClosed after Close).
// A process that execs is read from /proc at once: the cgroup it was moved
// to before its exec (as runc moves a container's process into its pod's
// cgroup) is known only from /proc, and a short-lived process is gone by
// the time its sockets are first reported. That is one read of /proc per
// exec, done here rather than on the socket path.
func (t *Table) Follow(ctx context.Context, src Events) error {
	for {
		ev, err := src.ReadEvent()
		if errors.Is(err, probe.ErrClosed) || ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		t.Apply(ev)
		if ev.Kind == probe.ProcessExec {
			t.Describe(ev.PID, ev.StartTime, ev.Comm)
		}
	}
}

// Apply records one process event.
func (t *Table) Apply(ev probe.ProcessEvent) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	t.expire(now)
	switch ev.Kind {
	case probe.ProcessFork:
		t.events.WithLabelValues("fork").Inc()
		if e := t.byPID[ev.PID]; e != nil && e.StartTime == ev.StartTime {
			// Described (read from /proc) before its fork event was
			// read: what was read stands over what it inherits.
			return
		}
		// The tracepoint runs in the parent, whose cgroup the child
		// starts in.
		e := &entry{Info: Info{PID: ev.PID, PPID: ev.PPID, StartTime: ev.StartTime, Comm: ev.Comm}, cgroupID: ev.CgroupID}
		if parent := t.byPID[ev.PPID]; parent != nil && parent.exited.IsZero() {
			// Until it execs, a child runs its parent's program in its
			// parent's cgroup: what it inherits stands if it is gone
			// before /proc is read.
			e.Executable, e.Cmdline, e.Cgroup, e.Container = parent.Executable, parent.Cmdline, parent.Cgroup, parent.Container
		}
		t.put(e)
	case probe.ProcessExec:
		t.events.WithLabelValues("exec").Inc()
		e := t.byPID[ev.PID]
		if e == nil || e.StartTime != ev.StartTime {
			e = &entry{Info: Info{PID: ev.PID, PPID: ev.PPID, StartTime: ev.StartTime}}
			if !t.put(e) {
				return
			}
		}
		e.Comm, e.PPID, e.read = ev.Comm, ev.PPID, false
		if ev.CgroupID != 0 {
			e.cgroupID = ev.CgroupID
		}
	case probe.ProcessExit:
		t.events.WithLabelValues("exit").Inc()
		if e := t.byPID[ev.PID]; e != nil && e.StartTime == ev.StartTime && e.exited.IsZero() {
			e.exited = now
			t.exited = append(t.exited, key{ev.PID, ev.StartTime})
		}
	}
}

// put adds e, replacing an older process of its pid; false if the table is
// full.
func (t *Table) put(e *entry) bool {
	if _, ok := t.byPID[e.PID]; !ok && len(t.byPID) >= t.cfg.MaxProcesses {
		t.dropped.Inc()
		return false
	}
	t.byPID[e.PID] = e
	return true
}

// expire forgets the processes that exited more than ExitedTTL ago.
func (t *Table) expire(now time.Time) {
	n := 0
	for _, k := range t.exited {
		e := t.byPID[k.pid]
		if e == nil || e.StartTime != k.start {
			n++ // replaced by a newer process of the pid
			continue
		}
		if now.Sub(e.exited) < t.cfg.ExitedTTL {
			break
		}
		delete(t.byPID, k.pid)
		n++
	}
	if n > 0 {
		clear(t.exited[:n])
		t.exited = t.exited[n:]
	}
}

// Describe returns what is known of the process pid that started at
// startTime, reading /proc the first time it is asked after the process
// started or exec'd. A process the table never saw (it predates the
// collector) is read from /proc and added. comm is the caller's, used when
// nothing better is known.
func (t *Table) Describe(pid uint32, startTime uint64, comm string) Info {
	t.mu.Lock()
	e := t.byPID[pid]
	if e != nil && (startTime == 0 || e.StartTime == startTime) && e.read {
		info := e.Info
		t.mu.Unlock()
		return info
	}
	var cgroupID uint64
	if e != nil && (startTime == 0 || e.StartTime == startTime) {
		cgroupID = e.cgroupID
	}
	t.mu.Unlock()

	d, err := t.reader.Details(pid, startTime, t.cfg.MaxCmdline)
	var byID cgroups.Container
	var byIDPath string
	if err != nil {
		t.reads.WithLabelValues("gone").Inc()
		// Gone before it was read: the cgroup the kernel saw at its
		// exec may still be there, and name its container or pod.
		if t.cgroups != nil {
			if p, ok := t.cgroups.Path(cgroupID); ok {
				byIDPath, byID = p, cgroups.Parse(p)
			}
		}
	} else {
		t.reads.WithLabelValues("ok").Inc()
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	e = t.byPID[pid]
	if e == nil || (startTime != 0 && e.StartTime != startTime) {
		if err != nil {
			// Exited before the table heard of it, and /proc no longer
			// has it: the caller's comm is all there is.
			return Info{PID: pid, StartTime: startTime, Comm: comm}
		}
		e = &entry{Info: Info{PID: pid, StartTime: startTime, Comm: comm}}
		if !t.put(e) {
			return describe(e.Info, d)
		}
	}
	if e.Comm == "" {
		e.Comm = comm
	}
	if err == nil {
		e.Info = describe(e.Info, d)
		e.read = true
	} else if byIDPath != "" && e.cgroupID == cgroupID {
		// The v2 path is the kernel's; the container inherited from
		// the parent's v1 paths stands unless the v2 path names one.
		e.Cgroup = byIDPath
		if byID != (cgroups.Container{}) {
			e.Container = byID
		}
	}
	return e.Info
}

func describe(info Info, d proc.Details) Info {
	info.PPID = d.PPID
	if d.Executable != "" {
		info.Executable = d.Executable
	}
	info.Cmdline = d.Cmdline
	if len(d.Cgroups) > 0 {
		info.Cgroup = d.Cgroups[0]
	}
	info.Container = cgroups.ParseAll(d.Cgroups)
	return info
}

// CgroupPath returns the cgroup path of the process (see Describe).
func (t *Table) CgroupPath(pid uint32, startTime uint64) (string, error) {
	info := t.Describe(pid, startTime, "")
	if info.Cgroup == "" {
		return "", errors.New("cgroup unknown")
	}
	return info.Cgroup, nil
}
