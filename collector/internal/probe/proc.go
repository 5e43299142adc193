package probe

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
)

//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -go-package probe -target amd64,arm64 -type proc_event proc ../../../bpf/proc.c -- -I../../../bpf/headers -mcpu=v3 -Wall -Werror

// ProcessKind is the kind of a process event.
type ProcessKind uint8

// Kinds of process events; the values match enum proc_kind in bpf/proc.c.
const (
	// ProcessFork: a new process (not a thread); PPID is its parent.
	ProcessFork ProcessKind = 1
	// ProcessExec: the process loaded a new program; Comm is the new one.
	ProcessExec ProcessKind = 2
	// ProcessExit: the last thread of the process exited.
	ProcessExit ProcessKind = 3
)

// ProcessEvent is one record of the process ring.
type ProcessEvent struct {
	Kind      ProcessKind
	PID       uint32 // tgid, root pid namespace
	PPID      uint32 // 0 for an exit
	StartTime uint64 // clock ticks since boot, as /proc/PID/stat field 22
	CgroupID  uint64 // cgroup v2 id of the task that ran the tracepoint (the parent for a fork)
	Comm      string
}

// ProcessConfig sizes the process ring.
type ProcessConfig struct {
	// RingBytes is the ring size, a power of two and a multiple of the page
	// size (flag --process-ring-bytes).
	RingBytes uint32
}

// Validate reports a bad field, named by its flag.
func (c ProcessConfig) Validate() error {
	page := uint32(os.Getpagesize())
	if c.RingBytes == 0 || c.RingBytes&(c.RingBytes-1) != 0 || c.RingBytes%page != 0 {
		return fmt.Errorf("--process-ring-bytes: %d is not a power of two and a multiple of the page size (%d)", c.RingBytes, page)
	}
	return nil
}

// Processes follows process forks, execs and exits through the
// sched:sched_process_* BTF tracepoints.
type Processes struct {
	objs   procObjs
	links  []link.Link
	reader *pollReader
	record ringbuf.Record

	readMu sync.Mutex
	mu     sync.Mutex
	closed bool
}

// OpenProcesses loads and attaches the process programs.
func OpenProcesses(cfg ProcessConfig) (*Processes, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("memlock: %w", err)
	}
	spec, err := loadProc()
	if err != nil {
		return nil, fmt.Errorf("load process spec: %w", err)
	}
	spec.Maps["proc_events"].MaxEntries = cfg.RingBytes
	if err := spec.Variables[procVarWakeupBytes].Set(uint64(cfg.RingBytes / 4)); err != nil {
		return nil, fmt.Errorf("set wakeup_bytes: %w", err)
	}
	p := &Processes{}
	if err := p.objs.load(spec); err != nil {
		return nil, err
	}
	for _, tp := range []struct {
		name string
		prog *ebpf.Program
	}{
		{"sched_process_fork", p.objs.ProcFork},
		{"sched_process_exec", p.objs.ProcExec},
		{"sched_process_exit", p.objs.exit.prog},
	} {
		l, err := link.AttachTracing(link.TracingOptions{Program: tp.prog, AttachType: ebpf.AttachTraceRawTp})
		if err != nil {
			_ = p.release()
			return nil, fmt.Errorf("attach %s: %w", tp.name, err)
		}
		p.links = append(p.links, l)
	}
	p.reader, err = newPollReader(p.objs.ProcEvents)
	if err != nil {
		_ = p.release()
		return nil, fmt.Errorf("process ring reader: %w", err)
	}
	return p, nil
}

// ReadEvent blocks for the next process event; after Close it returns an
// error wrapping ErrClosed.
func (p *Processes) ReadEvent() (ProcessEvent, error) {
	p.readMu.Lock()
	defer p.readMu.Unlock()
	err := p.reader.read(&p.record)
	switch {
	case err == nil:
		return decodeProcessEvent(p.record.RawSample)
	case errors.Is(err, os.ErrClosed) || errors.Is(err, ringbuf.ErrClosed):
		return ProcessEvent{}, fmt.Errorf("read process event: %w", ErrClosed)
	}
	return ProcessEvent{}, fmt.Errorf("read process event: %w", err)
}

// Sync returns once ReadEvent has returned every process event submitted
// before the call and has been called again: a reader that applies each
// event before it reads the next has applied them all. A process's exec
// is submitted before any event of the sockets it then opens, so a Sync
// after the sockets were read makes their owners' table entries current.
// It needs a goroutine calling ReadEvent, and gives up when ctx is done
// (counted in SyncFailures).
func (p *Processes) Sync(ctx context.Context) error {
	if err := p.reader.sync.wait(ctx, p.reader.r, p.reader.wake); err != nil {
		return fmt.Errorf("sync process events: %w", err)
	}
	return nil
}

// SyncFailures returns how many Syncs gave up before the reader caught up.
func (p *Processes) SyncFailures() uint64 { return p.reader.sync.failures.Load() }

func decodeProcessEvent(raw []byte) (ProcessEvent, error) {
	var ev procProcEvent
	if len(raw) < int(unsafe.Sizeof(ev)) {
		return ProcessEvent{}, fmt.Errorf("process event of %d bytes", len(raw))
	}
	ev = *(*procProcEvent)(unsafe.Pointer(&raw[0]))
	return ProcessEvent{
		Kind:      ProcessKind(ev.Kind),
		PID:       ev.Pid,
		PPID:      ev.Ppid,
		StartTime: ev.StartTime / (uint64(time.Second) / userHZ),
		CgroupID:  ev.CgroupId,
		Comm:      comm(&ev.Comm),
	}, nil
}

// RingFull returns the process events lost so far because the ring was full.
func (p *Processes) RingFull() (uint64, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return 0, ErrClosed
	}
	var per []uint64
	if err := p.objs.ProcDrops.Lookup(uint32(0), &per); err != nil {
		return 0, fmt.Errorf("process drops: %w", err)
	}
	return sumPerCPU(per), nil
}

// ProgramStats returns the run count and run time of each process program.
func (p *Processes) ProgramStats() ([]ProgramStats, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, fmt.Errorf("program stats: %w", ErrClosed)
	}
	return programStats([]namedProgram{
		{"proc_fork", p.objs.ProcFork},
		{"proc_exec", p.objs.ProcExec},
		p.objs.exit,
	})
}

// Close detaches the programs and unblocks ReadEvent; it is idempotent.
func (p *Processes) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	return p.release()
}

// procObjs holds the process maps and programs: proc_exit reads
// sched_process_exit's group_dead argument, which older kernels' tracepoint
// lacks; proc_exit_live works without it. The one that matches the kernel's
// BTF is loaded.
type procObjs struct {
	procMaps
	ProcFork *ebpf.Program
	ProcExec *ebpf.Program
	exit     namedProgram
}

func (o *procObjs) load(spec *ebpf.CollectionSpec) error {
	type common struct {
		procMaps
		ProcFork *ebpf.Program `ebpf:"proc_fork"`
		ProcExec *ebpf.Program `ebpf:"proc_exec"`
	}
	if tracepointArgs("sched_process_exit") >= 2 {
		var l struct {
			common
			ProcExit *ebpf.Program `ebpf:"proc_exit"`
		}
		if err := spec.LoadAndAssign(&l, loadOptions(nil)); err != nil {
			return fmt.Errorf("load process programs: %w", err)
		}
		*o = procObjs{procMaps: l.procMaps, ProcFork: l.ProcFork, ProcExec: l.ProcExec,
			exit: namedProgram{procProgProcExit, l.ProcExit}}
		return nil
	}
	var l struct {
		common
		ProcExitLive *ebpf.Program `ebpf:"proc_exit_live"`
	}
	if err := spec.LoadAndAssign(&l, loadOptions(nil)); err != nil {
		return fmt.Errorf("load process programs: %w", err)
	}
	*o = procObjs{procMaps: l.procMaps, ProcFork: l.ProcFork, ProcExec: l.ProcExec,
		exit: namedProgram{procProgProcExitLive, l.ProcExitLive}}
	return nil
}

func (o *procObjs) Close() error {
	return errors.Join(o.procMaps.Close(), o.ProcFork.Close(), o.ProcExec.Close(), o.exit.prog.Close())
}

func (p *Processes) release() error {
	var errs []error
	if p.reader != nil {
		errs = append(errs, p.reader.close())
	}
	for _, l := range p.links {
		errs = append(errs, l.Close())
	}
	errs = append(errs, p.objs.Close())
	return errors.Join(errs...)
}

// namedProgram is a program and the name its statistics go by.
type namedProgram struct {
	name string
	prog *ebpf.Program
}

func programStats(progs []namedProgram) ([]ProgramStats, error) {
	out := make([]ProgramStats, 0, len(progs))
	for _, pr := range progs {
		st, err := pr.prog.Stats()
		if err != nil {
			return nil, fmt.Errorf("program stats %s: %w", pr.name, err)
		}
		out = append(out, ProgramStats{Name: pr.name, Runs: st.RunCount, RunTime: st.Runtime, Missed: st.RecursionMisses})
	}
	return out, nil
}
