package probe

import (
	"context"
	"os/exec"
	"sync"
	"testing"
	"time"
)

// TestPrivilegedProcesses runs a child that execs a shell that exits, and
// expects its fork, exec and exit, in that order, with the parent's pid.
func TestPrivilegedProcesses(t *testing.T) {
	requirePrivileged(t)
	p, err := OpenProcesses(ProcessConfig{RingBytes: 1 << 18})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	events := make(chan ProcessEvent, 4096)
	go func() {
		for {
			ev, err := p.ReadEvent()
			if err != nil {
				close(events)
				return
			}
			events <- ev
		}
	}()
	cmd := exec.Command("/bin/sh", "-c", "exit 0")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(cmd.Process.Pid)
	var kinds []ProcessKind
	deadline := time.After(30 * time.Second)
	for len(kinds) < 3 {
		select {
		case ev, ok := <-events:
			if !ok {
				t.Fatal("reader stopped")
			}
			if ev.PID != pid {
				continue
			}
			kinds = append(kinds, ev.Kind)
			switch ev.Kind {
			case ProcessFork, ProcessExec:
				if ev.PPID == 0 {
					t.Errorf("%v without parent", ev)
				}
				if ev.StartTime == 0 {
					t.Errorf("%v without start time", ev)
				}
			}
			if ev.Kind == ProcessExec && ev.Comm != "sh" {
				t.Errorf("exec comm %q, want sh", ev.Comm)
			}
		case <-deadline:
			t.Fatalf("events of pid %d: %v, want fork, exec, exit", pid, kinds)
		}
	}
	if kinds[0] != ProcessFork || kinds[1] != ProcessExec || kinds[2] != ProcessExit {
		t.Errorf("events %v, want fork, exec, exit", kinds)
	}
	if n, err := p.RingFull(); err != nil || n != 0 {
		t.Errorf("ring full %d, %v", n, err)
	}
	if _, err := p.ProgramStats(); err != nil {
		t.Error(err)
	}
	if err := p.Close(); err != nil {
		t.Error(err)
	}
	if err := p.Close(); err != nil {
		t.Errorf("second close: %v", err)
	}
}

// TestPrivilegedProcessesSync: once Sync returns, the reader has handled
// the exec of a process that ran before the call, though the ring wakes
// its reader only once 64 KiB wait (or after eventWait): Sync does not
// wait for either, and a report after it describes the process as it is
// after its exec.
func TestPrivilegedProcessesSync(t *testing.T) {
	requirePrivileged(t)
	p, err := OpenProcesses(ProcessConfig{RingBytes: 1 << 18})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var mu sync.Mutex
	execs := make(map[uint32]bool)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			ev, err := p.ReadEvent()
			if err != nil {
				return
			}
			mu.Lock()
			if ev.Kind == ProcessExec {
				execs[ev.PID] = true
			}
			mu.Unlock()
		}
	}()
	for i := range 20 {
		cmd := exec.Command("/bin/true")
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		err := p.Sync(ctx)
		took := time.Since(start)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		seen := execs[uint32(cmd.Process.Pid)]
		mu.Unlock()
		if !seen {
			t.Fatalf("run %d: Sync returned (after %s) before the exec of pid %d was read", i, took, cmd.Process.Pid)
		}
	}
	if n := p.SyncFailures(); n != 0 {
		t.Errorf("%d sync failures", n)
	}
	p.Close()
	<-done
}
