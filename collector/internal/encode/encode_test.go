package encode

import (
	"errors"
	"math"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/sockets"
	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	localIP  = netip.MustParseAddr("10.0.0.1")
	remoteIP = netip.MustParseAddr("10.0.0.2")
	now      = time.Unix(1700000000, 0)
	curl     = probe.Owner{PID: 100, StartTime: 5000, CgroupID: 9001, Comm: "curl"}
	nginx    = probe.Owner{PID: 200, StartTime: 6000, CgroupID: 9002, Comm: "nginx"}
	nginxW   = probe.Owner{PID: 201, StartTime: 6001, CgroupID: 9002, Comm: "nginx"}
)

const netns = 4026531840

// cgroups is a fake /proc: cgroup paths by pid, for the processes whose
// start time matches.
type cgroups map[probe.Owner]string

func (c cgroups) CgroupPath(pid uint32, startTime uint64) (string, error) {
	for o, path := range c {
		if o.PID == pid && o.StartTime == startTime {
			return path, nil
		}
	}
	return "", errors.New("no such process")
}

var testCgroups = cgroups{curl: "/system.slice/curl.service", nginx: "/system.slice/nginx.service"}

// samples is a Sampler over a fixed slice of socket states.
type samples []probe.Sample

func (ss samples) SampleWalk(fn func(probe.Sample)) (bool, error) {
	for _, s := range ss {
		fn(s)
	}
	return true, nil
}

// partial is a Sampler whose walk was chunked: it reports these sockets and
// says nothing of the others.
type partial []probe.Sample

func (ss partial) SampleWalk(fn func(probe.Sample)) (bool, error) {
	_, err := samples(ss).SampleWalk(fn)
	return false, err
}

func newEncoder(t testing.TB, mutate func(*sockets.Config)) (*Encoder, *sockets.Table, *prometheus.Registry) {
	t.Helper()
	cfg := sockets.DefaultConfig()
	if mutate != nil {
		mutate(&cfg)
	}
	reg := prometheus.NewPedanticRegistry()
	tab, err := sockets.New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	return New(tab, testCgroups), tab, reg
}

func endpoint(cookie uint64, role probe.Role, lport uint16) probe.Endpoint {
	return probe.Endpoint{
		Cookie: cookie, Role: role,
		LocalAddr: localIP, LocalPort: lport, RemoteAddr: remoteIP, RemotePort: 80, NetNS: netns,
	}
}

// kindOpen marks the events of open: not a probe.EventKind (the kernel
// sends no open event), but a socket established while the probe was
// loaded, as the table first learns of it, which apply turns into a sample.
const kindOpen probe.EventKind = 0

// open is socket cookie established while the probe was loaded, with a
// role and counters c run from the handshake (see apply).
func open(cookie uint64, role probe.Role, lport uint16, owner probe.Owner, c probe.Counters) probe.Event {
	return probe.Event{Kind: kindOpen, Endpoint: endpoint(cookie, role, lport), Owner: owner, Counters: c}
}

// apply applies ev to tab; an open is its first sample, in a walk that
// reports that socket alone and so is not complete: it says nothing of the
// other sockets.
func apply(t testing.TB, tab *sockets.Table, ev probe.Event) {
	t.Helper()
	if ev.Kind != kindOpen {
		tab.Apply(ev)
		return
	}
	if err := tab.Poll(partial{{Endpoint: ev.Endpoint, Owner: ev.Owner, Counters: ev.Counters}}); err != nil {
		t.Fatal(err)
	}
}

func existing(cookie uint64, lport uint16, owner probe.Owner, c probe.Counters) probe.Event {
	return probe.Event{Kind: probe.EventExisting, Endpoint: endpoint(cookie, probe.RoleUnknown, lport), Owner: owner, Counters: c}
}

func closeEv(cookie uint64, c probe.Counters) probe.Event {
	return probe.Event{Kind: probe.EventClose, Endpoint: probe.Endpoint{Cookie: cookie}, Counters: c}
}

func listen(port uint16, owner probe.Owner) probe.Event {
	return probe.Event{Kind: probe.EventListen, Endpoint: probe.Endpoint{LocalAddr: netip.IPv4Unspecified(), LocalPort: port, NetNS: netns}, Owner: owner}
}

// sample is the state of socket cookie, which the table knows already.
func sample(cookie uint64, owner probe.Owner, c probe.Counters) probe.Sample {
	return probe.Sample{Endpoint: probe.Endpoint{Cookie: cookie}, Owner: owner, Counters: c}
}

func ctr(sent, recv uint64, segOut, segIn uint32) probe.Counters {
	return probe.Counters{BytesAcked: sent, BytesReceived: recv, SegsDelivered: segOut, DataSegsIn: segIn}
}

// proc is the wire announcement of a test process under handle h.
func proc(h uint32, o probe.Owner) *ingestv1.Process {
	return &ingestv1.Process{Handle: h, Pid: o.PID, Comm: o.Comm, Cgroup: testCgroups[o], StartTime: o.StartTime, CgroupId: o.CgroupID}
}

func wireSock(h, proc uint32, role ingestv1.Role, lport uint32, newConn bool, cookie uint64) *ingestv1.Socket {
	return &ingestv1.Socket{
		Handle: h, Process: proc, Role: role,
		LocalAddr: localIP.AsSlice(), LocalPort: lport, RemoteAddr: remoteIP.AsSlice(), RemotePort: 80,
		Netns: netns, NewConnection: newConn, Cookie: cookie,
	}
}

func equalBatch(t *testing.T, got, want *ingestv1.Batch) {
	t.Helper()
	want.Time = got.Time
	if want.Stats == nil {
		want.Stats = &ingestv1.SocketStats{}
	}
	if want.Loss == nil {
		want.Loss = &ingestv1.Loss{}
	}
	if !proto.Equal(got, want) {
		t.Fatalf("batch mismatch\ngot:\n%s\nwant:\n%s", prototext.Format(got), prototext.Format(want))
	}
}

// step is one thing that happens to a table between checks.
type step struct {
	events  []probe.Event
	samples samples
	resync  bool
	want    *ingestv1.Batch // compared with the Report after the step
}

func runSteps(t *testing.T, enc *Encoder, tab *sockets.Table, steps []step) {
	t.Helper()
	d := newDecoder()
	for i, st := range steps {
		for _, ev := range st.events {
			apply(t, tab, ev)
		}
		if st.samples != nil {
			if err := tab.Poll(st.samples); err != nil {
				t.Fatal(err)
			}
		}
		if st.resync {
			enc.Resync()
			d.newEpoch()
		}
		b := enc.Report(now)
		if err := d.apply(b); err != nil {
			t.Fatalf("step %d: %v\n%s", i, err, prototext.Format(b))
		}
		if st.want != nil {
			equalBatch(t, b, st.want)
		}
	}
}

func TestReportBatches(t *testing.T) {
	client, server := ingestv1.Role_ROLE_CLIENT, ingestv1.Role_ROLE_SERVER
	tests := []struct {
		name       string
		maxSockets int // 0: the default
		steps      []step
	}{
		{
			name: "open and close within one interval: the close alone",
			steps: []step{{
				events: []probe.Event{
					{Kind: probe.EventClose, Endpoint: endpoint(1, probe.RoleClient, 40000), Owner: curl, Counters: ctr(500, 7000, 3, 5)},
				},
				want: &ingestv1.Batch{
					Processes:          []*ingestv1.Process{proc(1, curl)},
					Sockets:            []*ingestv1.Socket{wireSock(1, 1, client, 40000, true, 1)},
					Stats:              &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{500}, BytesReceived: []uint64{7000}, SegmentsSent: []uint64{3}, SegmentsReceived: []uint64{5}},
					ClosedSockets:      []uint32{1},
					ForgottenProcesses: []uint32{1},
				},
			}},
		},
		{
			name: "only changed sockets, as deltas with handle gaps",
			steps: []step{
				{events: []probe.Event{
					open(1, probe.RoleClient, 40001, curl, probe.Counters{}),
					open(2, probe.RoleClient, 40002, curl, probe.Counters{}),
					open(3, probe.RoleClient, 40003, curl, probe.Counters{}),
				}},
				{
					samples: samples{sample(1, curl, ctr(10, 20, 1, 1)), sample(2, curl, probe.Counters{}), sample(3, curl, ctr(30, 0, 1, 0))},
					want:    &ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1, 2}, BytesSent: []uint64{10, 30}, BytesReceived: []uint64{20, 0}, SegmentsSent: []uint64{1, 1}, SegmentsReceived: []uint64{1, 0}}},
				},
				{
					samples: samples{sample(1, curl, ctr(10, 20, 1, 1)), sample(2, curl, probe.Counters{}), sample(3, curl, ctr(35, 0, 2, 0))},
					want:    &ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{3}, BytesSent: []uint64{5}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}}},
				},
			},
		},
		{
			name: "server owner from a sample",
			steps: []step{{
				events:  []probe.Event{open(1, probe.RoleServer, 80, probe.Owner{}, probe.Counters{})},
				samples: samples{sample(1, nginxW, ctr(0, 100, 0, 1))},
				want: &ingestv1.Batch{
					Processes: []*ingestv1.Process{proc(1, nginxW)},
					Sockets:   []*ingestv1.Socket{wireSock(1, 1, server, 80, true, 1)},
					Stats:     &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{0}, BytesReceived: []uint64{100}, SegmentsSent: []uint64{0}, SegmentsReceived: []uint64{1}},
				},
			}},
		},
		{
			name: "server owner from the listener, then the real user",
			steps: []step{
				{
					events: []probe.Event{listen(80, nginx), open(1, probe.RoleServer, 80, probe.Owner{}, probe.Counters{})},
					want: &ingestv1.Batch{
						Processes: []*ingestv1.Process{proc(1, nginx)},
						Sockets:   []*ingestv1.Socket{wireSock(1, 1, server, 80, true, 1)},
					},
				},
				{
					samples: samples{sample(1, nginxW, ctr(0, 100, 0, 1))},
					want: &ingestv1.Batch{
						Processes:          []*ingestv1.Process{proc(2, nginxW)},
						Owners:             []*ingestv1.SocketOwner{{Socket: 1, Process: 2}},
						Stats:              &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{0}, BytesReceived: []uint64{100}, SegmentsSent: []uint64{0}, SegmentsReceived: []uint64{1}},
						ForgottenProcesses: []uint32{1},
					},
				},
				{
					samples: samples{sample(1, nginxW, ctr(0, 100, 0, 1))},
					want:    &ingestv1.Batch{},
				},
			},
		},
		{
			name: "server owner from the close of a short-lived socket",
			steps: []step{{
				events: []probe.Event{
					open(1, probe.RoleServer, 8080, probe.Owner{}, probe.Counters{}),
					{Kind: probe.EventClose, Endpoint: probe.Endpoint{Cookie: 1}, Owner: nginxW, Counters: ctr(10, 20, 1, 1)},
				},
				want: &ingestv1.Batch{
					Processes:          []*ingestv1.Process{proc(1, nginxW)},
					Sockets:            []*ingestv1.Socket{wireSock(1, 1, server, 8080, true, 1)},
					Stats:              &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{10}, BytesReceived: []uint64{20}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{1}},
					ClosedSockets:      []uint32{1},
					ForgottenProcesses: []uint32{1},
				},
			}},
		},
		{
			name: "server owner unknown, SocketOwner once known",
			steps: []step{
				{
					events: []probe.Event{open(1, probe.RoleServer, 8080, probe.Owner{}, probe.Counters{})},
					want:   &ingestv1.Batch{Sockets: []*ingestv1.Socket{wireSock(1, 0, server, 8080, true, 1)}},
				},
				{
					samples: samples{sample(1, nginxW, probe.Counters{})},
					want: &ingestv1.Batch{
						Processes: []*ingestv1.Process{proc(1, nginxW)},
						Owners:    []*ingestv1.SocketOwner{{Socket: 1, Process: 1}},
					},
				},
			},
		},
		{
			name: "socket found open: its counters are the baseline",
			steps: []step{
				{
					events: []probe.Event{existing(1, 5432, nginx, ctr(1e6, 2e6, 100, 200))},
					want: &ingestv1.Batch{
						Processes: []*ingestv1.Process{proc(1, nginx)},
						Sockets:   []*ingestv1.Socket{wireSock(1, 1, ingestv1.Role_ROLE_UNSPECIFIED, 5432, false, 1)},
					},
				},
				{
					samples: samples{sample(1, nginx, ctr(1e6+10, 2e6, 101, 200))},
					want:    &ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{10}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}}},
				},
			},
		},
		{
			name: "bytes going backwards count nothing, rebased, the other counters still count",
			steps: []step{
				{events: []probe.Event{open(1, probe.RoleClient, 40000, curl, probe.Counters{})}, samples: samples{sample(1, curl, ctr(100, 100, 2, 2))}},
				{
					samples: samples{sample(1, curl, ctr(50, 150, 2, 3))},
					want: &ingestv1.Batch{
						Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{0}, BytesReceived: []uint64{50}, SegmentsSent: []uint64{0}, SegmentsReceived: []uint64{1}},
						Loss:  &ingestv1.Loss{CounterRegressions: 1},
					},
				},
				{
					samples: samples{sample(1, curl, ctr(60, 150, 3, 3))},
					want: &ingestv1.Batch{
						Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{10}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}},
						Loss:  &ingestv1.Loss{CounterRegressions: 1},
					},
				},
			},
		},
		{
			name: "a second open of an announced socket changes nothing",
			steps: []step{
				{events: []probe.Event{open(1, probe.RoleClient, 40000, curl, probe.Counters{})}},
				{
					events: []probe.Event{open(1, probe.RoleClient, 40000, curl, probe.Counters{})},
					want:   &ingestv1.Batch{},
				},
			},
		},
		{
			name: "u32 segment counters wrap: the delta is modulo 2^32",
			steps: []step{
				{events: []probe.Event{existing(1, 5432, curl, ctr(1000, 1000, 0xFFFFFFF0, 0xFFFFFFFF))}},
				{
					samples: samples{sample(1, curl, ctr(1100, 1000, 0x10, 4))},
					want:    &ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{100}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{0x20}, SegmentsReceived: []uint64{5}}},
				},
			},
		},
		{
			name: "a regression is counted in-band and nothing is counted twice",
			steps: []step{
				{events: []probe.Event{open(1, probe.RoleClient, 40000, curl, probe.Counters{})}, samples: samples{sample(1, curl, ctr(100, 100, 2, 2))}},
				{
					// Segments in went back by 3: a difference over 2^31.
					samples: samples{sample(1, curl, ctr(100, 100, 2, 0xFFFFFFFF))},
					want:    &ingestv1.Batch{Loss: &ingestv1.Loss{CounterRegressions: 1}},
				},
				{
					samples: samples{sample(1, curl, ctr(100, 100, 2, 1))},
					want:    &ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{0}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{0}, SegmentsReceived: []uint64{2}}, Loss: &ingestv1.Loss{CounterRegressions: 1}},
				},
			},
		},
		{
			name: "a sample of a new connection announces it as new, all its counters counted",
			steps: []step{
				{
					samples: samples{{Endpoint: endpoint(7, probe.RoleClient, 41000), Owner: curl, Counters: ctr(5000, 6000, 10, 12)}},
					want: &ingestv1.Batch{
						Processes: []*ingestv1.Process{proc(1, curl)},
						Sockets:   []*ingestv1.Socket{wireSock(1, 1, client, 41000, true, 7)},
						Stats:     &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{5000}, BytesReceived: []uint64{6000}, SegmentsSent: []uint64{10}, SegmentsReceived: []uint64{12}},
					},
				},
				{
					samples: samples{sample(7, curl, ctr(5001, 6000, 11, 12))},
					want:    &ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{1}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}}},
				},
			},
		},
		{
			name: "a sample of a socket discovery missed announces it, its counters the baseline",
			steps: []step{
				{
					samples: samples{{Endpoint: endpoint(7, probe.RoleUnknown, 41000), Owner: curl, Counters: ctr(5000, 6000, 10, 12)}},
					want: &ingestv1.Batch{
						Processes: []*ingestv1.Process{proc(1, curl)},
						Sockets:   []*ingestv1.Socket{wireSock(1, 1, ingestv1.Role_ROLE_UNSPECIFIED, 41000, false, 7)},
					},
				},
				{
					samples: samples{sample(7, curl, ctr(5001, 6000, 11, 12))},
					want:    &ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{1}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}}},
				},
			},
		},
		{
			name:       "sockets beyond the cap are refused once, in-band",
			maxSockets: 1,
			steps: []step{
				{
					events:  []probe.Event{open(1, probe.RoleClient, 40001, curl, probe.Counters{}), open(2, probe.RoleClient, 40002, curl, probe.Counters{})},
					samples: samples{sample(1, curl, ctr(1, 0, 1, 0)), sample(2, curl, ctr(1, 0, 1, 0))},
					want: &ingestv1.Batch{
						Processes: []*ingestv1.Process{proc(1, curl)},
						Sockets:   []*ingestv1.Socket{wireSock(1, 1, client, 40001, true, 1)},
						Stats:     &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{1}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}},
						Loss:      &ingestv1.Loss{SocketCap: 1},
					},
				},
				{
					events:  []probe.Event{closeEv(2, ctr(5, 0, 2, 0))},
					samples: samples{sample(1, curl, ctr(1, 0, 1, 0))},
					want:    &ingestv1.Batch{Loss: &ingestv1.Loss{SocketCap: 1}},
				},
			},
		},
		{
			name: "process identity is pid and start time: a reused pid is another process",
			steps: []step{
				{
					events: []probe.Event{open(1, probe.RoleClient, 40001, curl, probe.Counters{})},
					want: &ingestv1.Batch{
						Processes: []*ingestv1.Process{proc(1, curl)},
						Sockets:   []*ingestv1.Socket{wireSock(1, 1, client, 40001, true, 1)},
					},
				},
				{
					samples: samples{sample(1, probe.Owner{PID: 100, StartTime: 9999, Comm: "curl"}, probe.Counters{})},
					want: &ingestv1.Batch{
						Processes:          []*ingestv1.Process{{Handle: 2, Pid: 100, Comm: "curl", StartTime: 9999}},
						Owners:             []*ingestv1.SocketOwner{{Socket: 1, Process: 2}},
						ForgottenProcesses: []uint32{1},
					},
				},
			},
		},
		{
			name: "close of an untracked socket is ignored",
			steps: []step{{
				events: []probe.Event{closeEv(99, ctr(1, 1, 1, 1))},
				want:   &ingestv1.Batch{},
			}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			enc, tab, _ := newEncoder(t, func(c *sockets.Config) {
				if tc.maxSockets > 0 {
					c.MaxSockets = tc.maxSockets
				}
			})
			runSteps(t, enc, tab, tc.steps)
		})
	}
}

func TestHandleLifetimes(t *testing.T) {
	enc, tab, _ := newEncoder(t, nil)
	d := newDecoder()
	report := func() *ingestv1.Batch {
		t.Helper()
		b := enc.Report(now)
		if err := d.apply(b); err != nil {
			t.Fatalf("%v\n%s", err, prototext.Format(b))
		}
		return b
	}
	handleOf := func(b *ingestv1.Batch) []uint32 {
		var hs []uint32
		for _, s := range b.Sockets {
			hs = append(hs, s.Handle)
		}
		return hs
	}

	for sock := uint64(1); sock <= 4; sock++ {
		apply(t, tab, open(sock, probe.RoleClient, uint16(sock), curl, probe.Counters{}))
	}
	apply(t, tab, open(5, probe.RoleClient, 5, nginx, probe.Counters{}))
	if got := handleOf(report()); !equalU32(got, []uint32{1, 2, 3, 4, 5}) {
		t.Fatalf("handles %v", got)
	}

	// Closing 3 and 2 frees their handles only after the batch; a socket
	// opened in the same interval gets a new one.
	tab.Apply(closeEv(3, probe.Counters{}))
	tab.Apply(closeEv(2, probe.Counters{}))
	apply(t, tab, open(6, probe.RoleClient, 6, curl, probe.Counters{}))
	b := report()
	if got := handleOf(b); !equalU32(got, []uint32{6}) {
		t.Fatalf("handle while 2 and 3 close in the same batch: %v", got)
	}
	if !equalU32(b.ClosedSockets, []uint32{3, 2}) {
		t.Fatalf("closed %v", b.ClosedSockets)
	}

	// Then they are reused, smallest first.
	apply(t, tab, open(7, probe.RoleClient, 7, curl, probe.Counters{}))
	apply(t, tab, open(8, probe.RoleClient, 8, curl, probe.Counters{}))
	apply(t, tab, open(9, probe.RoleClient, 9, curl, probe.Counters{}))
	if got := handleOf(report()); !equalU32(got, []uint32{2, 3, 7}) {
		t.Fatalf("reused handles %v", got)
	}

	// The nginx process is forgotten with its last socket, and its handle
	// is reused after that batch.
	tab.Apply(closeEv(5, probe.Counters{}))
	b = report()
	if !equalU32(b.ForgottenProcesses, []uint32{2}) {
		t.Fatalf("forgotten %v", b.ForgottenProcesses)
	}
	apply(t, tab, open(10, probe.RoleClient, 10, nginxW, probe.Counters{}))
	b = report()
	if len(b.Processes) != 1 || b.Processes[0].Handle != 2 || b.Processes[0].Pid != 201 {
		t.Fatalf("process after reuse: %v", b.Processes)
	}
	if len(d.procs) != 2 {
		t.Fatalf("reducer holds %d processes, want 2", len(d.procs))
	}
}

func equalU32(a, b []uint32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestRoundTrip drives a table with random traffic, opens, closes, owner
// changes and reconnects, decodes every batch and checks that the decoded
// totals of each connection equal its counters since it was first seen.
func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		seed    uint64
		sockets int
		rounds  int
		resync  int // resync every n rounds, 0 never
	}{
		{name: "small", seed: 1, sockets: 20, rounds: 50},
		{name: "many sockets", seed: 2, sockets: 2000, rounds: 20},
		{name: "with reconnects", seed: 3, sockets: 200, rounds: 60, resync: 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(tc.seed, tc.seed))
			enc, tab, _ := newEncoder(t, nil)
			d := newDecoder()
			type conn struct {
				sock     uint64
				port     uint16
				role     probe.Role
				cur      probe.Counters // what the kernel shows
				want     sums           // what the reducer must have counted
				owner    probe.Owner
				newConn  bool
				isClosed bool
			}
			var conns []*conn
			live := map[uint64]*conn{}
			nextSock, nextPort := uint64(1), uint16(1)
			owners := []probe.Owner{curl, nginx, nginxW, {PID: 300, Comm: "redis"}}
			openOne := func() {
				c := &conn{sock: nextSock, port: nextPort, role: probe.Role(rng.IntN(3)), owner: owners[rng.IntN(len(owners))]}
				nextSock++
				nextPort++
				evOwner := c.owner
				if c.role == probe.RoleServer {
					evOwner = probe.Owner{}
				}
				conns = append(conns, c)
				live[c.sock] = c
				if c.role == probe.RoleUnknown {
					// Found open, its segment counters close to wrapping:
					// the counters are the baseline.
					c.cur = ctr(rng.Uint64N(1e9), rng.Uint64N(1e9), math.MaxUint32-rng.Uint32N(8), math.MaxUint32-rng.Uint32N(8))
					tab.Apply(existing(c.sock, c.port, c.owner, c.cur))
					return
				}
				c.newConn = true
				apply(t, tab, open(c.sock, c.role, c.port, evOwner, c.cur))
			}
			grow := func(c *conn) {
				if rng.IntN(50) == 0 {
					// A regression: nothing is counted, the new value is
					// the baseline.
					c.cur.BytesAcked /= 2
					return
				}
				sent, recv := rng.Uint64N(3000), rng.Uint64N(3000)
				segOut, segIn := rng.Uint32N(3), rng.Uint32N(3)
				c.cur.BytesAcked += sent
				c.cur.BytesReceived += recv
				c.cur.SegsDelivered += segOut
				c.cur.DataSegsIn += segIn
				c.want.bytesSent += sent
				c.want.bytesReceived += recv
				c.want.segsSent += uint64(segOut)
				c.want.segsReceived += uint64(segIn)
			}
			for range tc.sockets {
				openOne()
			}
			for round := 1; round <= tc.rounds; round++ {
				var smp samples
				for _, c := range live {
					if rng.IntN(3) > 0 {
						grow(c)
					}
					if rng.IntN(20) == 0 {
						c.owner = owners[rng.IntN(len(owners))]
					}
					smp = append(smp, sample(c.sock, c.owner, c.cur))
				}
				if err := tab.Poll(smp); err != nil {
					t.Fatal(err)
				}
				for _, c := range live {
					if rng.IntN(10) == 0 {
						grow(c)
						c.isClosed = true
						delete(live, c.sock)
						tab.Apply(closeEv(c.sock, c.cur))
					}
				}
				for range rng.IntN(tc.sockets/5 + 2) {
					openOne()
				}
				if tc.resync > 0 && round%tc.resync == 0 {
					enc.Resync()
					d.newEpoch()
				}
				b := enc.Report(now)
				if err := d.apply(b); err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
			}
			// Final samples, then a report, so every live delta is out.
			var smp samples
			for _, c := range live {
				smp = append(smp, sample(c.sock, c.owner, c.cur))
			}
			if err := tab.Poll(smp); err != nil {
				t.Fatal(err)
			}
			if err := d.apply(enc.Report(now)); err != nil {
				t.Fatal(err)
			}
			for _, c := range conns {
				k := tupleKey(netns, localIP, c.port, remoteIP, 80)
				if got := d.totals[k]; got != c.want {
					t.Fatalf("socket %d (role %d, closed %v): decoded %+v, want %+v", c.sock, c.role, c.isClosed, got, c.want)
				}
				wantOpened := 0
				if c.newConn {
					wantOpened = 1
				}
				if got := d.opened[k]; got != wantOpened {
					t.Fatalf("socket %d announced as new %d times, want %d", c.sock, got, wantOpened)
				}
				if !c.isClosed && d.owners[k] != c.owner.Comm {
					t.Fatalf("socket %d owner %q, want %q", c.sock, d.owners[k], c.owner.Comm)
				}
			}
			if len(d.socks) != len(live) {
				t.Fatalf("reducer holds %d sockets, want %d live", len(d.socks), len(live))
			}
			if tab.Live() != len(live) {
				t.Fatalf("table holds %d sockets, want %d", tab.Live(), len(live))
			}
		})
	}
}

func TestResync(t *testing.T) {
	client := ingestv1.Role_ROLE_CLIENT
	enc, tab, _ := newEncoder(t, nil)
	runSteps(t, enc, tab, []step{
		{
			events:  []probe.Event{open(1, probe.RoleClient, 40001, curl, probe.Counters{}), open(2, probe.RoleClient, 40002, curl, probe.Counters{})},
			samples: samples{sample(1, curl, ctr(100, 100, 1, 1)), sample(2, curl, probe.Counters{})},
		},
		// The reducer is away: sockets 1 grows, 2 closes with bytes, 3
		// opens. Nothing is reported until the resync.
		{
			events:  []probe.Event{closeEv(2, ctr(7, 0, 1, 0)), open(3, probe.RoleClient, 40003, curl, probe.Counters{})},
			samples: samples{sample(1, curl, ctr(150, 100, 2, 1)), sample(3, curl, ctr(1, 1, 1, 1))},
			resync:  true,
			want: &ingestv1.Batch{
				Processes: []*ingestv1.Process{proc(1, curl)},
				Sockets: []*ingestv1.Socket{
					wireSock(1, 1, client, 40001, false, 1),
					wireSock(2, 1, client, 40002, false, 2),
					wireSock(3, 1, client, 40003, true, 3),
				},
				Stats: &ingestv1.SocketStats{
					HandleGaps: []uint32{1, 1, 1},
					BytesSent:  []uint64{50, 7, 1}, BytesReceived: []uint64{0, 0, 1},
					SegmentsSent: []uint64{1, 1, 1}, SegmentsReceived: []uint64{0, 0, 1},
				},
				ClosedSockets: []uint32{2},
			},
		},
		// Nothing changed: nothing is announced or counted again.
		{resync: true, want: &ingestv1.Batch{
			Processes: []*ingestv1.Process{proc(1, curl)},
			Sockets: []*ingestv1.Socket{
				wireSock(1, 1, client, 40001, false, 1),
				wireSock(2, 1, client, 40003, false, 3),
			},
		}},
	})
}

// entryBytes is the buffer size of one closed socket.
func entryBytes(t *testing.T) int64 {
	t.Helper()
	_, tab, _ := newEncoder(t, nil)
	apply(t, tab, open(1, probe.RoleClient, 1, curl, probe.Counters{}))
	tab.Apply(closeEv(1, probe.Counters{}))
	return tab.BufferedBytes()
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func TestBufferCap(t *testing.T) {
	closedEntryBytes := entryBytes(t)
	tests := []struct {
		name      string
		capBytes  int64
		closes    int
		announced bool // the sockets were reported before the outage
	}{
		{name: "under the cap", capBytes: 100 * closedEntryBytes, closes: 100},
		{name: "over the cap, never announced", capBytes: 100 * closedEntryBytes, closes: 1000},
		{name: "over the cap, announced", capBytes: 100 * closedEntryBytes, closes: 1000, announced: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			enc, tab, reg := newEncoder(t, func(c *sockets.Config) { c.BufferBytes = tc.capBytes })
			d := newDecoder()
			for i := range tc.closes {
				apply(t, tab, open(uint64(i+1), probe.RoleClient, uint16(i+1), curl, probe.Counters{}))
			}
			if tc.announced {
				if err := d.apply(enc.Report(now)); err != nil {
					t.Fatal(err)
				}
			}
			// Reducer away: every socket sends 10 bytes and closes.
			for i := range tc.closes {
				tab.Apply(closeEv(uint64(i+1), ctr(10, 0, 1, 0)))
				if got := tab.BufferedBytes(); got > tc.capBytes {
					t.Fatalf("buffer %d B over the cap %d B", got, tc.capBytes)
				}
			}
			wantDropped := max(0, tc.closes-int(tc.capBytes/closedEntryBytes))
			if got := metricValue(t, reg, "weir_collector_buffer_dropped_total"); int(got) != wantDropped {
				t.Fatalf("dropped %v, want %d", got, wantDropped)
			}
			if wantDropped > 0 {
				if got := metricValue(t, reg, "weir_collector_buffer_dropped_bytes_total"); int(got) != 10*wantDropped {
					t.Fatalf("dropped bytes %v, want %d", got, 10*wantDropped)
				}
			}
			if tc.announced {
				enc.Resync()
				d.newEpoch()
			}
			b := enc.Report(now)
			if err := d.apply(b); err != nil {
				t.Fatal(err)
			}
			if b.Loss.BufferDropped != uint64(wantDropped) {
				t.Fatalf("loss.buffer_dropped %d, want %d", b.Loss.BufferDropped, wantDropped)
			}
			// The newest sockets survive, with their bytes.
			if n := len(b.Stats.HandleGaps); n != tc.closes-wantDropped {
				t.Fatalf("%d stats entries, want %d", n, tc.closes-wantDropped)
			}
			if len(d.socks) != 0 || tab.BufferedBytes() != 0 {
				t.Fatalf("reducer still holds %d sockets, buffer %d B", len(d.socks), tab.BufferedBytes())
			}
		})
	}
}

func TestDroppedAnnouncedSocketStillCloses(t *testing.T) {
	closedEntryBytes := entryBytes(t)
	enc, tab, _ := newEncoder(t, func(c *sockets.Config) { c.BufferBytes = 2 * closedEntryBytes })
	d := newDecoder()
	for i := uint64(1); i <= 5; i++ {
		apply(t, tab, open(i, probe.RoleClient, uint16(i), curl, probe.Counters{}))
	}
	if err := d.apply(enc.Report(now)); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 5; i++ {
		tab.Apply(closeEv(i, ctr(10, 0, 1, 0)))
	}
	b := enc.Report(now)
	if err := d.apply(b); err != nil {
		t.Fatal(err)
	}
	if len(d.socks) != 0 || len(d.procs) != 0 {
		t.Fatalf("reducer still holds %d sockets, %d processes", len(d.socks), len(d.procs))
	}
	if len(b.Stats.HandleGaps) != 2 {
		t.Fatalf("final deltas of %d sockets, want the 2 newest", len(b.Stats.HandleGaps))
	}
}

// TestBufferPressure: the table asks for an early report once the closed
// sockets awaiting report pass half of the cap, and not before.
func TestBufferPressure(t *testing.T) {
	closedEntryBytes := entryBytes(t)
	_, tab, _ := newEncoder(t, func(c *sockets.Config) { c.BufferBytes = 10 * closedEntryBytes })
	for i := range 6 {
		apply(t, tab, open(uint64(i+1), probe.RoleClient, uint16(i+1), curl, probe.Counters{}))
	}
	for i := range 6 {
		tab.Apply(closeEv(uint64(i+1), ctr(10, 0, 1, 0)))
		select {
		case <-tab.Pressure():
			if i+1 <= 5 {
				t.Fatalf("pressure after %d closed sockets, want it only past 5 of 10", i+1)
			}
			return
		default:
		}
	}
	t.Fatal("no pressure with 6 of 10 closed sockets buffered")
}
