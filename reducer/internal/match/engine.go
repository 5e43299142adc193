// Package match owns the socket tables of the collectors' sessions and joins
// the two ends of each TCP connection into one flow, so that every byte is
// counted once on the edge between the workloads of its ends.
//
// The walk of one batch is in apply.go; the resolution of flow ends to
// workloads is the resolve package's, and the edges are aggregate's.
package match

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// Config tunes the engine.
type Config struct {
	// SeriesTTL is how long an edge without deltas and without an active
	// connection stays in the table.
	SeriesTTL time.Duration
	// SessionTTL is how long the sockets of a disconnected collector are kept.
	SessionTTL time.Duration
	// Loopback counts flows whose both endpoints are loopback addresses.
	Loopback bool
	// MaxSeries caps the edges in the table; beyond it new edges fold into
	// the workload "other". 0 means no cap.
	MaxSeries int
	// Level is the aggregation level of the edges.
	Level aggregate.Level
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Session is the state of one node's collector under one epoch.
type Session struct {
	node       string
	bootID     string
	epoch      uint64
	cancel     func()
	procs      map[uint32]*process
	socks      map[uint32]*socket
	attached   bool
	detachedAt time.Time
	gone       bool
}

// Node returns the session's node name.
func (s *Session) Node() string { return s.node }

// Epoch returns the session's epoch.
func (s *Session) Epoch() uint64 { return s.epoch }

// Engine holds every session, flow and edge. One mutex guards all of it, and
// a batch is applied under it as a whole.
type Engine struct {
	cfg    Config
	now    func() time.Time
	logger *slog.Logger

	mu       sync.Mutex
	sessions map[string]*Session
	flows    map[flowKey]*flow
	store    *aggregate.Store
	resolver *resolve.Resolver[*flow]
	events   *events
	dirty    []*flow
	nsockets int
	emitting bool // someone subscribes to events; set at each commit

	// Scratch space of the batch being applied.
	newProcs  map[uint32]*process
	newSocks  map[uint32]*socket
	created   []*socket
	seen      map[uint32]struct{}
	statSocks []*socket

	updates   prometheus.Counter
	sockets   prometheus.Gauge
	flowGauge prometheus.Gauge
	conflicts prometheus.Counter
	expired   prometheus.Counter
}

// New returns an engine that registers its self-metrics with reg.
func New(cfg Config, reg prometheus.Registerer, logger *slog.Logger) (*Engine, error) {
	store, err := aggregate.NewStore(aggregate.Config{TTL: cfg.SeriesTTL, MaxEdges: cfg.MaxSeries, Level: cfg.Level}, reg)
	if err != nil {
		return nil, err
	}
	e := &Engine{
		cfg:      cfg,
		now:      cfg.Now,
		logger:   logger.With("component", "match"),
		sessions: make(map[string]*Session),
		flows:    make(map[flowKey]*flow),
		store:    store,
		resolver: resolve.New[*flow](),
		events:   newEvents(),
		newProcs: make(map[uint32]*process),
		newSocks: make(map[uint32]*socket),
		seen:     make(map[uint32]struct{}),
		updates: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_socket_updates_total",
			Help: "Socket counter updates (stats entries) applied.",
		}),
		sockets: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_reducer_sockets",
			Help: "Socket ends tracked across all sessions.",
		}),
		flowGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_reducer_flows",
			Help: "TCP connections tracked, each with one or two reporting ends.",
		}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_flow_conflicts_total",
			Help: "Sockets whose endpoints were already claimed by another live socket; they count as a flow of their own node.",
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_sessions_expired_total",
			Help: "Sessions of disconnected collectors dropped, with their sockets, after the session TTL.",
		}),
	}
	if e.now == nil {
		e.now = time.Now
	}
	for _, c := range []prometheus.Collector{e.updates, e.sockets, e.flowGauge, e.conflicts, e.expired, e.events.lost} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register match metrics: %w", err)
		}
	}
	return e, nil
}

// Run sweeps expired sessions and edges until ctx is done.
func (e *Engine) Run(ctx context.Context) error {
	every := min(e.cfg.SeriesTTL, e.cfg.SessionTTL) / 4
	every = min(max(every, 100*time.Millisecond), 15*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			e.Sweep()
		}
	}
}

// Open starts a session for h. A greater epoch (or another boot) replaces
// the node's current session: its sockets leave their flows at once and its
// stream is cancelled. cancel is called when this session is replaced.
func (e *Engine) Open(h Hello, cancel func()) (*Session, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	if old := e.sessions[h.Node]; old != nil {
		if old.bootID == h.BootID && h.Epoch <= old.epoch {
			return nil, refuse(ReasonStaleEpoch, "stale epoch %d: node %q is at epoch %d", h.Epoch, h.Node, old.epoch)
		}
		e.drop(now, old)
		if old.cancel != nil {
			old.cancel()
		}
		e.logger.Info("session replaced", "node", h.Node, "old_epoch", old.epoch, "epoch", h.Epoch)
	}
	s := &Session{
		node:     h.Node,
		bootID:   h.BootID,
		epoch:    h.Epoch,
		cancel:   cancel,
		procs:    make(map[uint32]*process),
		socks:    make(map[uint32]*socket),
		attached: true,
	}
	e.sessions[h.Node] = s
	e.logger.Info("session opened", "node", h.Node, "epoch", h.Epoch)
	return s, nil
}

// Detach marks the session's stream as ended. Its sockets stay for the
// session TTL, so that a quick reconnect replaces them.
func (e *Engine) Detach(s *Session) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s.gone {
		return
	}
	s.attached = false
	s.detachedAt = e.now()
	s.cancel = nil
}

// Sweep drops the sessions detached for longer than the session TTL,
// resolves again the flows whose metadata changed, and expires quiet edges.
func (e *Engine) Sweep() {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	e.emitting = e.events.active()
	e.resolver.Changed(e.markDirty)
	e.settle(now)
	for _, s := range e.sessions {
		if s.attached || now.Sub(s.detachedAt) < e.cfg.SessionTTL {
			continue
		}
		e.drop(now, s)
		e.expired.Inc()
		e.logger.Info("session expired", "node", s.node, "epoch", s.epoch)
	}
	e.store.Expire(now)
}

// Metadata returns the sink of a metadata source of the given rank: what it
// puts names the flow ends that resolve through its keys, from the next
// Apply or Sweep on.
func (e *Engine) Metadata(rank resolve.Rank) resolve.Sink { return e.resolver.Sink(rank) }

// Metrics returns the metrics of the edges, indexed by aggregate.MetricID.
func (e *Engine) Metrics() []aggregate.Metric { return e.store.Metrics() }

// Level returns the aggregation level of the edges.
func (e *Engine) Level() aggregate.Level { return e.store.Level() }

// Snapshot expires quiet edges and appends a copy of every remaining edge
// to dst.
func (e *Engine) Snapshot(dst []aggregate.Series) []aggregate.Series {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.store.Expire(e.now())
	return e.store.Snapshot(dst)
}

// Counts returns the number of tracked sockets, flows and edges.
func (e *Engine) Counts() (sockets, flows, edges int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.nsockets, len(e.flows), e.store.Len()
}

// drop removes a session and takes its sockets out of their flows.
func (e *Engine) drop(now time.Time, s *Session) {
	e.emitting = e.events.active()
	for _, sk := range s.socks {
		if e.emitting {
			e.emitSocket(now, EventSocketClose, sk)
		}
		e.leave(sk)
	}
	e.nsockets -= len(s.socks)
	s.socks, s.procs = nil, nil
	s.gone = true
	if e.sessions[s.node] == s {
		delete(e.sessions, s.node)
	}
	e.settle(now)
	e.setGauges()
}

// setGauges updates the size gauges.
func (e *Engine) setGauges() {
	e.sockets.Set(float64(e.nsockets))
	e.flowGauge.Set(float64(len(e.flows)))
}
