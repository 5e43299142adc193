package aggregate

import (
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	curl  = Workload{Name: "curl", Kind: "process"}
	nginx = Workload{Name: "nginx", Kind: "process"}
	t0    = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
)

// addTraffic counts bytes and segments on e.
func addTraffic(e *Edge, now time.Time, bytes, segments uint64) {
	e.AddPair(now, TCPBytes, bytes, TCPPackets, segments)
}

func TestExpire(t *testing.T) {
	const ttl = 5 * time.Minute
	tests := []struct {
		name    string
		touch   func(e *Edge)
		after   time.Duration
		expired bool
	}{
		{name: "new edge within the TTL", touch: func(*Edge) {}, after: ttl - time.Second},
		{name: "new edge quiet for the TTL", touch: func(*Edge) {}, after: ttl, expired: true},
		{name: "traffic restarts the TTL", touch: func(e *Edge) { addTraffic(e, t0.Add(time.Minute), 1, 1) }, after: ttl + 30*time.Second},
		{name: "traffic long ago", touch: func(e *Edge) { addTraffic(e, t0.Add(time.Minute), 1, 1) }, after: ttl + time.Minute, expired: true},
		{name: "an active connection keeps the edge", touch: func(e *Edge) { e.Add(t0, TCPActiveConnections, 1) }, after: 24 * time.Hour},
		{name: "closed connection expires a TTL after the close", touch: func(e *Edge) {
			e.Add(t0, TCPActiveConnections, 1)
			e.Sub(t0.Add(time.Hour), TCPActiveConnections, 1)
		}, after: time.Hour + ttl, expired: true},
		{name: "opened restarts the TTL", touch: func(e *Edge) { e.Add(t0.Add(time.Minute), TCPConnectionsOpened, 1) }, after: ttl},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewStore(Config{TTL: ttl}, prometheus.NewPedanticRegistry())
			if err != nil {
				t.Fatal(err)
			}
			e := s.Edge(t0, Key{Src: curl, Dst: nginx})
			tc.touch(e)
			n := s.Expire(t0.Add(tc.after))
			if got := n == 1; got != tc.expired {
				t.Fatalf("expired=%v, want %v", got, tc.expired)
			}
			if e.Dead() != tc.expired || (s.Len() == 0) != tc.expired {
				t.Errorf("dead=%v len=%d after expiry=%v", e.Dead(), s.Len(), tc.expired)
			}
			if got := testutil.ToFloat64(s.expired); got != float64(n) {
				t.Errorf("expired counter %v, want %d", got, n)
			}
			if got := testutil.ToFloat64(s.gauge); got != float64(s.Len()) {
				t.Errorf("edges gauge %v, want %d", got, s.Len())
			}
		})
	}
}

func TestEdgeCounters(t *testing.T) {
	s, err := NewStore(Config{TTL: time.Minute}, prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	k := Key{Src: curl, Dst: nginx}
	e := s.Edge(t0, k)
	if again := s.Edge(t0, k); again != e {
		t.Fatal("the same key gave two edges")
	}
	addTraffic(e, t0, 100, 2)
	addTraffic(e, t0, 50, 1)
	e.Add(t0, TCPConnectionsOpened, 1)
	e.Add(t0, TCPActiveConnections, 1)
	e.Add(t0, TCPActiveConnections, 1)
	e.Sub(t0, TCPActiveConnections, 1)
	e.Sub(t0, TCPActiveConnections, 1)
	e.Sub(t0, TCPActiveConnections, 1) // never below zero
	s.Edge(t0, Key{Src: nginx, Dst: curl})
	got := map[Key]Series{}
	for _, sr := range s.Snapshot(nil) {
		got[sr.Key] = sr
	}
	want := map[Key][]uint64{
		k:                       {TCPBytes: 150, TCPPackets: 3, TCPConnectionsOpened: 1, TCPActiveConnections: 0, DNSDuration: 0},
		{Src: nginx, Dst: curl}: {DNSDuration: 0},
	}
	if len(got) != len(want) {
		t.Fatalf("snapshot has %d edges, want %d", len(got), len(want))
	}
	for k, w := range want {
		if !slices.Equal(got[k].Values, w) {
			t.Errorf("%v: got %+v, want %+v", k, got[k], w)
		}
	}
	// After expiry the same key gives a new edge starting from zero.
	s.Expire(t0.Add(time.Hour))
	if fresh := s.Edge(t0.Add(time.Hour), k); fresh == e || fresh.Value(TCPBytes) != 0 {
		t.Errorf("expired key reused the dead edge")
	}
}

// snapshotBytes renders a store's listed edges with their bytes and active
// connections.
func snapshotBytes(s *Store) map[string][2]uint64 {
	out := make(map[string][2]uint64)
	for _, sr := range s.Snapshot(nil) {
		out[sr.Key.Src.Name+" -> "+sr.Key.Dst.Name] = [2]uint64{sr.Value(TCPBytes), sr.Value(TCPActiveConnections)}
	}
	return out
}

func TestMaxSeriesFolds(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	s, err := NewStore(Config{TTL: time.Minute, MaxEdges: 2}, reg)
	if err != nil {
		t.Fatal(err)
	}
	ext := func(ip string) Workload { return Workload{Name: ip, Kind: "external"} }
	a := s.Edge(t0, Key{Src: curl, Dst: nginx})
	b := s.Edge(t0, Key{Src: curl, Dst: ext("198.18.0.1")})
	// At the cap: new destinations fold into "other" of their kind, the
	// same "other" edge for the same source and kind.
	c := s.Edge(t0, Key{Src: curl, Dst: ext("198.18.0.2")})
	d := s.Edge(t0, Key{Src: curl, Dst: ext("198.18.0.3")})
	// Another source gets its own "other" edge, up to twice the cap; then
	// both sides fold: one edge per pair of kinds.
	e := s.Edge(t0, Key{Src: ext("198.18.0.9"), Dst: curl})
	f := s.Edge(t0, Key{Src: ext("198.18.0.10"), Dst: curl})
	g := s.Edge(t0, Key{Src: ext("198.18.0.11"), Dst: nginx})
	for i, x := range []*Edge{a, b, c, d, e, f, g} {
		x.AddPair(t0, TCPBytes, uint64(i+1), TCPPackets, 1)
	}
	c.Add(t0, TCPActiveConnections, 1)
	want := map[string][2]uint64{
		"curl -> nginx":       {1, 0},
		"curl -> 198.18.0.1":  {2, 0},
		"curl -> other":       {3 + 4, 1},
		"198.18.0.9 -> other": {5, 0},
		"other -> other":      {6 + 7, 0},
	}
	if got := snapshotBytes(s); !maps.Equal(got, want) {
		t.Errorf("edges %v, want %v", got, want)
	}
	// Existing edges are still found at the cap.
	if s.Edge(t0, Key{Src: curl, Dst: nginx}) != a || s.Edge(t0, Key{Src: curl, Dst: ext("198.18.0.2")}) != c {
		t.Error("an edge was not found again")
	}
	if got := testutil.ToFloat64(s.folded); got != 5 {
		t.Errorf("weir_reducer_series_folded_total = %v, want 5", got)
	}
}

// TestMaxSeriesKeepsActive: the cap keeps the most active edges. A folded
// edge with more than twice the traffic of a listed one takes its place at
// the next Expire; the sum of the series stays the same, and the active
// connections move with the edge.
func TestMaxSeriesKeepsActive(t *testing.T) {
	s, err := NewStore(Config{TTL: time.Hour, MaxEdges: 1}, prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ext := func(ip string) Workload { return Workload{Name: ip, Kind: "external"} }
	quiet := s.Edge(t0, Key{Src: curl, Dst: ext("198.18.0.1")})
	busy := s.Edge(t0, Key{Src: curl, Dst: ext("198.18.0.2")}) // folded
	quiet.AddPair(t0, TCPBytes, 10, TCPPackets, 1)
	quiet.Add(t0, TCPActiveConnections, 1)
	busy.AddPair(t0, TCPBytes, 1000, TCPPackets, 1)
	busy.Add(t0, TCPActiveConnections, 2)
	before := snapshotBytes(s)
	if want := (map[string][2]uint64{"curl -> 198.18.0.1": {10, 1}, "curl -> other": {1000, 2}}); !maps.Equal(before, want) {
		t.Fatalf("before: %v, want %v", before, want)
	}
	s.Expire(t0.Add(time.Second))
	busy.AddPair(t0, TCPBytes, 5, TCPPackets, 1)
	quiet.AddPair(t0, TCPBytes, 1, TCPPackets, 1)
	want := map[string][2]uint64{
		"curl -> 198.18.0.2": {5, 2},             // listed from zero, with its connections
		"curl -> other":      {1000 + 10 + 1, 1}, // its past, and the folded edge's
	}
	if got := snapshotBytes(s); !maps.Equal(got, want) {
		t.Errorf("after: %v, want %v", got, want)
	}
	busy.Sub(t0, TCPActiveConnections, 2)
	quiet.Sub(t0, TCPActiveConnections, 1)
	if got := snapshotBytes(s); got["curl -> 198.18.0.2"][1] != 0 || got["curl -> other"][1] != 0 {
		t.Errorf("active connections after the closes: %v", got)
	}
}

func TestHistogramAndLevels(t *testing.T) {
	metrics := append(FlowMetrics(), Metric{Name: "weir_tcp_rtt_seconds", Help: "RTT.", Type: MetricHistogram, Buckets: []float64{0.001, 0.01, 0.1}})
	rtt := MetricID(len(metrics) - 1)
	s, err := NewStore(Config{TTL: time.Minute, Metrics: metrics, Level: LevelWorkload}, prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	podA := Workload{Name: "web", Kind: "deployment", Node: "n1", Pod: "web-1"}
	podB := Workload{Name: "web", Kind: "deployment", Node: "n2", Pod: "web-2"}
	// At the workload level two pods of one deployment share an edge.
	e := s.Edge(t0, Key{Src: podA, Dst: curl})
	if s.Edge(t0, Key{Src: podB, Dst: curl}) != e {
		t.Fatal("pods of one workload got two edges at the workload level")
	}
	if got := e.Key().Src; got.Node != "" || got.Pod != "" {
		t.Errorf("workload-level key keeps node/pod: %+v", got)
	}
	for _, v := range []float64{0.0005, 0.001, 0.05, 3} {
		e.Observe(t0, rtt, v)
	}
	snap := s.Snapshot(nil)
	if len(snap) != 1 {
		t.Fatalf("%d series, want 1", len(snap))
	}
	h := snap[0].Hists[rtt]
	if h.Count != 4 || h.Sum != 3.0515 || !slices.Equal(h.Counts, []uint64{2, 0, 1, 1}) {
		t.Errorf("histogram %+v", h)
	}
	if got := h.Cumulative(metrics[rtt].Buckets); got[0.001] != 2 || got[0.01] != 2 || got[0.1] != 3 {
		t.Errorf("cumulative %v", got)
	}
	// Observing the live edge does not change the snapshot.
	e.Observe(t0, rtt, 0.0001)
	if snap[0].Hists[rtt].Count != 4 {
		t.Error("snapshot shares the edge's histogram")
	}

	node, err := NewStore(Config{TTL: time.Minute, Level: LevelNode}, prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if node.Edge(t0, Key{Src: podA, Dst: curl}) == node.Edge(t0, Key{Src: podB, Dst: curl}) {
		t.Error("pods on two nodes share an edge at the node level")
	}
	k := node.Edge(t0, Key{Src: podA, Dst: curl}).Key()
	if k.Src.Node != "n1" || k.Src.Pod != "" {
		t.Errorf("node-level key %+v", k.Src)
	}
	if got, want := len(k.Values(LevelNode, nil)), len(LevelNode.Labels()); got != want {
		t.Errorf("%d values for %d labels", got, want)
	}
	if got := LevelPod.Labels(); got[len(got)-1] != "dst_pod" || len(got) != 12 {
		t.Errorf("pod labels %v", got)
	}
	// The process level is the workload labels and the process, not the
	// node or pod.
	if got := LevelProcess.Labels(); got[len(got)-1] != "dst_process" || len(got) != 10 {
		t.Errorf("process labels %v", got)
	}
	var l Level
	if err := l.UnmarshalText([]byte("process")); err != nil || l != LevelProcess {
		t.Errorf("parse process: %v, %v", l, err)
	}
	proc, err := NewStore(Config{TTL: time.Minute, Level: LevelProcess}, prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	a, b := podA, podA
	a.Process, b.Process = "curl", "python3"
	if proc.Edge(t0, Key{Src: a, Dst: curl}) == proc.Edge(t0, Key{Src: b, Dst: curl}) {
		t.Error("two processes share an edge at the process level")
	}
	if k := proc.Edge(t0, Key{Src: a, Dst: curl}).Key(); k.Src.Process != "curl" || k.Src.Node != "" || k.Src.Pod != "" {
		t.Errorf("process-level key %+v", k.Src)
	}
	if node.Edge(t0, Key{Src: a, Dst: curl}) != node.Edge(t0, Key{Src: b, Dst: curl}) {
		t.Error("two processes split an edge at the node level")
	}
}
