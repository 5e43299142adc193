package aggregate

import (
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
		{name: "traffic restarts the TTL", touch: func(e *Edge) { e.AddTraffic(t0.Add(time.Minute), 1, 1) }, after: ttl + 30*time.Second},
		{name: "traffic long ago", touch: func(e *Edge) { e.AddTraffic(t0.Add(time.Minute), 1, 1) }, after: ttl + time.Minute, expired: true},
		{name: "an active connection keeps the edge", touch: func(e *Edge) { e.Connect(t0) }, after: 24 * time.Hour},
		{name: "closed connection expires a TTL after the close", touch: func(e *Edge) {
			e.Connect(t0)
			e.Disconnect(t0.Add(time.Hour))
		}, after: time.Hour + ttl, expired: true},
		{name: "opened restarts the TTL", touch: func(e *Edge) { e.Open(t0.Add(time.Minute)) }, after: ttl},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewStore(ttl, 0, prometheus.NewPedanticRegistry())
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
	s, err := NewStore(time.Minute, 0, prometheus.NewPedanticRegistry())
	if err != nil {
		t.Fatal(err)
	}
	k := Key{Src: curl, Dst: nginx}
	e := s.Edge(t0, k)
	if again := s.Edge(t0, k); again != e {
		t.Fatal("the same key gave two edges")
	}
	e.AddTraffic(t0, 100, 2)
	e.AddTraffic(t0, 50, 1)
	e.Open(t0)
	e.Connect(t0)
	e.Connect(t0)
	e.Disconnect(t0)
	e.Disconnect(t0)
	e.Disconnect(t0) // never below zero
	s.Edge(t0, Key{Src: nginx, Dst: curl})
	got := map[Key]Series{}
	for _, sr := range s.Snapshot(nil) {
		got[sr.Key] = sr
	}
	want := map[Key]Series{
		k:                       {Key: k, Bytes: 150, Packets: 3, Opened: 1, Active: 0},
		{Src: nginx, Dst: curl}: {Key: Key{Src: nginx, Dst: curl}},
	}
	if len(got) != len(want) {
		t.Fatalf("snapshot has %d edges, want %d", len(got), len(want))
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%v: got %+v, want %+v", k, got[k], w)
		}
	}
	// After expiry the same key gives a new edge starting from zero.
	s.Expire(t0.Add(time.Hour))
	if fresh := s.Edge(t0.Add(time.Hour), k); fresh == e || fresh.bytes != 0 {
		t.Errorf("expired key reused the dead edge")
	}
}

func TestMaxSeriesFolds(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	s, err := NewStore(time.Minute, 2, reg)
	if err != nil {
		t.Fatal(err)
	}
	ext := func(ip string) Workload { return Workload{Name: ip, Kind: "external"} }
	a := s.Edge(t0, Key{Src: curl, Dst: nginx})
	b := s.Edge(t0, Key{Src: curl, Dst: ext("198.18.0.1")})
	// At the cap: a new destination folds into "other" of its kind.
	c := s.Edge(t0, Key{Src: curl, Dst: ext("198.18.0.2")})
	if want := (Key{Src: curl, Dst: Workload{Name: Other, Kind: "external"}}); c.Key() != want {
		t.Fatalf("folded key = %+v, want %+v", c.Key(), want)
	}
	// The next one of the same source and kind lands on the same edge.
	if d := s.Edge(t0, Key{Src: curl, Dst: ext("198.18.0.3")}); d != c {
		t.Errorf("second fold made another edge: %+v", d.Key())
	}
	// Another source gets its own folded edge, up to twice the cap.
	e := s.Edge(t0, Key{Src: ext("198.18.0.9"), Dst: curl})
	if want := (Key{Src: ext("198.18.0.9"), Dst: Workload{Name: Other, Kind: curl.Kind}}); e.Key() != want {
		t.Errorf("folded key = %+v, want %+v", e.Key(), want)
	}
	// At twice the cap both sides fold: one edge per pair of kinds.
	f := s.Edge(t0, Key{Src: ext("198.18.0.10"), Dst: curl})
	if want := (Key{Src: Workload{Name: Other, Kind: "external"}, Dst: Workload{Name: Other, Kind: curl.Kind}}); f.Key() != want {
		t.Errorf("doubly folded key = %+v, want %+v", f.Key(), want)
	}
	if g := s.Edge(t0, Key{Src: ext("198.18.0.11"), Dst: nginx}); g != f {
		t.Errorf("second double fold made another edge: %+v", g.Key())
	}
	// Existing edges are still found at the cap.
	if s.Edge(t0, Key{Src: curl, Dst: nginx}) != a || s.Edge(t0, Key{Src: curl, Dst: ext("198.18.0.1")}) != b {
		t.Error("an existing edge was folded")
	}
	if s.Len() != 5 {
		t.Errorf("edges = %d, want 5 (2 under the cap, 3 folded)", s.Len())
	}
	if got := testutil.ToFloat64(s.folded); got != 5 {
		t.Errorf("weir_reducer_series_folded_total = %v, want 5", got)
	}
}
