package procs

import (
	"context"
	"os"
	"strings"
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

// events is a fixed stream of process events.
type events []probe.ProcessEvent

func (e *events) ReadEvent() (probe.ProcessEvent, error) {
	if len(*e) == 0 {
		return probe.ProcessEvent{}, probe.ErrClosed
	}
	ev := (*e)[0]
	*e = (*e)[1:]
	return ev, nil
}

// TestFollowReadsAtExec: a process that joins a pod's cgroup and then execs
// (as runc starts a container's process) is read at its exec, so that it is
// described with its pod even when it has exited before its sockets are
// reported; what it inherited at fork was its parent's cgroup.
func TestFollowReadsAtExec(t *testing.T) {
	const uid = "6f1a2b3c-4d5e-4f60-8a9b-0c1d2e3f4a5b"
	pod := "/kubepods/besteffort/pod" + uid + "/" + cid
	f := &fakeProc{procs: map[key]proc.Details{
		{10, 100}: {PPID: 1, Executable: "/usr/bin/sh", Cgroups: []string{"/user.slice"}},
		{11, 200}: {PPID: 10, Executable: "/app/client", Cmdline: "client", Cgroups: []string{"/", "/"}},
	}}
	tb, _ := newTable(t, f, DefaultConfig())
	tb.Describe(10, 100, "sh")
	// pid 11 is in the pod's cgroup (v1 only, as on a hybrid host) when
	// it execs; /proc says so until it exits.
	f.procs[key{11, 200}] = proc.Details{PPID: 10, Executable: "/app/client", Cmdline: "client", Cgroups: []string{"/", pod}}
	src := events{
		{Kind: probe.ProcessFork, PID: 11, PPID: 10, StartTime: 200, Comm: "sh"},
		{Kind: probe.ProcessExec, PID: 11, PPID: 10, StartTime: 200, Comm: "client"},
	}
	if err := tb.Follow(context.Background(), &src); err != nil {
		t.Fatal(err)
	}
	delete(f.procs, key{11, 200})
	tb.Apply(probe.ProcessEvent{Kind: probe.ProcessExit, PID: 11, StartTime: 200})
	got := tb.Describe(11, 200, "client")
	want := cgroups.Container{ID: cid, PodUID: uid}
	if got.Container != want || got.Executable != "/app/client" || got.Comm != "client" {
		t.Errorf("exited process read at exec: %+v, want container %+v", got, want)
	}
}

// fakeIndex is a cgroup2 mount of fixed cgroups.
type fakeIndex map[uint64]string

func (x fakeIndex) Path(id uint64) (string, bool) { p, ok := x[id]; return p, ok }

// TestDescribeByCgroupID: a process that exits before /proc is read is
// named by the cgroup id of its exec, which the kernel reports, when that
// cgroup names a container or pod; else it keeps what it inherited.
func TestDescribeByCgroupID(t *testing.T) {
	const uid = "6f1a2b3c-4d5e-4f60-8a9b-0c1d2e3f4a5b"
	pod := "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + strings.ReplaceAll(uid, "-", "_") + ".slice/cri-containerd-" + cid + ".scope"
	f := &fakeProc{procs: map[key]proc.Details{{10, 100}: {PPID: 1, Executable: "/usr/bin/sh", Cgroups: []string{"/user.slice"}}}}
	tb, _ := newTable(t, f, DefaultConfig())
	tb.SetCgroupIndex(fakeIndex{7: pod, 3: "/user.slice/other"})
	tb.Describe(10, 100, "sh")
	for _, tc := range []struct {
		name   string
		pid    uint32
		cgroup uint64
		want   cgroups.Container
		path   string
	}{
		{"moved to a pod", 11, 7, cgroups.Container{ID: cid, Runtime: cgroups.RuntimeContainerd, PodUID: uid}, pod},
		{"moved elsewhere", 12, 3, cgroups.Container{}, "/user.slice/other"},
		{"cgroup gone", 13, 9, cgroups.Container{}, "/user.slice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb.Apply(probe.ProcessEvent{Kind: probe.ProcessFork, PID: tc.pid, PPID: 10, StartTime: 200, CgroupID: 2, Comm: "sh"})
			tb.Apply(probe.ProcessEvent{Kind: probe.ProcessExec, PID: tc.pid, PPID: 10, StartTime: 200, CgroupID: tc.cgroup, Comm: "client"})
			tb.Apply(probe.ProcessEvent{Kind: probe.ProcessExit, PID: tc.pid, StartTime: 200})
			got := tb.Describe(tc.pid, 200, "client")
			if got.Container != tc.want || got.Cgroup != tc.path {
				t.Errorf("Describe = %+v, want container %+v in %s", got, tc.want, tc.path)
			}
		})
	}
}

// TestLateFork: a process described from /proc before its fork event was
// read keeps what was read; the late fork does not put back its parent's
// program and container.
func TestLateFork(t *testing.T) {
	f := &fakeProc{procs: map[key]proc.Details{
		{10, 100}: {PPID: 1, Executable: "/usr/bin/shell", Cgroups: []string{"/user.slice"}},
		{11, 200}: {PPID: 10, Executable: "/usr/bin/server", Cgroups: []string{"/system.slice/docker-" + cid + ".scope"}},
	}}
	tb, _ := newTable(t, f, DefaultConfig())
	tb.Apply(probe.ProcessEvent{Kind: probe.ProcessExec, PID: 10, PPID: 1, StartTime: 100, Comm: "shell"})
	tb.Describe(10, 100, "shell")
	if got := tb.Describe(11, 200, "server"); got.Container.ID != cid {
		t.Fatalf("read from /proc: %+v", got)
	}
	tb.Apply(probe.ProcessEvent{Kind: probe.ProcessFork, PID: 11, PPID: 10, StartTime: 200, Comm: "shell"})
	got := tb.Describe(11, 200, "server")
	if got.Container.ID != cid || got.Executable != "/usr/bin/server" {
		t.Errorf("after the late fork: %+v, want the process as read", got)
	}
	if f.reads != 2 {
		t.Errorf("%d reads of /proc, want 2", f.reads)
	}
}
