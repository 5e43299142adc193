// Package servicemap builds the service map that the Observer API, weirctl
// and /api/v1/map show: the workloads as nodes and the edges between them
// with their counters, from a snapshot of the edge table.
package servicemap

import (
	"cmp"
	"net/http"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// Source is what the map is made from; *match.Engine is one.
type Source interface {
	Snapshot(dst []aggregate.Series) []aggregate.Series
	Metrics() []aggregate.Metric
	Level() aggregate.Level
}

// Builder makes maps from a source.
type Builder struct {
	src Source
	now func() time.Time
}

// New returns a builder of maps of src's edges.
func New(src Source) *Builder { return &Builder{src: src, now: time.Now} }

// Map returns the current map.
func (b *Builder) Map() *observerv1.ServiceMap {
	return Build(b.now(), b.src.Level(), b.src.Metrics(), b.src.Snapshot(nil))
}

// ServeHTTP serves the current map as the JSON of GetServiceMapResponse, the
// same content as the Observer API's GetServiceMap.
func (b *Builder) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	out, err := MarshalJSON(&observerv1.GetServiceMapResponse{Map: b.Map()})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(out)
}

// MarshalJSON is the one JSON form of the Observer API's messages: proto
// field names, zero values included, so that /api/v1/map and weirctl's -o
// json print the same document.
func MarshalJSON(m proto.Message) ([]byte, error) {
	return jsonOptions.Marshal(m)
}

var jsonOptions = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// Build makes the map of series at time now. metrics and level describe the
// series.
func Build(now time.Time, level aggregate.Level, metrics []aggregate.Metric, series []aggregate.Series) *observerv1.ServiceMap {
	m := &observerv1.ServiceMap{Time: timestamppb.New(now), Level: level.String()}
	nodes := make(map[string]*observerv1.Node)
	m.Edges = make([]*observerv1.Edge, 0, len(series))
	for i := range series {
		e := NewEdge(level, metrics, &series[i])
		for _, n := range [...]struct {
			id string
			w  *observerv1.Workload
		}{{e.SourceId, e.Source}, {e.DestinationId, e.Destination}} {
			if _, ok := nodes[n.id]; !ok {
				nodes[n.id] = &observerv1.Node{Id: n.id, Workload: n.w}
			}
		}
		m.Edges = append(m.Edges, e)
	}
	SortEdges(m.Edges)
	m.Nodes = make([]*observerv1.Node, 0, len(nodes))
	for _, n := range nodes {
		m.Nodes = append(m.Nodes, n)
	}
	slices.SortFunc(m.Nodes, func(a, b *observerv1.Node) int { return strings.Compare(a.Id, b.Id) })
	return m
}

// SortEdges sorts edges by bytes, largest first, then by ids.
func SortEdges(edges []*observerv1.Edge) {
	slices.SortFunc(edges, func(a, b *observerv1.Edge) int {
		return cmp.Or(cmp.Compare(b.TcpBytes, a.TcpBytes),
			strings.Compare(a.SourceId, b.SourceId), strings.Compare(a.DestinationId, b.DestinationId))
	})
}

// NewEdge returns the edge of one series.
func NewEdge(level aggregate.Level, metrics []aggregate.Metric, s *aggregate.Series) *observerv1.Edge {
	e := &observerv1.Edge{
		Source:      NewWorkload(s.Key.Src),
		Destination: NewWorkload(s.Key.Dst),
		Values:      make(map[string]uint64, len(metrics)),
	}
	e.SourceId, e.DestinationId = ID(level, s.Key.Src), ID(level, s.Key.Dst)
	for id, md := range metrics {
		if md.Type == aggregate.MetricHistogram {
			continue
		}
		v := s.Values[id]
		if md.Sparse && v == 0 {
			continue // as on /metrics: a rare event that never happened
		}
		e.Values[md.Name] = v
		switch aggregate.MetricID(id) {
		case aggregate.TCPBytes:
			e.TcpBytes = v
		case aggregate.TCPPackets:
			e.TcpPackets = v
		case aggregate.TCPConnectionsOpened:
			e.TcpConnectionsOpened = v
		case aggregate.TCPActiveConnections:
			e.TcpActiveConnections = v
		}
	}
	return e
}

// NewWorkload returns the proto form of w.
func NewWorkload(w aggregate.Workload) *observerv1.Workload {
	return &observerv1.Workload{Name: w.Name, Kind: w.Kind, Namespace: w.Namespace, Zone: w.Zone, Node: w.Node, Pod: w.Pod}
}

// ID is a workload's node id in the map: kind/namespace/name, then node,
// pod and process at the levels that label them.
func ID(level aggregate.Level, w aggregate.Workload) string {
	id := w.Kind + "/" + w.Namespace + "/" + w.Name
	if level.ByNode() {
		id += "/" + w.Node
	}
	if level.ByPod() {
		id += "/" + w.Pod
	}
	if level.ByProcess() {
		id += "/" + w.Process
	}
	return id
}

// Diff returns what changed from prev to next: the edges that are new or
// whose values changed, the edges and nodes that went away, and the new
// nodes.
func Diff(prev, next *observerv1.ServiceMap) *observerv1.ServiceMapChange {
	c := &observerv1.ServiceMapChange{Time: next.GetTime()}
	type key struct{ s, d string }
	old := make(map[key]*observerv1.Edge, len(prev.GetEdges()))
	for _, e := range prev.GetEdges() {
		old[key{e.SourceId, e.DestinationId}] = e
	}
	for _, e := range next.GetEdges() {
		k := key{e.SourceId, e.DestinationId}
		o, ok := old[k]
		delete(old, k)
		if ok && sameValues(o, e) {
			continue
		}
		c.EdgesUpdated = append(c.EdgesUpdated, e)
	}
	for _, o := range old {
		c.EdgesRemoved = append(c.EdgesRemoved, &observerv1.Edge{SourceId: o.SourceId, DestinationId: o.DestinationId})
	}
	slices.SortFunc(c.EdgesRemoved, func(a, b *observerv1.Edge) int {
		return cmp.Or(strings.Compare(a.SourceId, b.SourceId), strings.Compare(a.DestinationId, b.DestinationId))
	})
	oldNodes := make(map[string]bool, len(prev.GetNodes()))
	for _, n := range prev.GetNodes() {
		oldNodes[n.Id] = true
	}
	for _, n := range next.GetNodes() {
		if !oldNodes[n.Id] {
			c.NodesAdded = append(c.NodesAdded, n)
		}
		delete(oldNodes, n.Id)
	}
	for id := range oldNodes {
		c.NodesRemoved = append(c.NodesRemoved, id)
	}
	slices.Sort(c.NodesRemoved)
	return c
}

// Empty reports whether c changes nothing.
func Empty(c *observerv1.ServiceMapChange) bool {
	return len(c.EdgesUpdated)+len(c.EdgesRemoved)+len(c.NodesAdded)+len(c.NodesRemoved) == 0
}

func sameValues(a, b *observerv1.Edge) bool {
	if len(a.Values) != len(b.Values) {
		return false
	}
	for k, v := range a.Values {
		if w, ok := b.Values[k]; !ok || w != v {
			return false
		}
	}
	return true
}
