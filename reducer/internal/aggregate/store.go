// Package aggregate owns the table of edges between workloads: their traffic
// counters, their active connections and their expiry.
package aggregate

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Workload is one side of an edge, as it appears in the metric labels.
type Workload struct {
	Name      string
	Kind      string
	Namespace string
	Zone      string
}

// Key identifies an edge: traffic from Src to Dst.
type Key struct {
	Src Workload
	Dst Workload
}

// Edge holds the counters of one Key. Its owner mutates it through the
// methods below while holding the lock that guards the Store.
type Edge struct {
	key     Key
	bytes   uint64
	packets uint64
	opened  uint64
	active  int64
	last    time.Time
	dead    bool
}

// Key returns the edge's key.
func (e *Edge) Key() Key { return e.key }

// Dead reports whether the edge expired and left the store. Whoever still
// holds a pointer to it must look the key up again.
func (e *Edge) Dead() bool { return e.dead }

// AddTraffic adds payload bytes and segments sent from Src to Dst.
func (e *Edge) AddTraffic(now time.Time, bytes, segments uint64) {
	e.bytes += bytes
	e.packets += segments
	e.last = now
}

// Open counts one connection opened by Src (client) to Dst (server).
func (e *Edge) Open(now time.Time) {
	e.opened++
	e.last = now
}

// Connect counts one more active connection on the edge.
func (e *Edge) Connect(now time.Time) {
	e.active++
	e.last = now
}

// Disconnect counts one active connection fewer on the edge.
func (e *Edge) Disconnect(now time.Time) {
	if e.active > 0 {
		e.active--
	}
	e.last = now
}

// Series is a copy of one edge's counters, taken at scrape time.
type Series struct {
	Key     Key
	Bytes   uint64
	Packets uint64
	Opened  uint64
	Active  int64
}

// Other is the workload name that edges beyond the cardinality cap fold into.
const Other = "other"

// Store is the table of edges. It is not safe for concurrent use: its owner
// guards it with the same lock as the flows that point into it.
type Store struct {
	ttl      time.Duration
	maxEdges int
	edges    map[Key]*Edge
	gauge    prometheus.Gauge
	expired  prometheus.Counter
	folded   prometheus.Counter
}

// NewStore returns an empty store whose edges expire after ttl without a
// delta and without an active connection, and that holds about maxEdges
// edges at most (see Edge; 0 means no cap). It registers its self-metrics
// with reg.
func NewStore(ttl time.Duration, maxEdges int, reg prometheus.Registerer) (*Store, error) {
	s := &Store{
		ttl:      ttl,
		maxEdges: maxEdges,
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
	for _, c := range []prometheus.Collector{s.gauge, s.expired, s.folded} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register edge metrics: %w", err)
		}
	}
	return s, nil
}

// Edge returns the edge of k, creating it when absent. When the table is
// at its cap, a new edge folds into the destination workload "other" of the
// same kind. The folded edges may take the table up to twice the cap; past
// that the source folds into "other" as well, so the table grows by at most
// one more edge per pair of kinds.
func (s *Store) Edge(now time.Time, k Key) *Edge {
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
	e := &Edge{key: k, last: now}
	s.edges[k] = e
	s.gauge.Set(float64(len(s.edges)))
	return e
}

// Len returns the number of edges.
func (s *Store) Len() int { return len(s.edges) }

// Expire removes the edges that have no active connection and no change
// for the TTL, and returns how many it removed.
func (s *Store) Expire(now time.Time) int {
	n := 0
	for k, e := range s.edges {
		if e.active > 0 || now.Sub(e.last) < s.ttl {
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
	for _, e := range s.edges {
		dst = append(dst, Series{Key: e.key, Bytes: e.bytes, Packets: e.packets, Opened: e.opened, Active: e.active})
	}
	return dst
}
