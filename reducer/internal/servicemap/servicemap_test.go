package servicemap

import (
	"encoding/json"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
	"github.com/weir-project/weir/reducer/internal/aggregate"
)

func series(src, dst string, bytes, active uint64) aggregate.Series {
	return aggregate.Series{
		Key: aggregate.Key{
			Src: aggregate.Workload{Name: src, Kind: "deployment", Namespace: "shop"},
			Dst: aggregate.Workload{Name: dst, Kind: "deployment", Namespace: "shop"},
		},
		Values: []uint64{aggregate.TCPBytes: bytes, aggregate.TCPPackets: bytes / 100, aggregate.TCPConnectionsOpened: 1, aggregate.TCPActiveConnections: active, aggregate.DNSDuration: 0},
	}
}

type fakeSource []aggregate.Series

func (f fakeSource) Snapshot(dst []aggregate.Series) []aggregate.Series { return append(dst, f...) }
func (f fakeSource) Metrics() []aggregate.Metric                        { return aggregate.FlowMetrics() }
func (f fakeSource) Level() aggregate.Level                             { return aggregate.LevelWorkload }

func TestBuild(t *testing.T) {
	now := time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)
	m := Build(now, aggregate.LevelWorkload, aggregate.FlowMetrics(), []aggregate.Series{
		series("web", "api", 500, 1), series("api", "db", 9000, 2), series("web", "db", 500, 0),
	})
	var order []string
	for _, e := range m.Edges {
		order = append(order, e.SourceId+">"+e.DestinationId)
	}
	want := []string{"deployment/shop/api>deployment/shop/db", "deployment/shop/web>deployment/shop/api", "deployment/shop/web>deployment/shop/db"}
	if len(order) != 3 || order[0] != want[0] || order[1] != want[1] || order[2] != want[2] {
		t.Errorf("edge order %v, want %v", order, want)
	}
	if len(m.Nodes) != 3 || m.Nodes[0].Id != "deployment/shop/api" || m.Nodes[2].Workload.Name != "web" {
		t.Errorf("nodes %v", m.Nodes)
	}
	e := m.Edges[0]
	if e.TcpBytes != 9000 || e.TcpPackets != 90 || e.TcpConnectionsOpened != 1 || e.TcpActiveConnections != 2 ||
		e.Values["weir_tcp_bytes_total"] != 9000 || len(e.Values) != 4 {
		t.Errorf("edge %v", e)
	}
	if m.Level != "workload" || !m.Time.AsTime().Equal(now) {
		t.Errorf("level %q time %v", m.Level, m.Time.AsTime())
	}
}

func TestDiff(t *testing.T) {
	now := time.Now()
	metrics := aggregate.FlowMetrics()
	prev := Build(now, 0, metrics, []aggregate.Series{series("web", "api", 500, 1), series("api", "db", 9000, 2)})
	next := Build(now, 0, metrics, []aggregate.Series{series("web", "api", 500, 1), series("web", "cache", 10, 1)})
	c := Diff(prev, next)
	if len(c.EdgesUpdated) != 1 || c.EdgesUpdated[0].DestinationId != "deployment/shop/cache" {
		t.Errorf("updated %v", c.EdgesUpdated)
	}
	if len(c.EdgesRemoved) != 1 || c.EdgesRemoved[0].SourceId != "deployment/shop/api" || c.EdgesRemoved[0].TcpBytes != 0 {
		t.Errorf("removed %v", c.EdgesRemoved)
	}
	if len(c.NodesAdded) != 1 || c.NodesAdded[0].Id != "deployment/shop/cache" || len(c.NodesRemoved) != 1 || c.NodesRemoved[0] != "deployment/shop/db" {
		t.Errorf("nodes added %v removed %v", c.NodesAdded, c.NodesRemoved)
	}
	if !Empty(Diff(next, next)) {
		t.Error("a map differs from itself")
	}
}

func TestServeHTTP(t *testing.T) {
	b := New(fakeSource{series("web", "api", 500, 1)})
	rec := httptest.NewRecorder()
	b.ServeHTTP(rec, httptest.NewRequest("GET", "/api/v1/map", nil))
	if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
		t.Errorf("content type %q", ct)
	}
	var resp observerv1.GetServiceMapResponse
	if err := protojson.Unmarshal(rec.Body.Bytes(), &resp); err != nil {
		t.Fatal(err)
	}
	want := Build(resp.Map.Time.AsTime(), 0, aggregate.FlowMetrics(), []aggregate.Series{series("web", "api", 500, 1)})
	if !proto.Equal(resp.Map, want) {
		t.Errorf("got %v, want %v", resp.Map, want)
	}
	// Plain JSON with proto names, for scripts and the /map page.
	var plain map[string]map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &plain); err != nil {
		t.Fatal(err)
	}
	if _, ok := plain["map"]["edges"]; !ok {
		t.Errorf("no map.edges in %s", rec.Body)
	}
}
