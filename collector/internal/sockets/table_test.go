package sockets

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"

	"github.com/weir-project/weir/collector/internal/probe"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	localIP  = netip.MustParseAddr("10.0.0.1")
	remoteIP = netip.MustParseAddr("10.0.0.2")
	curl     = probe.Owner{PID: 100, StartTime: 5000, Comm: "curl"}
	nginx    = probe.Owner{PID: 200, StartTime: 6000, Comm: "nginx"}
	nginxW   = probe.Owner{PID: 201, StartTime: 6001, Comm: "nginx"}
)

const netns = 4026531840

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

func newTable(t testing.TB, mutate func(*Config)) (*Table, *prometheus.Registry) {
	t.Helper()
	cfg := DefaultConfig()
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
func apply(t testing.TB, tab *Table, ev probe.Event) {
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

// sample is the state of socket cookie with the endpoint of socket cookie
// on local port cookie.
func sample(cookie uint64, owner probe.Owner, c probe.Counters) probe.Sample {
	return probe.Sample{Endpoint: endpoint(cookie, probe.RoleClient, uint16(cookie)), Owner: owner, Counters: c}
}

func ctr(sent, recv uint64, segOut, segIn uint32) probe.Counters {
	return probe.Counters{BytesAcked: sent, BytesReceived: recv, SegsDelivered: segOut, DataSegsIn: segIn}
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			var v float64
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue() + m.GetGauge().GetValue()
			}
			return v
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func drain(tab *Table) Changes {
	var c Changes
	tab.Drain(&c)
	return c
}

// TestCounterArithmetic: segment counters are 32 bits and wrap, byte
// counters are 64 bits; a counter that goes backwards counts nothing, is
// counted as a regression, and its new value is the baseline.
func TestCounterArithmetic(t *testing.T) {
	tests := []struct {
		name            string
		prev, cur, next probe.Counters // baseline, then two reads
		want1, want2    Delta          // deltas after each read
		wantRegressions uint64
	}{
		{
			name: "u32 wrap", prev: ctr(0, 0, 0xFFFFFFF0, 0xFFFFFFFF), cur: ctr(0, 0, 0x10, 0), next: ctr(0, 0, 0x11, 2),
			want1: Delta{SegmentsSent: 0x20, SegmentsReceived: 1}, want2: Delta{SegmentsSent: 1, SegmentsReceived: 2},
		},
		{
			name: "u32 half range forward is a move", prev: ctr(0, 0, 0, 0), cur: ctr(0, 0, 1<<31, 0), next: ctr(0, 0, 1<<31+1, 0),
			want1: Delta{SegmentsSent: 1 << 31}, want2: Delta{SegmentsSent: 1},
		},
		{
			name: "u32 backwards is a regression", prev: ctr(0, 0, 100, 100), cur: ctr(0, 0, 90, 101), next: ctr(0, 0, 95, 101),
			want1: Delta{SegmentsReceived: 1}, want2: Delta{SegmentsSent: 5}, wantRegressions: 1,
		},
		{
			name: "u32 backwards across zero is a regression", prev: ctr(0, 0, 5, 0), cur: ctr(0, 0, 0xFFFFFFFE, 0), next: ctr(0, 0, 0xFFFFFFFF, 0),
			want1: Delta{}, want2: Delta{SegmentsSent: 1}, wantRegressions: 1,
		},
		{
			name: "u64 bytes", prev: ctr(1<<40, 7, 0, 0), cur: ctr(1<<40+1000, 9, 0, 0), next: ctr(1<<41, 9, 0, 0),
			want1: Delta{BytesSent: 1000, BytesReceived: 2}, want2: Delta{BytesSent: 1<<40 - 1000},
		},
		{
			name: "bytes backwards: rebased, counted once", prev: ctr(1000, 1000, 0, 0), cur: ctr(10, 1500, 0, 0), next: ctr(30, 1500, 0, 0),
			want1: Delta{BytesReceived: 500}, want2: Delta{BytesSent: 20}, wantRegressions: 1,
		},
		{
			name: "two regressions", prev: ctr(1000, 1000, 10, 10), cur: ctr(10, 10, 1, 1), next: ctr(5, 20, 2, 2),
			want1: Delta{}, want2: Delta{BytesReceived: 10, SegmentsSent: 1, SegmentsReceived: 1}, wantRegressions: 2,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tab, reg := newTable(t, nil)
			tab.Apply(existing(1, 1, curl, tc.prev))
			if c := drain(tab); len(c.Opened) != 1 || c.Opened[0].NewConnection || len(c.Deltas) != 0 {
				t.Fatalf("discovery: %+v", c)
			}
			for i, step := range []struct {
				read probe.Counters
				want Delta
			}{{tc.cur, tc.want1}, {tc.next, tc.want2}} {
				if err := tab.Poll(samples{sample(1, curl, step.read)}); err != nil {
					t.Fatal(err)
				}
				c := drain(tab)
				var got Delta
				if len(c.Deltas) > 0 {
					got = c.Deltas[0]
				}
				if step.want != (Delta{}) {
					step.want.Cookie = 1
				}
				if len(c.Deltas) > 1 || got != step.want {
					t.Fatalf("read %d: deltas %+v, want %+v", i+1, c.Deltas, step.want)
				}
			}
			c := drain(tab)
			if c.Loss.CounterRegressions != tc.wantRegressions {
				t.Fatalf("in-band regressions %d, want %d", c.Loss.CounterRegressions, tc.wantRegressions)
			}
			if got := metricValue(t, reg, "weir_collector_backward_reads_total"); got != float64(tc.wantRegressions) {
				t.Fatalf("weir_collector_backward_reads_total %v, want %d", got, tc.wantRegressions)
			}
		})
	}
}

// TestRegressionBeforeReport: a read that a later read of the same interval
// shows one byte too high (a sample racing the peer's FIN) is taken back
// before it is reported, so the byte is not counted; the regression is still
// counted.
func TestRegressionBeforeReport(t *testing.T) {
	tab, reg := newTable(t, nil)
	tab.Apply(existing(1, 1, curl, ctr(0, 0, 0, 0)))
	drain(tab)
	for _, read := range []probe.Counters{ctr(101, 51, 0, 0), ctr(100, 50, 0, 0)} {
		if err := tab.Poll(samples{sample(1, curl, read)}); err != nil {
			t.Fatal(err)
		}
	}
	c := drain(tab)
	if len(c.Deltas) != 1 || c.Deltas[0].BytesSent != 100 || c.Deltas[0].BytesReceived != 50 {
		t.Fatalf("deltas %+v, want 100 B sent and 50 received", c.Deltas)
	}
	if c.Loss.CounterRegressions != 1 {
		t.Fatalf("in-band regressions %d, want 1", c.Loss.CounterRegressions)
	}
	if got := metricValue(t, reg, "weir_collector_backward_reads_total"); got != 1 {
		t.Fatalf("weir_collector_backward_reads_total %v, want 1", got)
	}
}

func TestSocketCap(t *testing.T) {
	tab, reg := newTable(t, func(c *Config) { c.MaxSockets = 2 })
	apply(t, tab, open(1, probe.RoleClient, 1, curl, probe.Counters{}))
	apply(t, tab, open(2, probe.RoleClient, 2, curl, probe.Counters{}))
	apply(t, tab, open(3, probe.RoleClient, 3, curl, probe.Counters{})) // refused
	poll := func(ss ...probe.Sample) {
		t.Helper()
		if err := tab.Poll(samples(ss)); err != nil {
			t.Fatal(err)
		}
	}
	// Its samples are ignored, and not counted again.
	poll(sample(1, curl, ctr(1, 0, 1, 0)), sample(2, curl, ctr(1, 0, 1, 0)), sample(3, curl, ctr(5, 0, 1, 0)))
	poll(sample(1, curl, ctr(1, 0, 1, 0)), sample(2, curl, ctr(1, 0, 1, 0)), sample(3, curl, ctr(9, 0, 2, 0)))
	// A new connection first seen in a sample is refused too, once.
	poll(sample(2, curl, ctr(1, 0, 1, 0)), sample(1, curl, ctr(1, 0, 1, 0)), sample(3, curl, ctr(9, 0, 2, 0)), sample(4, curl, ctr(1, 1, 1, 1)))
	poll(sample(1, curl, ctr(1, 0, 1, 0)), sample(2, curl, ctr(1, 0, 1, 0)), sample(3, curl, ctr(9, 0, 2, 0)), sample(4, curl, ctr(2, 1, 1, 1)))
	// Its close is ignored, and is not an untracked close.
	tab.Apply(closeEv(3, ctr(10, 0, 3, 0)))
	c := drain(tab)
	if len(c.Opened) != 2 || c.Opened[0].Cookie != 1 || c.Opened[1].Cookie != 2 {
		t.Fatalf("opened %+v", c.Opened)
	}
	for _, d := range c.Deltas {
		if d.Cookie > 2 {
			t.Fatalf("delta of a refused socket: %+v", d)
		}
	}
	if c.Loss.SocketCap != 2 {
		t.Fatalf("in-band socket cap %d, want 2", c.Loss.SocketCap)
	}
	// Room again: a new socket is tracked.
	tab.Apply(closeEv(1, ctr(1, 0, 1, 0)))
	apply(t, tab, open(5, probe.RoleClient, 5, curl, probe.Counters{}))
	c = drain(tab)
	if len(c.Opened) != 1 || c.Opened[0].Cookie != 5 || !slices.Equal(c.Closed, []uint64{1}) {
		t.Fatalf("after a close: %+v", c)
	}
	for name, want := range map[string]float64{
		"weir_collector_socket_cap_total":        2,
		"weir_collector_untracked_closes_total":  0,
		"weir_collector_untracked_samples_total": 0, // socket 4 is a new connection
		"weir_collector_events_total":            7, // opens of 1 to 5, once each; closes of 3 and 1
		"weir_collector_sockets":                 2,
	} {
		if got := metricValue(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// TestSocketCapForgetsVanished: a refused socket that a complete poll no
// longer sees is forgotten, so the refused set stays bounded even when
// closes are lost.
func TestSocketCapForgetsVanished(t *testing.T) {
	tab, reg := newTable(t, func(c *Config) { c.MaxSockets = 1 })
	apply(t, tab, open(1, probe.RoleClient, 1, curl, probe.Counters{}))
	apply(t, tab, open(2, probe.RoleClient, 2, curl, probe.Counters{}))
	if err := tab.Poll(samples{sample(1, curl, probe.Counters{})}); err != nil {
		t.Fatal(err)
	}
	tab.mu.Lock()
	refused := len(tab.refused)
	tab.mu.Unlock()
	if refused != 0 {
		t.Fatalf("%d refused sockets remembered after they vanished", refused)
	}
	if got := metricValue(t, reg, "weir_collector_socket_cap_total"); got != 1 {
		t.Fatalf("socket cap %v, want 1", got)
	}
}

// errSampler fails after its samples.
type errSampler samples

func (e errSampler) SampleWalk(fn func(probe.Sample)) (bool, error) {
	_, _ = samples(e).SampleWalk(fn)
	return false, errors.New("iterate socket storage: interrupted")
}

func TestSocketCapKeepsRefusedOnFailedPoll(t *testing.T) {
	tab, reg := newTable(t, func(c *Config) { c.MaxSockets = 1 })
	apply(t, tab, open(1, probe.RoleClient, 1, curl, probe.Counters{}))
	apply(t, tab, open(2, probe.RoleClient, 2, curl, probe.Counters{}))
	if err := tab.Poll(errSampler{sample(1, curl, probe.Counters{})}); err == nil {
		t.Fatal("want the poll error")
	}
	if err := tab.Poll(samples{sample(1, curl, probe.Counters{}), sample(2, curl, probe.Counters{})}); err != nil {
		t.Fatal(err)
	}
	if got := metricValue(t, reg, "weir_collector_socket_cap_total"); got != 1 {
		t.Fatalf("socket cap %v, want 1: an incomplete poll forgot a refused socket", got)
	}
}

// fakeDiscoverer replays events found at start.
type fakeDiscoverer []probe.Event

func (f fakeDiscoverer) Discover(fn func(probe.Event)) error {
	for _, ev := range f {
		fn(ev)
	}
	return nil
}

// fakeScanner maps socket inodes to owners and counts its scans.
type fakeScanner struct {
	owners map[uint64]probe.Owner
	scans  int
}

func (f *fakeScanner) SocketOwners() (map[uint64]probe.Owner, error) {
	f.scans++
	return f.owners, nil
}

func TestDiscover(t *testing.T) {
	redis := probe.Owner{PID: 300, StartTime: 7000, Comm: "redis"}
	scanner := &fakeScanner{owners: map[uint64]probe.Owner{501: redis, 601: nginx}}
	tab, reg := newTable(t, func(c *Config) { c.Owners = scanner })
	withInode := func(ev probe.Event, inode uint64) probe.Event {
		ev.Inode = inode
		return ev
	}
	found := fakeDiscoverer{
		existing(1, 40001, curl, ctr(100, 200, 3, 4)),                                // owner known to the kernel
		withInode(existing(2, 6379, probe.Owner{}, ctr(5, 5, 1, 1)), 501),            // owner by inode
		withInode(existing(3, 443, probe.Owner{}, ctr(7, 7, 1, 1)), 502),             // inode not found: the listener's
		withInode(listen(443, probe.Owner{}), 601),                                   // a listener, its owner by inode
		withInode(existing(4, 40004, probe.Owner{}, probe.Counters{}), 503),          // nobody
		withInode(listen(8080, probe.Owner{}), 602),                                  // nobody
		{Kind: probe.EventExisting, Endpoint: endpoint(5, probe.RoleUnknown, 40005)}, // no inode
	}
	if err := tab.Discover(found); err != nil {
		t.Fatal(err)
	}
	if scanner.scans != 1 {
		t.Fatalf("%d /proc scans, want 1", scanner.scans)
	}
	c := drain(tab)
	wantOwners := map[uint64]probe.Owner{1: curl, 2: redis, 3: nginx}
	if len(c.Opened) != 5 {
		t.Fatalf("opened %+v", c.Opened)
	}
	for _, s := range c.Opened {
		if s.NewConnection {
			t.Errorf("socket %d found open announced as a new connection", s.Cookie)
		}
		if s.Owner != wantOwners[s.Cookie] {
			t.Errorf("socket %d owner %+v, want %+v", s.Cookie, s.Owner, wantOwners[s.Cookie])
		}
	}
	if len(c.Deltas) != 0 {
		t.Fatalf("counters found at start were counted: %+v", c.Deltas)
	}
	if got := metricValue(t, reg, "weir_collector_events_total"); got != 7 {
		t.Fatalf("events %v, want 7", got)
	}
}

func TestDiscoverWithoutUnownedSkipsScan(t *testing.T) {
	scanner := &fakeScanner{}
	tab, _ := newTable(t, func(c *Config) { c.Owners = scanner })
	if err := tab.Discover(fakeDiscoverer{existing(1, 1, curl, probe.Counters{}), listen(80, nginx)}); err != nil {
		t.Fatal(err)
	}
	if scanner.scans != 0 {
		t.Fatalf("%d scans, want none", scanner.scans)
	}
}

// TestNewConnectionFromSample: a socket the table does not know, sampled
// with a client or server role, was established since the previous poll:
// all its counters count, it is announced as a new connection, and it is
// not an untracked sample.
func TestNewConnectionFromSample(t *testing.T) {
	tab, reg := newTable(t, nil)
	if err := tab.Poll(samples{sample(1, curl, ctr(70, 60, 3, 2))}); err != nil {
		t.Fatal(err)
	}
	c := drain(tab)
	want := Socket{Endpoint: endpoint(1, probe.RoleClient, 1), Owner: curl, NewConnection: true}
	if len(c.Opened) != 1 || c.Opened[0] != want {
		t.Fatalf("opened %+v, want %+v", c.Opened, want)
	}
	if want := (Delta{Cookie: 1, Opened: 1, BytesSent: 70, BytesReceived: 60, SegmentsSent: 3, SegmentsReceived: 2}); len(c.Deltas) != 1 || c.Deltas[0] != want {
		t.Fatalf("deltas %+v, want %+v", c.Deltas, want)
	}
	if err := tab.Poll(samples{sample(1, curl, ctr(75, 60, 4, 2))}); err != nil {
		t.Fatal(err)
	}
	c = drain(tab)
	if want := (Delta{Cookie: 1, BytesSent: 5, SegmentsSent: 1}); len(c.Opened) != 0 || len(c.Deltas) != 1 || c.Deltas[0] != want {
		t.Fatalf("second poll %+v, want only delta %+v", c, want)
	}
	for name, want := range map[string]float64{
		"weir_collector_untracked_samples_total": 0,
		"weir_collector_events_total":            1, // kind open
		"weir_collector_duplicate_opens_total":   0,
	} {
		if got := metricValue(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// TestNewConnectionFromClose: a close of a socket the table does not know,
// with a client or server role, is a connection established and closed
// between two polls: announced as new with all its final counters, and
// closed, in one report.
func TestNewConnectionFromClose(t *testing.T) {
	tab, reg := newTable(t, nil)
	tab.Apply(probe.Event{Kind: probe.EventClose, Endpoint: endpoint(1, probe.RoleServer, 80), Owner: nginx, Counters: ctr(300, 200, 3, 2)})
	c := drain(tab)
	want := Socket{Endpoint: endpoint(1, probe.RoleServer, 80), Owner: nginx, NewConnection: true}
	if len(c.Opened) != 1 || c.Opened[0] != want {
		t.Fatalf("opened %+v, want %+v", c.Opened, want)
	}
	if want := (Delta{Cookie: 1, Opened: 1, BytesSent: 300, BytesReceived: 200, SegmentsSent: 3, SegmentsReceived: 2}); len(c.Deltas) != 1 || c.Deltas[0] != want {
		t.Fatalf("deltas %+v, want %+v", c.Deltas, want)
	}
	if !slices.Equal(c.Closed, []uint64{1}) || !slices.Equal(c.ClosedOpened, []int32{1}) || tab.Live() != 0 {
		t.Fatalf("closed %v (announced at %v) with %d live, want [1] (at [1]) and none", c.Closed, c.ClosedOpened, tab.Live())
	}
	// Without traffic it is still a connection to tell of.
	tab.Apply(probe.Event{Kind: probe.EventClose, Endpoint: endpoint(2, probe.RoleClient, 2), Owner: curl})
	if c := drain(tab); len(c.Opened) != 1 || !c.Opened[0].NewConnection || !slices.Equal(c.Closed, []uint64{2}) {
		t.Fatalf("idle connection: %+v", c)
	}
	// One without a role was found open before, yet never discovered nor
	// sampled: untracked, its counters only a baseline.
	tab.Apply(probe.Event{Kind: probe.EventClose, Endpoint: endpoint(3, probe.RoleUnknown, 3), Counters: ctr(1, 1, 1, 1)})
	if c := drain(tab); len(c.Opened)+len(c.Deltas)+len(c.Closed) != 0 {
		t.Fatalf("untracked close: %+v", c)
	}
	for name, want := range map[string]float64{
		"weir_collector_untracked_closes_total": 1,
		"weir_collector_events_total":           5, // two opens, three closes
	} {
		if got := metricValue(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// TestSampleAfterClose: a socket closed and awaiting report that is
// sampled again is the same socket, not a new one under the same cookie.
func TestSampleAfterClose(t *testing.T) {
	tab, _ := newTable(t, nil)
	apply(t, tab, open(1, probe.RoleClient, 1, curl, probe.Counters{}))
	drain(tab)
	tab.Apply(closeEv(1, ctr(10, 0, 1, 0)))
	if err := tab.Poll(samples{sample(1, curl, ctr(10, 0, 1, 0))}); err != nil {
		t.Fatal(err)
	}
	c := drain(tab)
	if len(c.Opened) != 0 || !slices.Equal(c.Closed, []uint64{1}) || tab.Live() != 0 {
		t.Fatalf("changes %+v, %d live; want socket 1 closed and nothing opened", c, tab.Live())
	}
}

func TestUntrackedSample(t *testing.T) {
	tab, reg := newTable(t, nil)
	smp := sample(9, nginxW, ctr(1000, 2000, 10, 20))
	smp.Role = probe.RoleUnknown // found open before, but missed by discovery
	if err := tab.Poll(samples{smp}); err != nil {
		t.Fatal(err)
	}
	c := drain(tab)
	want := Socket{Endpoint: endpoint(9, probe.RoleUnknown, 9), Owner: nginxW}
	if len(c.Opened) != 1 || c.Opened[0] != want || len(c.Deltas) != 0 {
		t.Fatalf("changes %+v, want %+v announced with nothing counted", c, want)
	}
	if got := metricValue(t, reg, "weir_collector_untracked_samples_total"); got != 1 {
		t.Fatalf("untracked samples %v, want 1", got)
	}
}

func TestOwnerChanges(t *testing.T) {
	tab, _ := newTable(t, nil)
	tab.Apply(listen(80, nginx))
	apply(t, tab, open(1, probe.RoleServer, 80, probe.Owner{}, probe.Counters{}))
	c := drain(tab)
	if len(c.Opened) != 1 || c.Opened[0].Owner != nginx {
		t.Fatalf("owner from the listener: %+v", c.Opened)
	}
	// The same process again is no change; a worker is, once.
	tab.Apply(probe.Event{Kind: probe.EventClose, Endpoint: probe.Endpoint{Cookie: 99}})
	for _, o := range []probe.Owner{nginx, nginxW, nginxW} {
		if err := tab.Poll(samples{sample(1, o, probe.Counters{})}); err != nil {
			t.Fatal(err)
		}
	}
	c = drain(tab)
	if len(c.Owners) != 1 || c.Owners[0] != (OwnerChange{Cookie: 1, Owner: nginxW}) {
		t.Fatalf("owner changes %+v", c.Owners)
	}
}

// TestVanished: a live socket that complete polls no longer see lost its
// close event; after two polls in a row it is closed with its last
// counters, and frees its slot under the cap.
func TestVanished(t *testing.T) {
	tab, reg := newTable(t, func(c *Config) { c.MaxSockets = 2 })
	apply(t, tab, open(1, probe.RoleClient, 1, curl, probe.Counters{}))
	apply(t, tab, open(2, probe.RoleClient, 2, curl, probe.Counters{}))
	poll := func(sampler Sampler) {
		t.Helper()
		_ = tab.Poll(sampler)
	}
	poll(samples{sample(1, curl, ctr(10, 0, 1, 0)), sample(2, curl, ctr(20, 0, 1, 0))})
	drain(tab)
	poll(samples{sample(1, curl, ctr(11, 0, 1, 0))})                                    // 2 missed once
	poll(samples{sample(2, curl, ctr(25, 0, 2, 0)), sample(1, curl, ctr(12, 0, 1, 0))}) // seen again
	poll(errSampler{sample(1, curl, ctr(12, 0, 1, 0))})                                 // failed: no verdict
	poll(partial{sample(1, curl, ctr(12, 0, 1, 0))})                                    // chunked: no verdict
	poll(samples{sample(1, curl, ctr(13, 0, 1, 0))})                                    // missed once
	poll(partial{sample(1, curl, ctr(13, 0, 1, 0))})                                    // chunked: no verdict
	poll(partial{sample(1, curl, ctr(13, 0, 1, 0))})                                    // chunked: no verdict
	if c := drain(tab); len(c.Closed) != 0 {
		t.Fatalf("closed after one missed complete poll: %+v", c)
	}
	poll(partial{sample(2, curl, ctr(25, 0, 2, 0))}) // a chunked walk saw it: alive
	poll(samples{sample(1, curl, ctr(13, 0, 1, 0))}) // missed once again
	if c := drain(tab); len(c.Closed) != 0 {
		t.Fatalf("closed though a chunked walk saw it in between: %+v", c)
	}
	poll(samples{sample(1, curl, ctr(14, 0, 1, 0))}) // missed twice in a row: closed
	c := drain(tab)
	if !slices.Equal(c.Closed, []uint64{2}) {
		t.Fatalf("closed %v, want [2]", c.Closed)
	}
	for _, d := range c.Deltas {
		if d.Cookie == 2 {
			t.Fatalf("delta of the vanished socket after its last sample: %+v", d)
		}
	}
	// Its slot is free again; its late close event is an untracked close.
	apply(t, tab, open(3, probe.RoleClient, 3, curl, probe.Counters{}))
	tab.Apply(closeEv(2, ctr(30, 0, 3, 0)))
	for name, want := range map[string]float64{
		"weir_collector_vanished_sockets_total": 1,
		"weir_collector_socket_cap_total":       0,
		"weir_collector_untracked_closes_total": 1,
		"weir_collector_sockets":                2,
	} {
		if got := metricValue(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// TestVanishedThenClosed: a socket that polls took for vanished, whose
// close event comes before the next report, is the same socket: its close
// counts only what moved since its last sample, and no second connection.
func TestVanishedThenClosed(t *testing.T) {
	tab, reg := newTable(t, nil)
	apply(t, tab, open(1, probe.RoleClient, 1, curl, probe.Counters{}))
	_ = tab.Poll(samples{sample(1, curl, ctr(10, 0, 1, 0))})
	drain(tab)
	_ = tab.Poll(samples{}) // missed once
	_ = tab.Poll(samples{}) // missed twice in a row: closed
	late := closeEv(1, ctr(10, 0, 1, 0))
	late.Endpoint = endpoint(1, probe.RoleClient, 1)
	tab.Apply(late)
	// A brief socket's close in the same interval is still a connection.
	brief := closeEv(2, ctr(7, 0, 1, 0))
	brief.Endpoint = endpoint(2, probe.RoleClient, 2)
	tab.Apply(brief)
	c := drain(tab)
	if !slices.Equal(c.Closed, []uint64{1, 2}) {
		t.Fatalf("closed %v, want [1 2]", c.Closed)
	}
	var sent uint64
	for _, d := range c.Deltas {
		sent += d.BytesSent
	}
	if sent != 7 {
		t.Fatalf("%d bytes sent in the report, want the brief socket's 7 only: %+v", sent, c.Deltas)
	}
	for name, want := range map[string]float64{
		"weir_collector_vanished_sockets_total": 1,
		"weir_collector_duplicate_opens_total":  1,
	} {
		if got := metricValue(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

// TestInvalidEndpoint: a socket without addresses is not tracked (the
// reducer would refuse the batch), and is counted once.
func TestInvalidEndpoint(t *testing.T) {
	tab, reg := newTable(t, nil)
	bad := probe.Sample{Endpoint: probe.Endpoint{Cookie: 5, Role: probe.RoleServer, LocalPort: 80, NetNS: netns}, Owner: curl, Counters: ctr(1, 1, 1, 1)}
	for range 3 {
		if err := tab.Poll(samples{bad, sample(1, curl, probe.Counters{})}); err != nil {
			t.Fatal(err)
		}
	}
	tab.Apply(closeEv(5, probe.Counters{}))
	c := drain(tab)
	if len(c.Opened) != 1 || c.Opened[0].Cookie != 1 {
		t.Fatalf("opened %+v, want only socket 1", c.Opened)
	}
	for name, want := range map[string]float64{
		"weir_collector_invalid_endpoints_total": 1,
		"weir_collector_untracked_samples_total": 0, // both were established while watched
		"weir_collector_untracked_closes_total":  0,
	} {
		if got := metricValue(t, reg, name); got != want {
			t.Errorf("%s = %v, want %v", name, got, want)
		}
	}
}

func TestMetricsLint(t *testing.T) {
	_, reg := newTable(t, nil)
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
	}{
		{name: "buffer bytes", mutate: func(c *Config) { c.BufferBytes = 0 }},
		{name: "max sockets", mutate: func(c *Config) { c.MaxSockets = 0 }},
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

// TestNetNS: a table restricted to one network namespace (--netns) tracks
// its sockets only; the events and samples of another are ignored and
// counted by source.
func TestNetNS(t *testing.T) {
	const other = netns + 1
	tab, reg := newTable(t, func(c *Config) { c.NetNS = map[uint32]struct{}{netns: {}} })
	foreign := func(ev probe.Event) probe.Event { ev.NetNS = other; return ev }
	tab.Apply(foreign(existing(1, 1001, curl, ctr(10, 10, 1, 1))))
	tab.Apply(foreign(listen(8080, nginx)))
	closed := closeEv(2, ctr(500, 50, 2, 2))
	closed.Endpoint = endpoint(2, probe.RoleClient, 1002)
	tab.Apply(foreign(closed))
	foreignSample := sample(3, curl, ctr(70, 7, 1, 1))
	foreignSample.NetNS = other
	if err := tab.Poll(samples{foreignSample, sample(4, curl, ctr(80, 8, 1, 1))}); err != nil {
		t.Fatal(err)
	}
	tab.Apply(existing(5, 1005, curl, ctr(1, 1, 1, 1)))
	var c Changes
	tab.Drain(&c)
	var got []uint64
	for _, s := range c.Opened {
		got = append(got, s.Cookie)
	}
	slices.Sort(got)
	if !slices.Equal(got, []uint64{4, 5}) {
		t.Errorf("opened %v, want the sockets of the namespace only: [4 5]", got)
	}
	want := `
# HELP weir_collector_netns_ignored_total Lifecycle events, samples and UDP records of sockets in network namespaces outside --netns, ignored; by source (event, sample, udp).
# TYPE weir_collector_netns_ignored_total counter
weir_collector_netns_ignored_total{source="event"} 3
weir_collector_netns_ignored_total{source="sample"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "weir_collector_netns_ignored_total"); err != nil {
		t.Error(err)
	}
}

// TestAnnouncesClosedDroppedFromFresh: while no report is made (the reducer
// away), the bound on the sockets awaiting announcement drops closed ones
// from it; those still in the buffer of closed sockets are announced at the
// next Drain all the same, in the order they were first seen, and the
// Drains after that find new ones as before.
func TestAnnouncesClosedDroppedFromFresh(t *testing.T) {
	const kept = 100
	tab, _ := newTable(t, func(c *Config) { c.BufferBytes = kept * closedEntryBytes })
	final := probe.Counters{BytesAcked: 200, BytesReceived: 1000}
	closeBrief := func(cookie uint64) {
		tab.Apply(probe.Event{Kind: probe.EventClose, Endpoint: endpoint(cookie, probe.RoleClient, uint16(cookie)), Owner: curl, Counters: final})
	}
	// Close sockets until the bound (2×(live+closed)+64) has just dropped
	// some of those still buffered from fresh, and not all of them.
	n := uint64(0)
	for unfresh := 0; unfresh == 0 || unfresh == kept; n++ {
		if n == 100_000 {
			t.Fatal("the bound on fresh never dropped a buffered closed socket")
		}
		closeBrief(10_000 + n)
		unfresh = 0
		for _, s := range tab.closed {
			if !s.inFresh {
				unfresh++
			}
		}
	}
	c := drain(tab)
	var opened []uint64
	for _, o := range c.Opened {
		opened = append(opened, o.Cookie)
	}
	want := make([]uint64, 0, kept)
	for i := n - kept; i < n; i++ {
		want = append(want, 10_000+i)
	}
	if !slices.Equal(opened, want) || !slices.Equal(c.Closed, want) {
		t.Fatalf("opened %v\nclosed %v\nwant both %v", opened, c.Closed, want)
	}
	if c.Loss.BufferDropped != n-kept {
		t.Fatalf("buffer dropped %d, want %d", c.Loss.BufferDropped, n-kept)
	}
	for i := range uint64(10) {
		closeBrief(20_000 + i)
	}
	c = drain(tab)
	if len(c.Opened) != 10 || len(c.Closed) != 10 || c.Opened[0].Cookie != 20_000 || c.Closed[9] != 20_009 {
		t.Fatalf("second drain: opened %v, closed %v; want 20000–20009 in both", c.Opened, c.Closed)
	}
}
