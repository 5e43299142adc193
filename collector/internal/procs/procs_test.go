package procs

import (
	"os"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/weir-project/weir/collector/internal/cgroups"
	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/proc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// fakeProc is a /proc of fixed processes.
type fakeProc struct {
	procs map[key]proc.Details
	reads int
}

func (f *fakeProc) Details(pid uint32, start uint64, maxCmdline int) (proc.Details, error) {
	f.reads++
	for k, d := range f.procs {
		if k.pid == pid && (start == 0 || k.start == start) {
			return d, nil
		}
	}
	return proc.Details{}, os.ErrNotExist
}

func newTable(t *testing.T, f *fakeProc, cfg Config) (*Table, *time.Time) {
	t.Helper()
	tb, err := New(cfg, f, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1000, 0)
	tb.now = func() time.Time { return now }
	return tb, &now
}

func TestDescribe(t *testing.T) {
	f := &fakeProc{procs: map[key]proc.Details{
		{10, 100}: {PPID: 1, Executable: "/usr/bin/server", Cmdline: "server -x", Cgroups: []string{"/system.slice/docker-" + cid + ".scope", "/"}},
	}}
	tb, now := newTable(t, f, DefaultConfig())
	tb.Apply(probe.ProcessEvent{Kind: probe.ProcessFork, PID: 10, PPID: 1, StartTime: 100, Comm: "bash"})
	tb.Apply(probe.ProcessEvent{Kind: probe.ProcessExec, PID: 10, PPID: 1, StartTime: 100, Comm: "server"})
	got := tb.Describe(10, 100, "x")
	want := Info{PID: 10, PPID: 1, StartTime: 100, Comm: "server", Executable: "/usr/bin/server", Cmdline: "server -x",
		Cgroup: "/system.slice/docker-" + cid + ".scope", Container: cgroups.Container{ID: cid, Runtime: cgroups.RuntimeDocker}}
	if got != want {
		t.Fatalf("Describe = %+v, want %+v", got, want)
	}
	tb.Describe(10, 100, "x")
	if f.reads != 1 {
		t.Errorf("%d reads of /proc, want 1 per lifetime", f.reads)
	}

	// A child that exits before it is described keeps what it inherited.
	tb.Apply(probe.ProcessEvent{Kind: probe.ProcessFork, PID: 11, PPID: 10, StartTime: 200, Comm: "server"})
	tb.Apply(probe.ProcessEvent{Kind: probe.ProcessExit, PID: 11, StartTime: 200})
	child := tb.Describe(11, 200, "server")
	if child.Container.ID != cid || child.PPID != 10 || child.Executable != "/usr/bin/server" {
		t.Errorf("exited child %+v", child)
	}
	// Exited processes leave after the TTL.
	*now = now.Add(2 * time.Minute)
	tb.Apply(probe.ProcessEvent{Kind: probe.ProcessExit, PID: 10, StartTime: 100})
	if tb.Len() != 1 {
		t.Errorf("%d processes after the TTL, want 1", tb.Len())
	}
	*now = now.Add(2 * time.Minute)
	tb.Apply(probe.ProcessEvent{Kind: probe.ProcessFork, PID: 12, PPID: 1, StartTime: 300})
	if tb.Len() != 1 {
		t.Errorf("%d processes, want 1 (12 only)", tb.Len())
	}

	// Unknown and gone: the caller's comm.
	if got := tb.Describe(99, 5, "gone"); got.Comm != "gone" || got.Container.ID != "" {
		t.Errorf("gone process %+v", got)
	}
}

func TestCap(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxProcesses = 2
	tb, _ := newTable(t, &fakeProc{}, cfg)
	for pid := uint32(1); pid <= 5; pid++ {
		tb.Apply(probe.ProcessEvent{Kind: probe.ProcessFork, PID: pid, StartTime: 1})
	}
	if tb.Len() != 2 {
		t.Errorf("%d processes, want the cap 2", tb.Len())
	}
}
