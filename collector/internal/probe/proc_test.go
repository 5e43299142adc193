package probe

import (
	"os/exec"
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
