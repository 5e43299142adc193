// Package aggregate owns the table of edges between workloads: their traffic
// counters, their active connections and their expiry.
package aggregate

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Workload is one side of an edge, as it appears in the metric labels.
// Node, Pod and Process are labels only at the levels that name them.
type Workload struct {
	Name      string
	Kind      string
	Namespace string
	Zone      string
	Node      string
	Pod       string
	// Process is the comm of the process that owns the end's socket, as
	// its collector reported it; empty for an end with no process (e.g.
	// external).
	Process string
}

// Key identifies an edge: traffic from Src to Dst.
type Key struct {
	Src Workload
	Dst Workload
}

// Edge holds the values of one Key: one per metric of the store, indexed by
// MetricID, and the histograms. Its owner mutates it through the methods
// below while holding the lock that guards the Store.
//
// Beyond the store's cap an edge is folded: it lists no series of its own,
// and what it counts goes into the edge of its "other" key (into), while
// it keeps its own gauges (to take them along when it is unfolded) and its
// recent activity. The store swaps folded and listed edges by activity.
type Edge struct {
	key    Key
	values []uint64
	hists  []*Histogram // by MetricID; nil until observed
	last   time.Time
	dead   bool
	store  *Store
	into   *Edge  // the "other" edge that a folded edge counts into; nil when listed
	recent uint64 // the first metric's (bytes') increase since the last rebalance
	slot   EdgeRef
	refs   int32 // references held (Store.Hold); its slot is kept while any is
}

// Key returns the edge's key.
func (e *Edge) Key() Key { return e.key }

// Dead reports whether the edge expired and left the store. Whoever still
// holds a pointer to it must look the key up again.
func (e *Edge) Dead() bool { return e.dead }

// Add adds v to the counter or gauge id.
func (e *Edge) Add(now time.Time, id MetricID, v uint64) {
	e.last = now
	if id == 0 {
		e.recent += v
	}
	if e.into != nil {
		e.into.Add(now, id, v)
		if !e.store.isGauge[id] {
			return
		}
	}
	e.values[id] += v
}

// AddPair adds va to the value a and vb to the value b, e.g. the bytes and
// the segments of one delta: the counting loop's one call per delta.
func (e *Edge) AddPair(now time.Time, a MetricID, va uint64, b MetricID, vb uint64) {
	if e.into != nil {
		e.Add(now, a, va)
		e.Add(now, b, vb)
		return
	}
	e.values[a] += va
	e.values[b] += vb
	if a == 0 {
		e.recent += va
	}
	e.last = now
}

// Sub takes v from the gauge id, never below zero.
func (e *Edge) Sub(now time.Time, id MetricID, v uint64) {
	if e.into != nil {
		e.into.Sub(now, id, min(v, e.values[id]))
	}
	e.values[id] -= min(v, e.values[id])
	e.last = now
}

// Value returns the value of the counter or gauge id.
func (e *Edge) Value(id MetricID) uint64 { return e.values[id] }

// Observe adds v to the histogram id.
func (e *Edge) Observe(now time.Time, id MetricID, v float64) {
	if e.into != nil {
		e.into.Observe(now, id, v)
		e.last = now
		return
	}
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
	// Hists holds the histograms by MetricID; zero entries were never
	// observed. Nil when no histogram of the edge was ever observed.
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
	edges    map[Key]*Edge // listed: their series are on /metrics
	folds    map[Key]*Edge // folded into an "other" edge
	slots    []*Edge       // by EdgeRef, of the edges that references hold; 0 is unused
	free     []EdgeRef
	isGauge  []bool // by MetricID
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
		folds:    make(map[Key]*Edge),
		slots:    make([]*Edge, 1),
		isGauge:  make([]bool, len(cfg.Metrics)),
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
			s.isGauge[i] = true
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
// is folded: it counts into the destination workload "other" of the same
// kind. The "other" edges may take the table up to twice the cap; past that
// the source folds into "other" as well, so the table grows by at most one
// more edge per pair of kinds. Expire swaps folded edges that carry more
// traffic than listed ones with them, so that the cap keeps the most
// active edges, not the first ones.
func (s *Store) Edge(now time.Time, k Key) *Edge {
	k = k.project(s.level)
	if e, ok := s.edges[k]; ok {
		return e
	}
	if e, ok := s.folds[k]; ok {
		return e
	}
	if s.maxEdges > 0 && len(s.edges) >= s.maxEdges {
		s.folded.Inc()
		e := s.newEdge(now, k)
		e.into = s.other(now, k)
		s.folds[k] = e
		return e
	}
	e := s.newEdge(now, k)
	s.edges[k] = e
	s.gauge.Set(float64(len(s.edges)))
	return e
}

// other returns the listed "other" edge that k folds into.
func (s *Store) other(now time.Time, k Key) *Edge {
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
	e := s.newEdge(now, k)
	s.edges[k] = e
	s.gauge.Set(float64(len(s.edges)))
	return e
}

func (s *Store) newEdge(now time.Time, k Key) *Edge {
	e := &Edge{key: k, last: now, store: s, values: make([]uint64, len(s.metrics))}
	if s.hists {
		e.hists = make([]*Histogram, len(s.metrics))
	}
	return e
}

// Len returns the number of edges.
func (s *Store) Len() int { return len(s.edges) }

// Expire removes the edges that have no gauge above zero and no change for
// the TTL, and returns how many it removed.
func (s *Store) Expire(now time.Time) int {
	n := 0
	for k, e := range s.edges {
		if now.Sub(e.last) < s.ttl || e.live() || s.feeds(e) {
			continue
		}
		e.dead = true
		delete(s.edges, k)
		n++
	}
	for k, e := range s.folds {
		if now.Sub(e.last) < s.ttl || e.live() {
			continue
		}
		e.dead = true
		delete(s.folds, k)
	}
	s.rebalance(now)
	if n > 0 {
		s.expired.Add(float64(n))
		s.gauge.Set(float64(len(s.edges)))
	}
	return n
}

// feeds reports whether folded edges still count into e.
func (s *Store) feeds(e *Edge) bool {
	if e.key.Dst.Name != Other || len(s.folds) == 0 {
		return false
	}
	for _, f := range s.folds {
		if f.into == e {
			return true
		}
	}
	return false
}

// rebalance lists the folded edges whose recent traffic is more than twice
// that of the least active listed edges in their place: a listed edge that
// is folded adds what it counted to its "other" edge, so that the sum of
// the series stays the same, and an edge that is listed starts its series
// from zero, its past traffic staying on "other". Gauges move with the edge.
func (s *Store) rebalance(now time.Time) {
	defer func() {
		for _, e := range s.edges {
			e.recent = 0
		}
		for _, e := range s.folds {
			e.recent = 0
		}
	}()
	if s.maxEdges <= 0 || len(s.folds) == 0 {
		return
	}
	var cands []*Edge
	for _, e := range s.folds {
		if e.recent > 0 {
			cands = append(cands, e)
		}
	}
	if len(cands) == 0 {
		return
	}
	slices.SortFunc(cands, func(a, b *Edge) int { return cmp.Compare(b.recent, a.recent) })
	var listed []*Edge
	for _, e := range s.edges {
		if e.key.Dst.Name != Other && e.key.Src.Name != Other {
			listed = append(listed, e)
		}
	}
	slices.SortFunc(listed, func(a, b *Edge) int { return cmp.Compare(a.recent, b.recent) })
	j := 0
	for _, c := range cands {
		if len(s.edges) >= s.maxEdges {
			if j >= len(listed) || c.recent <= 2*listed[j].recent {
				break
			}
			s.fold(now, listed[j])
			j++
		}
		s.unfold(c)
	}
	s.gauge.Set(float64(len(s.edges)))
}

// fold makes a listed edge count into its "other" edge from now on.
func (s *Store) fold(now time.Time, e *Edge) {
	delete(s.edges, e.key)
	into := s.other(now, e.key)
	for id, v := range e.values {
		into.values[id] += v
		if !s.isGauge[id] {
			e.values[id] = 0
		}
	}
	for id, h := range e.hists {
		if h == nil {
			continue
		}
		if into.hists[id] == nil {
			into.hists[id] = &Histogram{Counts: make([]uint64, len(h.Counts))}
		}
		for i, c := range h.Counts {
			into.hists[id].Counts[i] += c
		}
		into.hists[id].Count += h.Count
		into.hists[id].Sum += h.Sum
		e.hists[id] = nil
	}
	e.into = into
	s.folds[e.key] = e
}

// unfold lists a folded edge, with its gauges.
func (s *Store) unfold(e *Edge) {
	delete(s.folds, e.key)
	for _, id := range s.gauges {
		e.into.values[id] -= min(e.values[id], e.into.values[id])
	}
	e.into = nil
	s.edges[e.key] = e
}

// Snapshot appends a copy of every edge to dst and returns it.
func (s *Store) Snapshot(dst []Series) []Series {
	// Grown once: the caller holds the engine's lock while this runs.
	dst = slices.Grow(dst, len(s.edges))
	values := make([]uint64, len(s.edges)*len(s.metrics))
	for _, e := range s.edges {
		v := values[:len(s.metrics):len(s.metrics)]
		values = values[len(s.metrics):]
		copy(v, e.values)
		sr := Series{Key: e.key, Values: v}
		for i, h := range e.hists {
			if h == nil {
				continue
			}
			// Only edges with an observation carry histograms: most
			// edges have none, and the copy is per scrape.
			if sr.Hists == nil {
				sr.Hists = make([]Histogram, len(s.metrics))
			}
			sr.Hists[i] = Histogram{Counts: slices.Clone(h.Counts), Count: h.Count, Sum: h.Sum, Native: maps.Clone(h.Native), NativeZero: h.NativeZero}
		}
		dst = append(dst, sr)
	}
	return dst
}

// Matches reports whether k is the key of e at the store's level.
func (e *Edge) Matches(k Key) bool { return e.key == k.project(e.store.level) }

// EdgeRef is a held reference to an edge, 4 bytes without a pointer, so
// that the records that hold one (the match engine's flows, a million of
// them) are memory the garbage collector does not scan. An edge keeps its
// slot while any reference to it is held, dead or not, as a pointer would
// keep it. 0 is none.
type EdgeRef uint32

// Hold returns a new reference to e (0 for nil). Each reference is given
// back with Release.
func (s *Store) Hold(e *Edge) EdgeRef {
	if e == nil {
		return 0
	}
	if e.slot == 0 {
		if n := len(s.free); n > 0 {
			e.slot, s.free = s.free[n-1], s.free[:n-1]
			s.slots[e.slot] = e
		} else {
			e.slot = EdgeRef(len(s.slots))
			s.slots = append(s.slots, e)
		}
	}
	e.refs++
	return e.slot
}

// Release gives back a reference that Hold returned.
func (s *Store) Release(r EdgeRef) {
	if r == 0 {
		return
	}
	e := s.slots[r]
	if e.refs--; e.refs == 0 {
		s.slots[r] = nil
		s.free = append(s.free, r)
		e.slot = 0
	}
}

// At returns the edge of a held reference; nil for 0.
func (s *Store) At(r EdgeRef) *Edge { return s.slots[r] }

// Held returns the number of edges that references hold.
func (s *Store) Held() int { return len(s.slots) - 1 - len(s.free) }
