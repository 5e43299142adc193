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
	"net/netip"
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
	// JoinWindow is how long a flow whose peer is a fleet address waits for
	// the peer's end before it counts as one-sided. Zero counts every flow
	// at once; a negative value derives the window from the collectors'
	// report intervals and their observed lag (see Engine.Window).
	JoinWindow time.Duration
	// Sharded: this reducer is one of several, each with the collectors of
	// some nodes. A flow whose peer is a fleet address that does not report
	// here within the join window counts only what this reducer's end
	// sends (and the connection when its end is the client): the peer's
	// reducer counts the rest, so the sum over reducers counts each byte
	// once. Bytes from outside the fleet count here.
	Sharded bool
	// MetadataWait is how long after start every flow is held while no
	// metadata snapshot has been applied (MetadataSynced): a reducer that
	// restarts would otherwise count its first seconds of traffic on
	// container ids and unknown processes instead of pods. Zero: no wait,
	// for a reducer without a k8s-watcher.
	MetadataWait time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Session is the state of one node's collector under one epoch.
type Session struct {
	id         uint32 // its slot in the engine's session table while sockets refer to it
	refs       int32  // sockets that refer to it
	node       string
	bootID     string
	epoch      uint64
	cancel     func()
	procs      map[uint32]*process
	socks      handleTable
	attached   bool
	detachedAt time.Time
	gone       bool
	interval   time.Duration           // the collector's report interval
	lag        time.Duration           // how far its last batch's time was behind the reducer's clock
	addrs      map[netip.Addr]struct{} // the local addresses of its sockets: fleet addresses
	reported   bool                    // a batch arrived: its addresses are known
	applied    uint64                  // the sequence of the last batch applied
	// resumeEpoch and resumeSeq name the session of the same node and boot
	// that this one replaced, and the last batch applied from it.
	resumeEpoch, resumeSeq uint64
	orphans                []sockID // its predecessor's sockets, vacant until its first batch
}

// Node returns the session's node name.
func (s *Session) Node() string { return s.node }

// Resume returns the epoch of the session of the same node and boot that
// this one replaced and the sequence of the last batch applied from it;
// zeros if it replaced none.
func (s *Session) Resume() (epoch, sequence uint64) { return s.resumeEpoch, s.resumeSeq }

// Epoch returns the session's epoch.
func (s *Session) Epoch() uint64 { return s.epoch }

// Engine holds every session, flow and edge. One mutex guards all of it, and
// a batch is applied under it as a whole. Sockets and flows are records in
// slabs that refer to each other by 32-bit ids.
type Engine struct {
	cfg    Config
	now    func() time.Time
	logger *slog.Logger

	mu       sync.Mutex
	sessions map[string]*Session
	flows    flowIndex // the oldest flow of each key's chain
	flowTab  slab[flow]
	sockTab  slab[socket]
	sessTab  table[Session, *Session] // the sessions that sockets refer to
	procTab  table[process, *process] // the processes that sockets refer to
	addrs    addrTable
	nodeIDs  map[string]uint32
	healths  map[flowID]*health // of the flows with flowHealth
	store    *aggregate.Store
	resolver *resolve.Resolver[flowID]
	events   *events
	dirty    []flowID
	nsockets int
	nflows   int
	emitting bool      // someone subscribes to events; set at each commit
	dns      *dnsNames // names that DNS answers gave to addresses; nil until the first answer

	// Held flows, oldest first: they wait for their peer's end until the
	// join window has passed since they were born.
	held    heldQueue
	udp     udpJoin // UDP ends and their joins (udp.go); its held ends count in nheld
	nheld   int
	window  time.Duration
	started time.Time
	fleet   map[netip.Addr]int32 // fleet address → sessions reporting it

	// The parts of the derived window (the slowest interval, the greatest
	// lag) as last derived or raised, and when it was last derived.
	winInterval, winLag time.Duration
	winAt               time.Time

	// unreported counts the attached sessions that sent no batch yet:
	// while their addresses are unknown, any peer may be in the fleet.
	unreported int
	// metaPending: every flow is held until the first metadata snapshot
	// or until metaDeadline (Config.MetadataWait).
	metaPending  bool
	metaDeadline time.Time
	metaRelease  bool // the wait just ended: releaseWait is due

	// Scratch space of the batch being applied.
	newProcs  scratch[uint32, *process]
	newSocks  scratch[uint32, sockID]
	created   []sockID
	seen      scratch[uint32, struct{}]
	statSocks []sockID
	statFlows []flowID
	touched   uint16 // what touchStats read, so that its loads stay

	updates   prometheus.Counter
	sockets   prometheus.Gauge
	flowGauge prometheus.Gauge
	conflicts prometheus.Counter
	expired   prometheus.Counter
	heldGauge prometheus.Gauge
	oneSided  prometheus.Counter
	windowG   prometheus.Gauge
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
		addrs:    newAddrTable(),
		nodeIDs:  make(map[string]uint32),
		healths:  make(map[flowID]*health),
		store:    store,
		events:   newEvents(),
		fleet:    make(map[netip.Addr]int32),
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
		heldGauge: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_reducer_flows_held",
			Help: "Flows whose peer is a fleet address, held until the peer's end reports or the join window passes; closed ones among them are tombstones.",
		}),
		oneSided: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_flows_unjoined_total",
			Help: "Flows to a fleet address whose peer's end did not report within the join window; they count as one-sided.",
		}),
		windowG: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_reducer_join_window_seconds",
			Help: "How long a flow to a fleet address waits for its peer's end (--join-window, or derived from report intervals and lag).",
		}),
	}
	e.flows = newFlowIndex(func(id flowID) *flowKey { return &e.flowAt(id).key })
	e.resolver = resolve.NewWithUses(func(id flowID) *resolve.Uses { return &e.flowAt(id).uses })
	if e.now == nil {
		e.now = time.Now
	}
	e.started = e.now()
	if e.cfg.MetadataWait > 0 {
		e.metaPending, e.metaDeadline = true, e.started.Add(e.cfg.MetadataWait)
	}
	e.window = e.cfg.JoinWindow
	if e.window < 0 {
		e.winInterval, e.winLag = e.windowParts()
		e.window = e.windowOf(e.winInterval, e.winLag)
	}
	e.windowG.Set(e.window.Seconds())
	for _, c := range []prometheus.Collector{e.updates, e.sockets, e.flowGauge, e.conflicts, e.expired, e.events.lost, e.heldGauge, e.oneSided, e.windowG} {
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
	// Held flows are published close to their deadline.
	p := time.NewTicker(200 * time.Millisecond)
	defer p.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			e.Sweep()
		case <-p.C:
			e.PublishDue()
		}
	}
}

// PublishDue publishes the held flows whose join window has passed.
func (e *Engine) PublishDue() {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	e.emitting = e.events.active()
	if now.Sub(e.winAt) >= windowEvery {
		e.winAt = now
		e.updateWindow()
	}
	e.publishDue(now)
	e.publishUDP(now)
	e.settle(now)
	e.setGauges()
}

// MetadataSynced ends the metadata wait (Config.MetadataWait): the first
// snapshot is applied, and the held flows are published from their join
// windows on, named by it.
func (e *Engine) MetadataSynced() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.metaPending {
		e.metaPending, e.metaRelease = false, true
		e.logger.Info("metadata synced: counting flows", "held", e.nheld, "waited", e.now().Sub(e.started).Round(time.Millisecond))
	}
}

// holding reports whether every flow is held for the metadata wait. The
// wait ends at its deadline if no snapshot came.
func (e *Engine) holding(now time.Time) bool {
	if !e.metaPending {
		return false
	}
	if now.Before(e.metaDeadline) {
		return true
	}
	e.metaPending, e.metaRelease = false, true
	e.logger.Warn("no metadata snapshot within the metadata wait: counting flows with what is known", "wait", e.cfg.MetadataWait, "held", e.nheld)
	return false
}

// Window returns the current join window.
func (e *Engine) Window() time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.window
}

// The join window when none is configured is derived from two parts: two
// report intervals of the slowest collector plus the greatest lag of a
// collector's batches behind the reducer's clock, so that the peer's end
// of a connection arrives in time from a collector that lags, whichever
// collector reported first. It is at least 1 s, at most the session TTL.
//
// Deriving it walks every session, so the engine does it at most once per
// windowEvery (and when a session reports first); in between, a batch that
// lags more than the window allows widens it at once (raiseLag). A window
// that could narrow stays wide until the next walk.
const windowEvery = time.Second

// windowParts returns the report interval of the slowest collector and the
// greatest lag of an attached collector's batches.
func (e *Engine) windowParts() (interval, lag time.Duration) {
	interval = time.Second
	for _, s := range e.sessions {
		interval = max(interval, s.interval)
		if s.attached {
			lag = max(lag, s.lag)
		}
	}
	return interval, lag
}

// windowOf is the join window for an interval and a lag.
func (e *Engine) windowOf(interval, lag time.Duration) time.Duration {
	w := 2*interval + lag
	if e.cfg.SessionTTL > 0 {
		w = min(w, e.cfg.SessionTTL)
	}
	return max(w, time.Second)
}

// updateWindow derives the window again from every session.
func (e *Engine) updateWindow() {
	if e.cfg.JoinWindow >= 0 {
		return
	}
	e.winInterval, e.winLag = e.windowParts()
	e.setWindow(e.windowOf(e.winInterval, e.winLag))
}

// raiseLag widens the derived window for a batch that lags by lag, when
// that is more than the window allows.
func (e *Engine) raiseLag(lag time.Duration) {
	if e.cfg.JoinWindow >= 0 || lag <= e.winLag {
		return
	}
	e.winLag = lag
	e.setWindow(e.windowOf(e.winInterval, lag))
}

func (e *Engine) setWindow(w time.Duration) {
	if w != e.window {
		e.window = w
		e.windowG.Set(w.Seconds())
	}
}

// Open starts a session for h. A greater epoch (or another boot) replaces
// the node's current session: its sockets leave their flows at once and its
// stream is cancelled. cancel is called when this session is replaced.
func (e *Engine) Open(h Hello, cancel func()) (*Session, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	var orphans []sockID
	var resumeEpoch, resumeSeq uint64
	if old := e.sessions[h.Node]; old != nil {
		if old.bootID == h.BootID && h.Epoch <= old.epoch {
			return nil, refuse(ReasonStaleEpoch, "stale epoch %d: node %q is at epoch %d", h.Epoch, h.Node, old.epoch)
		}
		if old.bootID == h.BootID {
			resumeEpoch, resumeSeq = old.epoch, old.applied
		}
		orphans = e.drop(now, old, old.bootID == h.BootID)
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
		attached: true,
		interval: h.ReportInterval,
		addrs:    make(map[netip.Addr]struct{}),
		orphans:  orphans,

		resumeEpoch: resumeEpoch,
		resumeSeq:   resumeSeq,
	}
	e.sessions[h.Node] = s
	e.unreported++
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
	e.reported(s)
	s.cancel = nil
}

// Sweep drops the sessions detached for longer than the session TTL,
// resolves again the flows whose metadata changed, and expires quiet edges.
func (e *Engine) Sweep() {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	e.emitting = e.events.active()
	e.resolver.Changed(e.markDirtyID)
	e.updateWindow()
	e.publishDue(now)
	e.settle(now)
	for _, s := range e.sessions {
		if s.attached || now.Sub(s.detachedAt) < e.cfg.SessionTTL {
			continue
		}
		e.drop(now, s, false)
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
	return e.nsockets, e.nflows, e.store.Len()
}

// drop removes a session and takes its sockets out of their flows.
//
// A replaced session's sockets leave their flows vacant, for the new
// session to announce again (it returns them); an expired session's
// sockets, and a replaced session's that the new one did not announce
// again, close.
func (e *Engine) drop(now time.Time, s *Session, replaced bool) (orphans []sockID) {
	e.emitting = e.events.active()
	if replaced {
		// Its predecessor's sockets it did not take back may still come
		// back under its successor.
		orphans, s.orphans = s.orphans, nil
	} else {
		e.closeOrphans(s)
	}
	s.socks.all(func(_ uint32, id sockID) {
		sk := e.sockAt(id)
		if e.emitting {
			e.emitSocket(now, EventSocketClose, sk)
		}
		if replaced {
			e.leave(sk)
			orphans = append(orphans, id)
		} else {
			e.close(sk)
			e.unrefSock(id)
		}
	})
	e.nsockets -= s.socks.len()
	e.reported(s)
	for a := range s.addrs {
		if e.fleet[a]--; e.fleet[a] <= 0 {
			delete(e.fleet, a)
		}
	}
	s.socks, s.procs, s.addrs = handleTable{}, nil, nil
	s.gone = true
	if e.sessions[s.node] == s {
		delete(e.sessions, s.node)
	}
	e.settle(now)
	e.setGauges()
	return orphans
}

// closeOrphans closes the ends that s's predecessor left vacant and s did
// not take back: the collector did not announce them again, so they
// closed while it was away.
func (e *Engine) closeOrphans(s *Session) {
	for _, id := range s.orphans {
		sk := e.sockAt(id)
		if sk.flow != 0 {
			if f := e.ref(sk.flow); f.ends[sk.end] == id && f.has(vacantFlag(sk.end)) {
				f.flags = f.flags&^vacantFlag(sk.end) | closedFlag(sk.end)
				e.markDirty(f)
			}
		}
		e.unrefSock(id)
	}
	s.orphans = nil
}

// reported notes that s reported its first batch, or will not.
func (e *Engine) reported(s *Session) {
	if !s.reported {
		s.reported = true
		e.unreported--
	}
}

// markDirtyID marks the flow of id dirty.
func (e *Engine) markDirtyID(id flowID) { e.markDirty(e.ref(id)) }

// setGauges updates the size gauges.
func (e *Engine) setGauges() {
	e.sockets.Set(float64(e.nsockets))
	e.flowGauge.Set(float64(e.nflows))
	e.heldGauge.Set(float64(e.nheld))
}
