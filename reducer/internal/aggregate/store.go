// Package aggregate owns the table of edges between workloads: their traffic
// counters, their active connections and their expiry.
package aggregate

import (
	"fmt"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Workload is one side of an edge, as it appears in the metric labels.
// Node and Pod are labels only at the node and pod aggregation levels.
type Workload struct {
	Name      string
	Kind      string
	Namespace string
	Zone      string
	Node      string
	Pod       string
}

// Key identifies an edge: traffic from Src to Dst.
type Key struct {
	Src Workload
	Dst Workload
}

// Edge holds the values of one Key: one per metric of the store, indexed by
// MetricID, and the histograms. Its owner mutates it through the methods
// below while holding the lock that guards the Store.
type Edge struct {
	key    Key
	values []uint64
	hists  []*Histogram // by MetricID; nil until observed
	last   time.Time
	dead   bool
	store  *Store
}

// Key returns the edge's key.
func (e *Edge) Key() Key { return e.key }

// Dead reports whether the edge expired and left the store. Whoever still
// holds a pointer to it must look the key up again.
func (e *Edge) Dead() bool { return e.dead }

// Add adds v to the counter or gauge id.
func (e *Edge) Add(now time.Time, id MetricID, v uint64) {
	e.values[id] += v
	e.last = now
}

// AddPair adds va to the value a and vb to the value b, e.g. the bytes and
// the segments of one delta: the counting loop's one call per delta.
func (e *Edge) AddPair(now time.Time, a MetricID, va uint64, b MetricID, vb uint64) {
	e.values[a] += va
	e.values[b] += vb
	e.last = now
}

// Sub takes v from the gauge id, never below zero.
func (e *Edge) Sub(now time.Time, id MetricID, v uint64) {
	e.values[id] -= min(v, e.values[id])
	e.last = now
}

// Value returns the value of the counter or gauge id.
func (e *Edge) Value(id MetricID) uint64 { return e.values[id] }

// Observe adds v to the histogram id.
func (e *Edge) Observe(now time.Time, id MetricID, v float64) {
	h := e.hists[id]
	if h == nil {
		h = &Histogram{Counts: make([]uint64, len(e.store.metrics[id].Buckets)+1)}
		e.hists[id] = h
	}
	h.observe(e.store.metrics[id].Buckets, v)
	e.last = now
}

// live reports whether a gauge of the edge is above zero.
func (e *Edge) live() bool {
	for _, id := range e.store.gauges {
		if e.values[id] > 0 {
			return true
		}
	}
	return false
}

// Series is a copy of one edge's values, taken at scrape time.
type Series struct {
	Key Key
	// Values holds one value per metric, indexed by MetricID; histograms
	// have theirs in Hists.
	Values []uint64
	// Hists holds the histograms by MetricID; nil entries were never
	// observed. Nil when the store has no histogram metric.
	Hists []Histogram
}

// Value returns the value of metric id.
func (s *Series) Value(id MetricID) uint64 { return s.Values[id] }

// Other is the workload name that edges beyond the cardinality cap fold into.
const Other = "other"

// Config shapes a Store.
type Config struct {
	// TTL is how long an edge without a change and without a gauge above
	// zero stays in the table.
	TTL time.Duration
	// MaxEdges caps the table at about this many edges (see Store.Edge); 0
	// means no cap.
	MaxEdges int
	// Metrics are the values every edge holds, indexed by MetricID.
	// FlowMetrics() when nil.
	Metrics []Metric
	// Level is the aggregation level: the labels of a key.
	Level Level
}

// Store is the table of edges. It is not safe for concurrent use: its owner
// guards it with the same lock as the flows that point into it.
type Store struct {
	ttl      time.Duration
	maxEdges int
	metrics  []Metric
	gauges   []MetricID
	hists    bool
	level    Level
	edges    map[Key]*Edge
	gauge    prometheus.Gauge
	expired  prometheus.Counter
	folded   prometheus.Counter
}

// NewStore returns an empty store and registers its self-metrics with reg.
func NewStore(cfg Config, reg prometheus.Registerer) (*Store, error) {
	if cfg.Metrics == nil {
		cfg.Metrics = FlowMetrics()
	}
	s := &Store{
		ttl:      cfg.TTL,
		maxEdges: cfg.MaxEdges,
		metrics:  cfg.Metrics,
		level:    cfg.Level,
		edges:    make(map[Key]*Edge),
		gauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_reducer_edges",
			Help: "Edges between workloads currently in the table.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_edges_expired_total",
			Help: "Edges removed after going quiet for the series TTL.",
		}),
		folded: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_series_folded_total",
			Help: "New edges folded into dst_workload=\"other\" because the table was at its --max-series cap.",
		}),
	}
	for i, m := range s.metrics {
		switch m.Type {
		case MetricGauge:
			s.gauges = append(s.gauges, MetricID(i))
		case MetricHistogram:
			s.hists = true
		}
	}
	for _, c := range []prometheus.Collector{s.gauge, s.expired, s.folded} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register edge metrics: %w", err)
		}
	}
	return s, nil
}

// Metrics returns the metrics of the store's edges, indexed by MetricID.
func (s *Store) Metrics() []Metric { return s.metrics }

// Level returns the store's aggregation level.
func (s *Store) Level() Level { return s.level }

// Edge returns the edge of k, creating it when absent. The key loses the
// fields its level does not label. When the table is at its cap, a new edge
// folds into the destination workload "other" of the same kind. The folded
// edges may take the table up to twice the cap; past that the source folds
// into "other" as well, so the table grows by at most one more edge per pair
// of kinds.
func (s *Store) Edge(now time.Time, k Key) *Edge {
	k = k.project(s.level)
	if e, ok := s.edges[k]; ok {
		return e
	}
	if s.maxEdges > 0 && len(s.edges) >= s.maxEdges {
		s.folded.Inc()
		k.Dst = Workload{Name: Other, Kind: k.Dst.Kind}
		if e, ok := s.edges[k]; ok {
			return e
		}
		if len(s.edges) >= 2*s.maxEdges {
			k.Src = Workload{Name: Other, Kind: k.Src.Kind}
			if e, ok := s.edges[k]; ok {
				return e
			}
		}
	}
	e := &Edge{key: k, last: now, store: s, values: make([]uint64, len(s.metrics))}
	if s.hists {
		e.hists = make([]*Histogram, len(s.metrics))
	}
	s.edges[k] = e
	s.gauge.Set(float64(len(s.edges)))
	return e
}

// Len returns the number of edges.
func (s *Store) Len() int { return len(s.edges) }

// Expire removes the edges that have no gauge above zero and no change for
// the TTL, and returns how many it removed.
func (s *Store) Expire(now time.Time) int {
	n := 0
	for k, e := range s.edges {
		if now.Sub(e.last) < s.ttl || e.live() {
			continue
		}
		e.dead = true
		delete(s.edges, k)
		n++
	}
	if n > 0 {
		s.expired.Add(float64(n))
		s.gauge.Set(float64(len(s.edges)))
	}
	return n
}

// Snapshot appends a copy of every edge to dst and returns it.
func (s *Store) Snapshot(dst []Series) []Series {
	values := make([]uint64, len(s.edges)*len(s.metrics))
	for _, e := range s.edges {
		v := values[:len(s.metrics):len(s.metrics)]
		values = values[len(s.metrics):]
		copy(v, e.values)
		sr := Series{Key: e.key, Values: v}
		if s.hists {
			sr.Hists = make([]Histogram, len(s.metrics))
			for i, h := range e.hists {
				if h != nil {
					sr.Hists[i] = Histogram{Counts: slices.Clone(h.Counts), Count: h.Count, Sum: h.Sum}
				}
			}
		}
		dst = append(dst, sr)
	}
	return dst
}

// Matches reports whether k is the key of e at the store's level.
func (e *Edge) Matches(k Key) bool { return e.key == k.project(e.store.level) }
