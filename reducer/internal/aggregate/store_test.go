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
			s, err := NewStore(ttl, prometheus.NewPedanticRegistry())
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
	s, err := NewStore(time.Minute, prometheus.NewPedanticRegistry())
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
