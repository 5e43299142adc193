// Package match owns the socket tables of the collectors' sessions and joins
// the two ends of each TCP connection into one flow, so that every byte is
// counted once on the edge between the workloads of its ends.
package match

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/reducer/internal/aggregate"
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
	dirty    []*flow
	nsockets int

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
	store, err := aggregate.NewStore(cfg.SeriesTTL, cfg.MaxSeries, reg)
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
	for _, c := range []prometheus.Collector{e.updates, e.sockets, e.flowGauge, e.conflicts, e.expired} {
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

// Sweep drops the sessions detached for longer than the session TTL and
// expires quiet edges.
func (e *Engine) Sweep() {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
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
	for _, sk := range s.socks {
		e.leave(sk)
	}
	e.nsockets -= len(s.socks)
	s.socks, s.procs = nil, nil
	s.gone = true
	if e.sessions[s.node] == s {
		delete(e.sessions, s.node)
	}
	e.settle(now)
	e.publish()
}

// Apply validates b against the session and then applies all of it. A
// refused batch changes nothing.
func (e *Engine) Apply(s *Session, b *Batch) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s.gone {
		return refuse(ReasonSessionReplaced, "session of node %q epoch %d was replaced", s.node, s.epoch)
	}
	if err := e.prepare(s, b); err != nil {
		return err
	}
	e.commit(s, b)
	return nil
}

// prepare checks every handle of b and resolves the stats entries to
// sockets, without changing the session.
func (e *Engine) prepare(s *Session, b *Batch) error {
	reuse(&e.newProcs)
	reuse(&e.newSocks)
	e.created = e.created[:0]
	e.statSocks = e.statSocks[:0]

	seq := b.Sequence
	for i, p := range b.Processes {
		if p.Handle == 0 {
			return refuse(ReasonInvalidHandle, "batch %d: process %d: handle 0 is reserved for an unknown process", seq, i)
		}
		if _, ok := s.procs[p.Handle]; ok {
			return refuse(ReasonDuplicateHandle, "batch %d: process %d: handle %d is already live", seq, i, p.Handle)
		}
		if _, ok := e.newProcs[p.Handle]; ok {
			return refuse(ReasonDuplicateHandle, "batch %d: process %d: handle %d announced twice", seq, i, p.Handle)
		}
		e.newProcs[p.Handle] = &process{handle: p.Handle, workload: processWorkload(p.Comm)}
	}
	for i, k := range b.Sockets {
		if _, ok := s.socks[k.Handle]; ok {
			return refuse(ReasonDuplicateHandle, "batch %d: socket %d: handle %d is already live", seq, i, k.Handle)
		}
		if _, ok := e.newSocks[k.Handle]; ok {
			return refuse(ReasonDuplicateHandle, "batch %d: socket %d: handle %d announced twice", seq, i, k.Handle)
		}
		p, ok := e.lookupProc(s, k.Process)
		if !ok {
			return refuse(ReasonUnknownHandle, "batch %d: socket %d: unknown process handle %d", seq, i, k.Process)
		}
		sk := &socket{handle: k.Handle, role: k.Role, process: p}
		e.newSocks[k.Handle] = sk
		e.created = append(e.created, sk)
	}
	for i, o := range b.Owners {
		if _, ok := e.lookupSock(s, o.Socket); !ok {
			return refuse(ReasonUnknownHandle, "batch %d: owner %d: unknown socket handle %d", seq, i, o.Socket)
		}
		if _, ok := e.lookupProc(s, o.Process); !ok {
			return refuse(ReasonUnknownHandle, "batch %d: owner %d: unknown process handle %d", seq, i, o.Process)
		}
	}
	for i, h := range b.Stats.Handles {
		sk, ok := e.lookupSock(s, h)
		if !ok {
			return refuse(ReasonUnknownHandle, "batch %d: stats entry %d: unknown socket handle %d", seq, i, h)
		}
		e.statSocks = append(e.statSocks, sk)
	}
	reuse(&e.seen)
	for i, h := range b.Closed {
		if _, ok := e.lookupSock(s, h); !ok {
			return refuse(ReasonUnknownHandle, "batch %d: closed socket %d: unknown socket handle %d", seq, i, h)
		}
		if _, ok := e.seen[h]; ok {
			return refuse(ReasonDuplicateHandle, "batch %d: closed socket %d: handle %d closed twice", seq, i, h)
		}
		e.seen[h] = struct{}{}
	}
	reuse(&e.seen)
	for i, h := range b.Forgotten {
		if p, ok := e.lookupProc(s, h); !ok || p == nil {
			return refuse(ReasonUnknownHandle, "batch %d: forgotten process %d: unknown process handle %d", seq, i, h)
		}
		if _, ok := e.seen[h]; ok {
			return refuse(ReasonDuplicateHandle, "batch %d: forgotten process %d: handle %d forgotten twice", seq, i, h)
		}
		e.seen[h] = struct{}{}
	}
	return nil
}

// commit applies a prepared batch.
func (e *Engine) commit(s *Session, b *Batch) {
	now := e.now()
	for h, p := range e.newProcs {
		s.procs[h] = p
	}
	for i, sk := range e.created {
		s.socks[sk.handle] = sk
		e.join(s, sk, &b.Sockets[i])
	}
	e.nsockets += len(e.created)
	for _, o := range b.Owners {
		sk := s.socks[o.Socket]
		p, _ := e.lookupProc(s, o.Process)
		if sk.process == p {
			continue
		}
		sk.process = p
		if sk.flow != nil {
			e.markDirty(sk.flow)
		}
	}
	// New ends join and owners resolve before counting, so that ends opened
	// in the same interval are counted on their joined edge.
	e.settle(now)

	st := &b.Stats
	for i, sk := range e.statSocks {
		f := sk.flow
		if f == nil {
			continue
		}
		end := sk.end
		if bs, ss := st.BytesSent[i], st.SegmentsSent[i]; bs|ss != 0 {
			d := &f.dir[end]
			d.sentBytes += bs
			d.sentSegs += ss
			f.account(now, end, e.store)
		}
		if br, sr := st.BytesReceived[i], st.SegmentsReceived[i]; br|sr != 0 {
			d := &f.dir[1-end]
			d.recvBytes += br
			d.recvSegs += sr
			f.account(now, 1-end, e.store)
		}
	}
	e.updates.Add(float64(len(e.statSocks)))

	for _, h := range b.Closed {
		e.leave(s.socks[h])
		delete(s.socks, h)
	}
	e.nsockets -= len(b.Closed)
	for _, h := range b.Forgotten {
		// A socket that still points to the process keeps its workload.
		delete(s.procs, h)
	}
	e.settle(now)
	e.publish()
}

// join makes a new socket an end of its flow.
func (e *Engine) join(s *Session, sk *socket, in *Socket) {
	local := netipUnmap(in.Local)
	remote := netipUnmap(in.Remote)
	if local == remote {
		return // a self-connected socket has no peer to join
	}
	loop := local.Addr().IsLoopback() || remote.Addr().IsLoopback()
	if loop && !e.cfg.Loopback {
		return
	}
	key, end := newFlowKey(local, remote, loop, s.node, in.Netns)
	f := e.flows[key]
	if f != nil && f.ends[end] != nil && !loop {
		// Another live socket claims the same endpoints, e.g. the same
		// private addresses behind two NATs: keep this one to its node.
		e.conflicts.Inc()
		key, end = newFlowKey(local, remote, true, s.node, in.Netns)
		f = e.flows[key]
	}
	if f != nil && f.ends[end] != nil {
		e.conflicts.Inc()
		return
	}
	if f == nil {
		f = &flow{key: key}
		e.flows[key] = f
	}
	f.ends[end] = sk
	sk.flow, sk.end = f, end
	if in.NewConnection && !f.opened {
		f.opened, f.pendingOpen = true, true
	}
	e.markDirty(f)
}

// leave takes a socket out of its flow. The counted amounts stay, and the
// socket's views restart from zero, so that a later end never counts again
// what was counted already.
func (e *Engine) leave(sk *socket) {
	f := sk.flow
	if f == nil {
		return
	}
	i := sk.end
	f.ends[i] = nil
	f.dir[i].sentBytes, f.dir[i].sentSegs = 0, 0
	f.dir[1-i].recvBytes, f.dir[1-i].recvSegs = 0, 0
	sk.flow = nil
	e.markDirty(f)
}

func (e *Engine) markDirty(f *flow) {
	if !f.dirty {
		f.dirty = true
		e.dirty = append(e.dirty, f)
	}
}

// settle brings every changed flow's edges and active connection up to date
// and removes the flows that no end reports any more.
func (e *Engine) settle(now time.Time) {
	for i, f := range e.dirty {
		e.dirty[i] = nil
		f.dirty = false
		if f.empty() {
			if f.conn != nil {
				f.conn.Disconnect(now)
				f.conn = nil
			}
			if e.flows[f.key] == f {
				delete(e.flows, f.key)
			}
			continue
		}
		w := [2]aggregate.Workload{f.workload(0), f.workload(1)}
		client := f.client()
		for d := range f.dir {
			k := aggregate.Key{Src: w[d], Dst: w[1-d]}
			cur := f.dir[d].edge
			switch {
			case cur != nil && !cur.Dead() && cur.Key() == k:
			case uint8(d) == client:
				// The connection counts on the client's edge from now on.
				f.dir[d].edge = e.store.Edge(now, k)
			default:
				f.dir[d].edge = nil
			}
		}
		conn := f.dir[client].edge
		if conn != f.conn {
			if f.conn != nil {
				f.conn.Disconnect(now)
			}
			conn.Connect(now)
			f.conn = conn
		}
		if f.pendingOpen {
			conn.Open(now)
			f.pendingOpen = false
		}
	}
	e.dirty = e.dirty[:0]
}

// publish updates the size gauges.
func (e *Engine) publish() {
	e.sockets.Set(float64(e.nsockets))
	e.flowGauge.Set(float64(len(e.flows)))
}

// lookupProc finds a live or newly announced process; handle 0 is a known
// unknown and yields nil.
func (e *Engine) lookupProc(s *Session, h uint32) (*process, bool) {
	if h == 0 {
		return nil, true
	}
	if p, ok := s.procs[h]; ok {
		return p, true
	}
	p, ok := e.newProcs[h]
	return p, ok
}

// lookupSock finds a live or newly announced socket.
func (e *Engine) lookupSock(s *Session, h uint32) (*socket, bool) {
	if sk, ok := s.socks[h]; ok {
		return sk, true
	}
	sk, ok := e.newSocks[h]
	return sk, ok
}

// reuse empties a scratch map, and lets a big one go so that emptying stays
// cheap for the small batches that follow a big one.
func reuse[K comparable, V any](m *map[K]V) {
	if len(*m) == 0 {
		return
	}
	if len(*m) > 1024 {
		*m = make(map[K]V)
		return
	}
	clear(*m)
}
