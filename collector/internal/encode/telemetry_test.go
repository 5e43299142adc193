package encode

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	cg "github.com/weir-project/weir/collector/internal/cgroups"
	"github.com/weir-project/weir/collector/internal/nat"
	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/procs"
)

// translator translates the connections to one address, once Sync was
// told of the namespace that it follows.
type translator struct {
	to     map[netip.AddrPort]nat.Translation
	netns  uint32
	synced bool
}

func (tr *translator) Sync(netns []uint32) { tr.synced = slices.Contains(netns, tr.netns) }

func (tr *translator) Translate(_, remote netip.AddrPort) (nat.Translation, bool) {
	if !tr.synced {
		return nat.Translation{}, false
	}
	t, ok := tr.to[remote]
	return t, ok
}

// describer describes every process as being in one container.
type describer struct{ cgroups }

func (describer) Describe(pid uint32, start uint64, comm string) procs.Info {
	return procs.Info{PID: pid, PPID: 1, StartTime: start, Comm: comm, Executable: "/bin/" + comm, Cmdline: comm + " -v",
		Cgroup: "/docker/c", Container: cg.Container{ID: "c0ffee", PodUID: "uid"}}
}

// TestTelemetry: a socket is announced with its NAT translation, and its
// process with what the process table describes.
func TestTelemetry(t *testing.T) {
	_, tab, _ := newEncoder(t, nil)
	enc := New(tab, describer{})
	backend := netip.MustParseAddrPort("10.9.9.9:8080")
	enc.SetTranslator(&translator{to: map[netip.AddrPort]nat.Translation{
		netip.AddrPortFrom(remoteIP, 80): {Local: netip.AddrPortFrom(localIP, 40000), Remote: backend}}, netns: netns})
	owner := probe.Owner{PID: 42, StartTime: 7, Comm: "curl"}
	apply(t, tab, open(1, probe.RoleClient, 40000, owner, ctr(10, 0, 1, 0)))
	b := enc.Report(time.Unix(1, 0))
	if len(b.Sockets) != 1 || b.Sockets[0].GetNat() == nil {
		t.Fatalf("sockets %v, want one with a translation", b.Sockets)
	}
	n := b.Sockets[0].GetNat()
	if got, _ := netip.AddrFromSlice(n.GetRemoteAddr()); got != backend.Addr() || n.GetRemotePort() != 8080 || n.GetLocalPort() != 40000 {
		t.Errorf("translation %v", n)
	}
	p := b.Processes[0]
	if p.GetContainerId() != "c0ffee" || p.GetPodUid() != "uid" || p.GetPpid() != 1 || p.GetExecutable() != "/bin/curl" ||
		p.GetCmdline() != "curl -v" || p.GetCgroup() != "/docker/c" {
		t.Errorf("process %v", p)
	}
}

// execTable is a process table whose process execs into a container only
// once the process events are synced, as a table whose reader runs late.
type execTable struct {
	cgroups
	syncs int
}

func (x *execTable) Sync(context.Context) error {
	x.syncs++
	return nil
}

func (x *execTable) Describe(pid uint32, start uint64, comm string) procs.Info {
	if x.syncs == 0 {
		return procs.Info{PID: pid, StartTime: start, Comm: comm, Cgroup: "/user.slice"} // before the exec
	}
	return procs.Info{PID: pid, StartTime: start, Comm: comm, Cgroup: "/docker/c", Container: cg.Container{ID: "c0ffee"}}
}

// TestReportSyncsProcessesFirst: a report that announces a socket syncs
// the process table before it describes the socket's process, so the
// process is described after the exec that preceded the socket; a report
// with nothing to describe does not sync.
func TestReportSyncsProcessesFirst(t *testing.T) {
	_, tab, _ := newEncoder(t, nil)
	x := &execTable{}
	enc := New(tab, x)
	enc.SetProcessSync(x)
	if enc.Report(time.Unix(1, 0)); x.syncs != 0 {
		t.Errorf("an empty report synced %d times", x.syncs)
	}
	apply(t, tab, open(1, probe.RoleClient, 40000, probe.Owner{PID: 42, StartTime: 7, Comm: "app"}, ctr(10, 0, 1, 0)))
	b := enc.Report(time.Unix(2, 0))
	if x.syncs != 1 {
		t.Errorf("synced %d times, want once", x.syncs)
	}
	if len(b.Processes) != 1 || b.Processes[0].GetContainerId() != "c0ffee" {
		t.Errorf("processes %v, want the one in container c0ffee", b.Processes)
	}
}
