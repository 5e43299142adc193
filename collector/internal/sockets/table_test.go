package sockets

import (
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	"github.com/weir-project/weir/collector/internal/probe"
	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	localIP  = netip.MustParseAddr("10.0.0.1")
	remoteIP = netip.MustParseAddr("10.0.0.2")
	now      = time.Unix(1700000000, 0)
	curl     = probe.Owner{PID: 100, Comm: "curl"}
	nginx    = probe.Owner{PID: 200, Comm: "nginx"}
	nginxW   = probe.Owner{PID: 201, Comm: "nginx"}
)

const netns = 4026531840

// samples is a Sampler over a fixed slice of map entries.
type samples []probe.Sample

func (ss samples) Samples(fn func(probe.Sample)) error {
	for _, s := range ss {
		fn(s)
	}
	return nil
}

func newTable(t testing.TB, mutate func(*Config)) (*Table, *prometheus.Registry) {
	t.Helper()
	cfg := DefaultConfig()
	cfg.ProcRoot = "testdata/proc"
	if mutate != nil {
		mutate(&cfg)
	}
	reg := prometheus.NewPedanticRegistry()
	tab, err := New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	return tab, reg
}

func open(sock uint64, role probe.Role, lport uint16, owner probe.Owner, c probe.Counters) probe.Event {
	return probe.Event{
		Kind: probe.EventOpen, Role: role, Sock: sock,
		LocalAddr: localIP, LocalPort: lport, RemoteAddr: remoteIP, RemotePort: 80,
		NetNS: netns, Owner: owner, Counters: c,
	}
}

func closeEv(sock uint64, c probe.Counters) probe.Event {
	return probe.Event{Kind: probe.EventClose, Sock: sock, Counters: c}
}

func listen(port uint16, owner probe.Owner) probe.Event {
	return probe.Event{Kind: probe.EventListen, LocalAddr: netip.IPv4Unspecified(), LocalPort: port, NetNS: netns, Owner: owner}
}

func ctr(sent, recv, segOut, segIn uint64) probe.Counters {
	return probe.Counters{BytesAcked: sent, BytesReceived: recv, SegsDelivered: segOut, DataSegsIn: segIn}
}

func wireSock(h, proc uint32, role ingestv1.Role, lport uint32, newConn bool) *ingestv1.Socket {
	return &ingestv1.Socket{
		Handle: h, Process: proc, Role: role,
		LocalAddr: localIP.AsSlice(), LocalPort: lport, RemoteAddr: remoteIP.AsSlice(), RemotePort: 80,
		Netns: netns, NewConnection: newConn,
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

func runSteps(t *testing.T, tab *Table, steps []step) {
	t.Helper()
	d := newDecoder()
	for i, st := range steps {
		for _, ev := range st.events {
			tab.Apply(ev)
		}
		if st.samples != nil {
			if err := tab.Poll(st.samples); err != nil {
				t.Fatal(err)
			}
		}
		if st.resync {
			tab.Resync()
			d.newEpoch()
		}
		b := tab.Report(now)
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
		name  string
		steps []step
	}{
		{
			name: "open and close within one interval",
			steps: []step{{
				events: []probe.Event{
					open(1, probe.RoleClient, 40000, curl, ctr(0, 0, 1, 0)),
					closeEv(1, ctr(500, 7000, 3, 5)),
				},
				want: &ingestv1.Batch{
					Processes:          []*ingestv1.Process{{Handle: 1, Pid: 100, Comm: "curl", Cgroup: "/system.slice/curl.service"}},
					Sockets:            []*ingestv1.Socket{wireSock(1, 1, client, 40000, true)},
					Stats:              &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{500}, BytesReceived: []uint64{7000}, SegmentsSent: []uint64{2}, SegmentsReceived: []uint64{5}},
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
					samples: samples{{Sock: 1, Owner: curl, Counters: ctr(10, 20, 1, 1)}, {Sock: 2, Owner: curl}, {Sock: 3, Owner: curl, Counters: ctr(30, 0, 1, 0)}},
					want:    &ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1, 2}, BytesSent: []uint64{10, 30}, BytesReceived: []uint64{20, 0}, SegmentsSent: []uint64{1, 1}, SegmentsReceived: []uint64{1, 0}}},
				},
				{
					samples: samples{{Sock: 1, Owner: curl, Counters: ctr(10, 20, 1, 1)}, {Sock: 2, Owner: curl}, {Sock: 3, Owner: curl, Counters: ctr(35, 0, 2, 0)}},
					want:    &ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{3}, BytesSent: []uint64{5}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}}},
				},
			},
		},
		{
			name: "server owner from a sample",
			steps: []step{{
				events:  []probe.Event{open(1, probe.RoleServer, 80, probe.Owner{}, probe.Counters{})},
				samples: samples{{Sock: 1, Owner: nginxW, Counters: ctr(0, 100, 0, 1)}},
				want: &ingestv1.Batch{
					Processes: []*ingestv1.Process{{Handle: 1, Pid: 201, Comm: "nginx"}},
					Sockets:   []*ingestv1.Socket{wireSock(1, 1, server, 80, true)},
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
						Processes: []*ingestv1.Process{{Handle: 1, Pid: 200, Comm: "nginx", Cgroup: "/system.slice/nginx.service"}},
						Sockets:   []*ingestv1.Socket{wireSock(1, 1, server, 80, true)},
					},
				},
				{
					samples: samples{{Sock: 1, Owner: nginxW, Counters: ctr(0, 100, 0, 1)}},
					want: &ingestv1.Batch{
						Processes:          []*ingestv1.Process{{Handle: 2, Pid: 201, Comm: "nginx"}},
						Owners:             []*ingestv1.SocketOwner{{Socket: 1, Process: 2}},
						Stats:              &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{0}, BytesReceived: []uint64{100}, SegmentsSent: []uint64{0}, SegmentsReceived: []uint64{1}},
						ForgottenProcesses: []uint32{1},
					},
				},
				{
					samples: samples{{Sock: 1, Owner: nginxW, Counters: ctr(0, 100, 0, 1)}},
					want:    &ingestv1.Batch{},
				},
			},
		},
		{
			name: "server owner from the close of a short-lived socket",
			steps: []step{{
				events: []probe.Event{
					open(1, probe.RoleServer, 8080, probe.Owner{}, probe.Counters{}),
					{Kind: probe.EventClose, Sock: 1, Owner: nginxW, Counters: ctr(10, 20, 1, 1)},
				},
				want: &ingestv1.Batch{
					Processes:          []*ingestv1.Process{{Handle: 1, Pid: 201, Comm: "nginx"}},
					Sockets:            []*ingestv1.Socket{wireSock(1, 1, server, 8080, true)},
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
					want:   &ingestv1.Batch{Sockets: []*ingestv1.Socket{wireSock(1, 0, server, 8080, true)}},
				},
				{
					samples: samples{{Sock: 1, Owner: nginxW}},
					want: &ingestv1.Batch{
						Processes: []*ingestv1.Process{{Handle: 1, Pid: 201, Comm: "nginx"}},
						Owners:    []*ingestv1.SocketOwner{{Socket: 1, Process: 1}},
					},
				},
			},
		},
		{
			name: "socket found open: its counters are the baseline",
			steps: []step{
				{
					events: []probe.Event{open(1, probe.RoleUnknown, 5432, nginx, ctr(1e6, 2e6, 100, 200))},
					want: &ingestv1.Batch{
						Processes: []*ingestv1.Process{{Handle: 1, Pid: 200, Comm: "nginx", Cgroup: "/system.slice/nginx.service"}},
						Sockets:   []*ingestv1.Socket{wireSock(1, 1, ingestv1.Role_ROLE_UNSPECIFIED, 5432, false)},
					},
				},
				{
					samples: samples{{Sock: 1, Owner: nginx, Counters: ctr(1e6+10, 2e6, 101, 200)}},
					want:    &ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{10}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}}},
				},
			},
		},
		{
			name: "counter going backwards is clamped and rebased",
			steps: []step{
				{events: []probe.Event{open(1, probe.RoleClient, 40000, curl, probe.Counters{})}, samples: samples{{Sock: 1, Owner: curl, Counters: ctr(100, 100, 2, 2)}}},
				{
					samples: samples{{Sock: 1, Owner: curl, Counters: ctr(50, 150, 2, 3)}},
					want:    &ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{0}, BytesReceived: []uint64{50}, SegmentsSent: []uint64{0}, SegmentsReceived: []uint64{1}}},
				},
				{
					samples: samples{{Sock: 1, Owner: curl, Counters: ctr(60, 150, 3, 3)}},
					want:    &ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: []uint64{10}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}}},
				},
			},
		},
		{
			name: "open for a live socket closes the old one first",
			steps: []step{
				{events: []probe.Event{open(1, probe.RoleClient, 40000, curl, probe.Counters{})}},
				{
					events: []probe.Event{open(1, probe.RoleClient, 40001, curl, probe.Counters{})},
					want: &ingestv1.Batch{
						Sockets:       []*ingestv1.Socket{wireSock(2, 1, client, 40001, true)},
						ClosedSockets: []uint32{1},
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
			tab, _ := newTable(t, nil)
			runSteps(t, tab, tc.steps)
		})
	}
}

func TestMetrics(t *testing.T) {
	tab, reg := newTable(t, nil)
	tab.Apply(closeEv(99, probe.Counters{}))
	tab.Apply(open(1, probe.RoleClient, 1, curl, probe.Counters{}))
	tab.Apply(open(1, probe.RoleClient, 2, curl, probe.Counters{}))
	if err := tab.Poll(samples{{Sock: 1, Owner: curl, Counters: ctr(5, 5, 1, 1)}, {Sock: 2}}); err != nil {
		t.Fatal(err)
	}
	tab.Report(now)
	if err := tab.Poll(samples{{Sock: 1, Owner: curl, Counters: ctr(1, 5, 1, 1)}}); err != nil {
		t.Fatal(err)
	}
	tab.Report(now)
	for name, want := range map[string]float64{
		"weir_collector_untracked_closes_total":  1,
		"weir_collector_replaced_sockets_total":  1,
		"weir_collector_untracked_samples_total": 1,
		"weir_collector_baseline_resets_total":   1,
		"weir_collector_sockets":                 1,
	} {
		if got := testutil.ToFloat64(mustGather(t, reg, name)); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

func mustGather(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "x", Help: "x"}, func() float64 { return v })
		}
	}
	t.Fatalf("metric %s not found", name)
	return nil
}

func TestHandleLifetimes(t *testing.T) {
	tab, _ := newTable(t, nil)
	d := newDecoder()
	report := func() *ingestv1.Batch {
		t.Helper()
		b := tab.Report(now)
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
		tab.Apply(open(sock, probe.RoleClient, uint16(sock), curl, probe.Counters{}))
	}
	tab.Apply(open(5, probe.RoleClient, 5, nginx, probe.Counters{}))
	if got := handleOf(report()); !equalU32(got, []uint32{1, 2, 3, 4, 5}) {
		t.Fatalf("handles %v", got)
	}

	// Closing 3 and 2 frees their handles only after the batch; a socket
	// opened in the same interval gets a new one.
	tab.Apply(closeEv(3, probe.Counters{}))
	tab.Apply(closeEv(2, probe.Counters{}))
	tab.Apply(open(6, probe.RoleClient, 6, curl, probe.Counters{}))
	b := report()
	if got := handleOf(b); !equalU32(got, []uint32{6}) {
		t.Fatalf("handle while 2 and 3 close in the same batch: %v", got)
	}
	if !equalU32(b.ClosedSockets, []uint32{3, 2}) {
		t.Fatalf("closed %v", b.ClosedSockets)
	}

	// Then they are reused, smallest first.
	tab.Apply(open(7, probe.RoleClient, 7, curl, probe.Counters{}))
	tab.Apply(open(8, probe.RoleClient, 8, curl, probe.Counters{}))
	tab.Apply(open(9, probe.RoleClient, 9, curl, probe.Counters{}))
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
	tab.Apply(open(10, probe.RoleClient, 10, nginxW, probe.Counters{}))
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
			tab, _ := newTable(t, nil)
			d := newDecoder()
			type conn struct {
				sock     uint64
				port     uint16
				role     probe.Role
				base     probe.Counters // baseline: not to be counted
				cur      probe.Counters
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
				if c.role == probe.RoleUnknown {
					c.cur = ctr(rng.Uint64N(1e9), rng.Uint64N(1e9), rng.Uint64N(1e6), rng.Uint64N(1e6))
					c.base = c.cur
				} else {
					c.newConn = true
					c.cur.SegsDelivered = 1
					c.base.SegsDelivered = 1
				}
				evOwner := c.owner
				if c.role == probe.RoleServer {
					evOwner = probe.Owner{}
				}
				conns = append(conns, c)
				live[c.sock] = c
				tab.Apply(open(c.sock, c.role, c.port, evOwner, c.cur))
			}
			grow := func(c *conn) {
				c.cur.BytesAcked += rng.Uint64N(3000)
				c.cur.BytesReceived += rng.Uint64N(3000)
				c.cur.SegsDelivered += rng.Uint64N(3)
				c.cur.DataSegsIn += rng.Uint64N(3)
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
					smp = append(smp, probe.Sample{Sock: c.sock, Owner: c.owner, Counters: c.cur})
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
					tab.Resync()
					d.newEpoch()
				}
				b := tab.Report(now)
				if err := d.apply(b); err != nil {
					t.Fatalf("round %d: %v", round, err)
				}
			}
			// Final samples, then a report, so every live delta is out.
			var smp samples
			for _, c := range live {
				smp = append(smp, probe.Sample{Sock: c.sock, Owner: c.owner, Counters: c.cur})
			}
			if err := tab.Poll(smp); err != nil {
				t.Fatal(err)
			}
			if err := d.apply(tab.Report(now)); err != nil {
				t.Fatal(err)
			}
			for _, c := range conns {
				k := tupleKey(netns, localIP, c.port, remoteIP, 80)
				want := probe.Counters{
					BytesAcked:    c.cur.BytesAcked - c.base.BytesAcked,
					BytesReceived: c.cur.BytesReceived - c.base.BytesReceived,
					SegsDelivered: c.cur.SegsDelivered - c.base.SegsDelivered,
					DataSegsIn:    c.cur.DataSegsIn - c.base.DataSegsIn,
				}
				if got := d.totals[k]; got != want {
					t.Fatalf("socket %d (role %d, closed %v): decoded %+v, want %+v", c.sock, c.role, c.isClosed, got, want)
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
	tab, _ := newTable(t, nil)
	runSteps(t, tab, []step{
		{
			events:  []probe.Event{open(1, probe.RoleClient, 40001, curl, probe.Counters{}), open(2, probe.RoleClient, 40002, curl, probe.Counters{})},
			samples: samples{{Sock: 1, Owner: curl, Counters: ctr(100, 100, 1, 1)}, {Sock: 2, Owner: curl}},
		},
		// The reducer is away: sockets 1 grows, 2 closes with bytes, 3
		// opens. Nothing is reported until the resync.
		{
			events:  []probe.Event{closeEv(2, ctr(7, 0, 1, 0)), open(3, probe.RoleClient, 40003, curl, probe.Counters{})},
			samples: samples{{Sock: 1, Owner: curl, Counters: ctr(150, 100, 2, 1)}, {Sock: 3, Owner: curl, Counters: ctr(1, 1, 1, 1)}},
			resync:  true,
			want: &ingestv1.Batch{
				Processes: []*ingestv1.Process{{Handle: 1, Pid: 100, Comm: "curl", Cgroup: "/system.slice/curl.service"}},
				Sockets: []*ingestv1.Socket{
					wireSock(1, 1, client, 40001, false),
					wireSock(2, 1, client, 40002, false),
					wireSock(3, 1, client, 40003, true),
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
			Processes: []*ingestv1.Process{{Handle: 1, Pid: 100, Comm: "curl", Cgroup: "/system.slice/curl.service"}},
			Sockets: []*ingestv1.Socket{
				wireSock(1, 1, client, 40001, false),
				wireSock(2, 1, client, 40003, false),
			},
		}},
	})
}

func TestBufferCap(t *testing.T) {
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
			tab, reg := newTable(t, func(c *Config) { c.BufferBytes = tc.capBytes })
			d := newDecoder()
			for i := range tc.closes {
				tab.Apply(open(uint64(i+1), probe.RoleClient, uint16(i+1), curl, probe.Counters{}))
			}
			if tc.announced {
				if err := d.apply(tab.Report(now)); err != nil {
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
			if got := testutil.ToFloat64(mustGather(t, reg, "weir_collector_buffer_dropped_total")); int(got) != wantDropped {
				t.Fatalf("dropped %v, want %d", got, wantDropped)
			}
			if wantDropped > 0 {
				if got := testutil.ToFloat64(mustGather(t, reg, "weir_collector_buffer_dropped_bytes_total")); int(got) != 10*wantDropped {
					t.Fatalf("dropped bytes %v, want %d", got, 10*wantDropped)
				}
			}
			if tc.announced {
				tab.Resync()
				d.newEpoch()
			}
			b := tab.Report(now)
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
	tab, _ := newTable(t, func(c *Config) { c.BufferBytes = 2 * closedEntryBytes })
	d := newDecoder()
	for i := uint64(1); i <= 5; i++ {
		tab.Apply(open(i, probe.RoleClient, uint16(i), curl, probe.Counters{}))
	}
	if err := d.apply(tab.Report(now)); err != nil {
		t.Fatal(err)
	}
	for i := uint64(1); i <= 5; i++ {
		tab.Apply(closeEv(i, ctr(10, 0, 1, 0)))
	}
	b := tab.Report(now)
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

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
	}{
		{name: "buffer bytes", mutate: func(c *Config) { c.BufferBytes = 0 }},
		{name: "max listeners", mutate: func(c *Config) { c.MaxListeners = -1 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tc.mutate(&cfg)
			if _, err := New(cfg, prometheus.NewRegistry()); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}
