package observer

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
	"github.com/weir-project/weir/reducer/internal/grpcserver"
	"github.com/weir-project/weir/reducer/internal/match"
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(streamsEnv); spec != "" {
		os.Exit(runStreams(spec)) // a consumer process of BenchmarkIngestObservers
	}
	goleak.VerifyTestMain(m)
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// fixture is an engine with one node's session, an observer of it served on
// a loopback gRPC server, and a client.
type fixture struct {
	engine *match.Engine
	sess   *match.Session
	obs    *Observer
	reg    *prometheus.Registry
	client observerv1.ObserverServiceClient
	seq    uint64
}

func newFixture(t *testing.T, cfg Config) *fixture {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	e, err := match.New(match.Config{SeriesTTL: time.Minute, SessionTTL: time.Minute}, reg, discard)
	if err != nil {
		t.Fatal(err)
	}
	sess, err := e.Open(match.Hello{Node: "node-a", BootID: "b", Epoch: 1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	obs, err := New(cfg, e, reg, reg, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := obs.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	obs.Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = conn.Close()
		_ = obs.Shutdown(context.Background())
		srv.Stop()
	})
	return &fixture{engine: e, sess: sess, obs: obs, reg: reg, client: observerv1.NewObserverServiceClient(conn)}
}

var (
	clientEP = netip.MustParseAddrPort("198.18.0.1:40000")
	serverEP = netip.MustParseAddrPort("198.18.0.2:8080")
)

// apply applies a batch with the next sequence number.
func (f *fixture) apply(t *testing.T, b match.Batch) {
	t.Helper()
	f.seq++
	b.Sequence = f.seq
	if err := f.engine.Apply(f.sess, &b); err != nil {
		t.Fatal(err)
	}
}

// openConn announces both ends of a connection (handles 1 and 2, processes
// "client" and "server") and counts traffic both ways.
func (f *fixture) openConn(t *testing.T) {
	f.apply(t, match.Batch{
		Processes: []match.Process{{Handle: 1, PID: 10, Comm: "client"}, {Handle: 2, PID: 20, Comm: "server"}},
		Sockets: []match.Socket{
			{Handle: 1, Process: 1, Role: match.RoleClient, Local: clientEP, Remote: serverEP, NewConnection: true},
			{Handle: 2, Process: 2, Role: match.RoleServer, Local: serverEP, Remote: clientEP, NewConnection: true},
		},
		Stats: match.Stats{Handles: []uint32{1}, BytesSent: []uint64{1000}, BytesReceived: []uint64{200}, SegmentsSent: []uint64{2}, SegmentsReceived: []uint64{1}},
	})
}

func (f *fixture) closeConn(t *testing.T) {
	f.apply(t, match.Batch{Closed: []uint32{1, 2}})
}

func recvFlow(t *testing.T, s grpc.ServerStreamingClient[observerv1.WatchFlowsResponse]) *observerv1.WatchFlowsResponse {
	t.Helper()
	r, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestWatchFlows(t *testing.T) {
	f := newFixture(t, DefaultConfig())
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := f.client.WatchFlows(ctx, &observerv1.WatchFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFollowers(t, f.obs, 1)
	f.openConn(t)
	f.closeConn(t)

	var got []*observerv1.Flow
	for len(got) < 4 {
		r := recvFlow(t, s)
		if r.GetFlow() == nil {
			t.Fatalf("unexpected %v", r)
		}
		got = append(got, r.GetFlow())
	}
	want := []struct {
		typ       observerv1.FlowEventType
		src, dst  string
		srcPort   uint32
		bytes     uint64
		total     uint64
		srcWLName string
	}{
		{observerv1.FlowEventType_FLOW_EVENT_TYPE_OPEN, "198.18.0.1", "198.18.0.2", 40000, 0, 0, "client"},
		{observerv1.FlowEventType_FLOW_EVENT_TYPE_UPDATE, "198.18.0.1", "198.18.0.2", 40000, 1000, 1200, "client"},
		{observerv1.FlowEventType_FLOW_EVENT_TYPE_UPDATE, "198.18.0.2", "198.18.0.1", 8080, 200, 1200, "server"},
		{observerv1.FlowEventType_FLOW_EVENT_TYPE_CLOSE, "198.18.0.1", "198.18.0.2", 40000, 0, 1200, "client"},
	}
	for i, w := range want {
		g := got[i]
		if g.Type != w.typ || g.Source.Ip != w.src || g.Destination.Ip != w.dst || g.Source.Port != w.srcPort ||
			g.Bytes != w.bytes || g.TotalBytes != w.total || g.Source.GetWorkload().GetName() != w.srcWLName {
			t.Errorf("event %d = %v, want %+v", i, g, w)
		}
		if g.Source.GetWorkload().GetKind() != "process" || g.Source.Node != "node-a" {
			t.Errorf("event %d: source %v, want a process on node-a", i, g.Source)
		}
	}

	// The ring keeps them for since/last.
	recent := func(req *observerv1.WatchFlowsRequest) []*observerv1.Flow {
		t.Helper()
		s, err := f.client.WatchFlows(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		var out []*observerv1.Flow
		for {
			r, err := s.Recv()
			if err == io.EOF {
				return out
			}
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, r.GetFlow())
		}
	}
	if r := recent(&observerv1.WatchFlowsRequest{Last: 2}); len(r) != 2 || r[1].Type != observerv1.FlowEventType_FLOW_EVENT_TYPE_CLOSE {
		t.Errorf("last 2: %v", r)
	}
	if r := recent(&observerv1.WatchFlowsRequest{Since: got[0].Time}); len(r) != 4 {
		t.Errorf("since the open: %d events, want 4", len(r))
	}
	if r := recent(&observerv1.WatchFlowsRequest{}); len(r) != 0 {
		t.Errorf("neither since nor last: %d events, want none", len(r))
	}
	if r := recent(&observerv1.WatchFlowsRequest{Last: 10, Allowlist: []*observerv1.FlowFilter{{Workload: []string{"nobody"}}}}); len(r) != 0 {
		t.Errorf("filtered out: %v", r)
	}
	if r := recent(&observerv1.WatchFlowsRequest{Last: 10, Allowlist: []*observerv1.FlowFilter{{Port: []uint32{8080}, Kind: []string{"process"}}}}); len(r) != 4 {
		t.Errorf("port 8080 and kind process: %d events, want 4", len(r))
	}
	if r := recent(&observerv1.WatchFlowsRequest{Last: 10, Denylist: []*observerv1.FlowFilter{{Workload: []string{"server"}}}}); len(r) != 0 {
		t.Errorf("denied: %v", r)
	}
}

func waitStreams(t *testing.T, o *Observer, n int32) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for o.streams.Load() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d streams, want %d", o.streams.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitFollowers waits until n WatchFlows streams follow the hub's events.
func waitFollowers(t *testing.T, o *Observer, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		o.hub.mu.Lock()
		got, following := len(o.hub.subs), o.hub.events != nil
		o.hub.mu.Unlock()
		if got == n && (following || n == 0) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d followers (following %v), want %d", got, following, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestOpenWithoutTrafficAfterGrace(t *testing.T) {
	cfg := DefaultConfig()
	cfg.OpenGrace = 50 * time.Millisecond
	f := newFixture(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := f.client.WatchFlows(ctx, &observerv1.WatchFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFollowers(t, f.obs, 1)
	f.apply(t, match.Batch{
		Processes: []match.Process{{Handle: 1, Comm: "client"}},
		Sockets:   []match.Socket{{Handle: 1, Process: 1, Role: match.RoleClient, Local: clientEP, Remote: serverEP, NewConnection: true}},
	})
	r := recvFlow(t, s).GetFlow()
	if r.GetType() != observerv1.FlowEventType_FLOW_EVENT_TYPE_OPEN || r.Source.Port != 40000 || r.Destination.Port != 8080 {
		t.Errorf("open %v", r)
	}
}

func TestHubLostEvents(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	h := newHub(DefaultConfig(), m, nopSource{})
	s := &sub{ch: make(chan item, 3)}
	h.subscribe(s, &observerv1.WatchFlowsRequest{Follow: true})
	flows := make([]*observerv1.Flow, 10)
	for i := range flows {
		flows[i] = &observerv1.Flow{Bytes: uint64(i)}
	}
	h.publish(flows)
	// 3 fit; 7 are lost and counted.
	if got := testutil.ToFloat64(m.lost); got != 7 {
		t.Errorf("lost counter %v, want 7", got)
	}
	for i := range 3 {
		if it := <-s.ch; it.flow != flows[i] {
			t.Errorf("item %d: %v", i, it)
		}
	}
	// The consumer resumed: the next tick reports the loss before anything else.
	h.reportLost()
	h.publish([]*observerv1.Flow{{Bytes: 99}})
	if it := <-s.ch; it.flow != nil || it.lost != 7 {
		t.Errorf("got %+v, want a report of 7 lost", it)
	}
	if it := <-s.ch; it.flow.GetBytes() != 99 {
		t.Errorf("got %+v, want the next event", it)
	}
	// The ring kept every event.
	if r := h.recent(&observerv1.WatchFlowsRequest{Last: 100}, &sub{}); len(r) != 11 {
		t.Errorf("ring holds %d, want 11", len(r))
	}
}

func TestRingWraps(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, _ := newMetrics(reg)
	cfg := DefaultConfig()
	cfg.RingSize = 4
	h := newHub(cfg, m, nopSource{})
	for i := range 10 {
		h.publish([]*observerv1.Flow{{Bytes: uint64(i)}})
	}
	r := h.recent(&observerv1.WatchFlowsRequest{Last: 100}, &sub{})
	if len(r) != 4 || r[0].Bytes != 6 || r[3].Bytes != 9 {
		t.Errorf("ring %v, want 6..9", r)
	}
}

func TestMaxStreams(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxStreams = 1
	f := newFixture(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if _, err := f.client.WatchServiceMap(ctx, &observerv1.WatchServiceMapRequest{}); err != nil {
		t.Fatal(err)
	}
	waitStreams(t, f.obs, 1)
	s, err := f.client.WatchFlows(ctx, &observerv1.WatchFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Recv()
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("second stream: %v, want RESOURCE_EXHAUSTED", err)
	}
	if got := testutil.ToFloat64(f.obs.metrics.refused); got != 1 {
		t.Errorf("refused %v, want 1", got)
	}
}

func TestServiceMapAndStatus(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MapInterval = 50 * time.Millisecond
	f := newFixture(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	w, err := f.client.WatchServiceMap(ctx, &observerv1.WatchServiceMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	first, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if len(first.GetSnapshot().GetEdges()) != 0 {
		t.Errorf("first snapshot %v, want empty", first)
	}
	f.openConn(t)
	for {
		r, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		c := r.GetChange()
		if len(c.GetEdgesUpdated()) == 0 {
			continue
		}
		if len(c.EdgesUpdated) != 2 || len(c.NodesAdded) != 2 {
			t.Errorf("change %v, want two edges and two nodes", c)
		}
		break
	}
	m, err := f.client.GetServiceMap(ctx, &observerv1.GetServiceMapRequest{})
	if err != nil {
		t.Fatal(err)
	}
	edges := m.GetMap().GetEdges()
	if len(edges) != 2 || edges[0].TcpBytes != 1000 || edges[0].Source.Name != "client" || edges[0].TcpActiveConnections != 1 ||
		edges[0].TcpConnectionsOpened != 1 || edges[1].TcpBytes != 200 || edges[0].Values["weir_tcp_bytes_total"] != 1000 {
		t.Errorf("map %v", m)
	}
	st, err := f.client.GetStatus(ctx, &observerv1.GetStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st.Series != 2 || st.Flows != 1 || st.Sockets != 2 || st.Observers != 1 || st.MaxObservers != 16 || st.Level != "workload" {
		t.Errorf("status %v", st)
	}
	var sawObserverLoss bool
	for _, l := range st.Losses {
		if l.Metric == "weir_reducer_observer_lost_total" {
			sawObserverLoss = true
		}
	}
	if !sawObserverLoss {
		t.Errorf("losses %v lack weir_reducer_observer_lost_total", st.Losses)
	}
}

func TestCollectors(t *testing.T) {
	c := NewCollectors()
	ctx := c.TagRPC(context.Background(), &stats.RPCTagInfo{FullMethodName: ingestStream})
	hello, err := proto.Marshal(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Hello{Hello: &ingestv1.Hello{
		NodeName: "node-a", CollectorVersion: "1.2.3", KernelRelease: "6.18.0", Epoch: 7,
	}}})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	c.HandleRPC(ctx, &stats.InPayload{Payload: &grpcserver.Frame{Data: hello}, RecvTime: t0})
	c.HandleRPC(ctx, &stats.InPayload{Payload: &grpcserver.Frame{Data: []byte{0xff}}, RecvTime: t0.Add(time.Second)})
	other := c.TagRPC(context.Background(), &stats.RPCTagInfo{FullMethodName: "/weir.observer.v1.ObserverService/GetStatus"})
	c.HandleRPC(other, &stats.InPayload{Payload: &grpcserver.Frame{Data: hello}})
	got := c.List(t0.Add(3 * time.Second))
	if len(got) != 1 || got[0].Node != "node-a" || got[0].Version != "1.2.3" || got[0].KernelRelease != "6.18.0" ||
		got[0].Epoch != 7 || got[0].Lag.AsDuration() != 2*time.Second || got[0].Messages != 2 {
		t.Errorf("collectors %v", got)
	}
	c.HandleRPC(ctx, &stats.End{})
	if got := c.List(time.Now()); len(got) != 0 {
		t.Errorf("after the end: %v", got)
	}
}

// nopSource is an engine without events.
type nopSource struct{}

func (nopSource) Subscribe(string, int) (<-chan match.Event, func()) {
	return make(chan match.Event), func() {}
}

func (nopSource) DrainTraffic(dst []match.Traffic, _ int) ([]match.Traffic, uint64) { return dst, 0 }

func TestFollowOnDemand(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Linger = 100 * time.Millisecond
	f := newFixture(t, cfg)
	if got := testutil.ToFloat64(f.obs.metrics.following); got != 0 {
		t.Fatalf("following %v before any stream", got)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	s, err := f.client.WatchFlows(ctx, &observerv1.WatchFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFollowers(t, f.obs, 1)
	if got := testutil.ToFloat64(f.obs.metrics.following); got != 1 {
		t.Errorf("following %v with a stream", got)
	}
	f.openConn(t)
	if r := recvFlow(t, s).GetFlow(); r.GetType() != observerv1.FlowEventType_FLOW_EVENT_TYPE_OPEN {
		t.Errorf("first event %v", r)
	}
	cancel()
	waitStreams(t, f.obs, 0)
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(f.obs.metrics.following) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("still following after the linger")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The ring still holds what was seen.
	r, err := f.client.WatchFlows(t.Context(), &observerv1.WatchFlowsRequest{Last: 1})
	if err != nil {
		t.Fatal(err)
	}
	if got := recvFlow(t, r).GetFlow(); got == nil {
		t.Error("no recent event after the linger")
	}
}

// lossySource is an engine that reports losses of its subscriber.
type lossySource struct {
	nopSource
	lost atomic.Uint64
}

func (l *lossySource) EventsLost(string) uint64 { return l.lost.Load() }

func TestEngineLossReported(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m, _ := newMetrics(reg)
	src := &lossySource{}
	src.lost.Store(5) // before the hub followed: not its loss
	h := newHub(DefaultConfig(), m, src)
	s := &sub{ch: make(chan item, 4)}
	h.subscribe(s, &observerv1.WatchFlowsRequest{Follow: true})
	src.lost.Store(12)
	h.reportEngineLoss()
	if it := <-s.ch; it.flow != nil || it.lost != 7 || !it.reducer {
		t.Errorf("got %+v, want a reducer loss of 7", it)
	}
	h.reportEngineLoss()
	select {
	case it := <-s.ch:
		t.Errorf("reported again: %+v", it)
	default:
	}
}

// TestWatchFlowsTraffic follows the traffic of open connections, which the
// observer reads from the engine's counts rather than from events: the
// open with its workloads, one update per direction and read, the rest at
// the close; and, for a connection opened before anyone followed, updates
// with totals since its start.
func TestWatchFlowsTraffic(t *testing.T) {
	cfg := DefaultConfig()
	cfg.UpdateInterval = 50 * time.Millisecond
	cfg.OpenPoll = 10 * time.Millisecond
	f := newFixture(t, cfg)
	older := netip.MustParseAddrPort("198.18.0.1:40001")
	f.apply(t, match.Batch{
		Processes: []match.Process{{Handle: 3, PID: 11, Comm: "client"}, {Handle: 4, PID: 21, Comm: "server"}},
		Sockets: []match.Socket{
			{Handle: 3, Process: 3, Role: match.RoleClient, Local: older, Remote: serverEP, NewConnection: true},
			{Handle: 4, Process: 4, Role: match.RoleServer, Local: serverEP, Remote: older, NewConnection: true},
		},
		Stats: match.Stats{Handles: []uint32{3}, BytesSent: []uint64{5000}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{5}, SegmentsReceived: []uint64{0}},
	})
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := f.client.WatchFlows(ctx, &observerv1.WatchFlowsRequest{Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	waitFollowers(t, f.obs, 1)

	type ev struct {
		typ          observerv1.FlowEventType
		srcPort      uint32
		bytes, total uint64
	}
	next := func() ev {
		t.Helper()
		r := recvFlow(t, s).GetFlow()
		if r == nil {
			t.Fatal("not a flow")
		}
		if r.Source.GetWorkload().GetKind() != "process" || r.Destination.GetWorkload().GetKind() != "process" || r.Source.Node != "node-a" {
			t.Errorf("%v: ends not resolved", r)
		}
		return ev{r.Type, r.Source.Port, r.Bytes, r.TotalBytes}
	}
	expect := func(want ...ev) {
		t.Helper()
		for i, w := range want {
			if g := next(); g != w {
				t.Errorf("event %d: %+v, want %+v", i, g, w)
			}
		}
	}
	const (
		open   = observerv1.FlowEventType_FLOW_EVENT_TYPE_OPEN
		update = observerv1.FlowEventType_FLOW_EVENT_TYPE_UPDATE
		closed = observerv1.FlowEventType_FLOW_EVENT_TYPE_CLOSE
	)
	// The older connection: no open, its totals from its start.
	f.apply(t, match.Batch{Stats: match.Stats{Handles: []uint32{3}, BytesSent: []uint64{10}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}}})
	expect(ev{update, 40001, 10, 5010})

	f.openConn(t) // 1000 up, 200 down
	expect(ev{open, 40000, 0, 0}, ev{update, 40000, 1000, 1200}, ev{update, 8080, 200, 1200})
	f.apply(t, match.Batch{Stats: match.Stats{Handles: []uint32{1}, BytesSent: []uint64{50}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}}})
	expect(ev{update, 40000, 50, 1250})
	// What was counted after the last read comes with the close.
	f.apply(t, match.Batch{Stats: match.Stats{Handles: []uint32{1}, BytesSent: []uint64{7}, BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}},
		Closed: []uint32{1, 2}})
	expect(ev{update, 40000, 7, 1257}, ev{closed, 40000, 0, 1257})
}
