package observer

import (
	"context"
	"math"
	"net/netip"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/match"
)

// EventSource is where flow events come from; *match.Engine is one. The
// channel must never block its sender (match.Engine drops and counts). The
// traffic of open flows is not in the events: DrainTraffic reads it, and
// orders it among the events by their Seq (see match.Engine.DrainTraffic).
type EventSource interface {
	Subscribe(name string, size int) (<-chan match.Event, func())
	DrainTraffic(dst []match.Traffic, limit int) ([]match.Traffic, uint64)
}

// item is one entry of a stream's buffer: a flow event, or the number of
// events lost just before the next one, by the stream or (reducer) by the
// observer itself.
type item struct {
	flow    *observerv1.Flow
	resp    *observerv1.WatchFlowsResponse // of flow, shared by the streams
	lost    uint64
	reducer bool
}

// LossSource is an EventSource that tells how many events a subscriber
// lost (match.Engine.EventsLost). With it, the hub reports its own losses
// to every stream in-band.
type LossSource interface {
	EventsLost(name string) uint64
}

// subscriberName is the hub's name as the engine's subscriber.
const subscriberName = "observer"

// sub is one WatchFlows stream as the hub sees it.
type sub struct {
	ch      chan item
	allow   []*observerv1.FlowFilter
	deny    []*observerv1.FlowFilter
	pending uint64 // events lost and not yet reported; the hub's goroutine only
}

// flowState is what the hub knows of one connection.
type flowState struct {
	ep       [2]netip.AddrPort // in key order, a < b
	wl       [2]*observerv1.Workload
	node     [2]string // of the collector that reports each end
	client   int8      // index of the client end; -1 while unknown
	bytes    uint64    // totals, both directions
	packets  uint64
	reported [2]match.Counts // totals by sending end, as far as counted here
	wlEdge   *aggregate.Edge // the edge that wl was taken from
	eps      [2]*observerv1.Endpoint
	openedAt time.Time
	openSent bool
	// Traffic counted since the last update event, by sending end.
	pend    [2]struct{ bytes, packets uint64 }
	pendAt  time.Time
	dirty   bool // in hub.dirty
	closed  bool
	tracked bool // in hub.flows
}

type pairKey struct{ a, b netip.AddrPort }

func newPairKey(x, y netip.AddrPort) (pairKey, int) {
	if x.Compare(y) > 0 {
		return pairKey{y, x}, 1
	}
	return pairKey{x, y}, 0
}

// hub turns the engine's events into flow events, keeps the recent ones in
// a ring, and hands them to every stream without ever waiting for one.
type hub struct {
	cfg     Config
	metrics *metrics

	src EventSource

	mu         sync.Mutex // guards ring, subs, events, cancel, lastStream
	ring       []*observerv1.Flow
	next       int  // ring write position
	full       bool // ring wrapped
	subs       map[*sub]struct{}
	events     <-chan match.Event // nil while not following
	cancel     func()
	engineLost uint64    // the engine's loss count of the hub when last read
	lastStream time.Time // when the last following stream ended

	// The hub goroutine's own state.
	flows     map[pairKey]*flowState
	nodes     map[netip.AddrPort]string // local endpoint → node of the collector that reports it
	pending   []*flowState              // opens not yet sent
	dirty     []*flowState              // flows with traffic not yet sent as an update, from dirtyHead on
	dirtyHead int
	out       []*observerv1.Flow
	traffic   []match.Traffic
	lastRead  time.Time   // of the traffic
	held      match.Event // an event read ahead of the traffic that precedes it
	holding   bool
}

func newHub(cfg Config, m *metrics, src EventSource) *hub {
	return &hub{
		cfg:     cfg,
		metrics: m,
		src:     src,
		ring:    make([]*observerv1.Flow, cfg.RingSize),
		subs:    make(map[*sub]struct{}),
		flows:   make(map[pairKey]*flowState),
		nodes:   make(map[netip.AddrPort]string),
	}
}

// run follows the engine until ctx is done. It follows on demand: the
// engine builds events (one per socket and connection opened or closed)
// and notes the flows with traffic only while someone subscribes, so the
// hub subscribes when the first WatchFlows stream follows and unsubscribes
// Linger after the last one ended (never, when Linger is negative). It
// polls the channel rather than waiting on it, so that the engine's sends
// find room in the buffer instead of waking a receiver for every event.
// The traffic of open flows costs ingest no event per update: each
// UpdateInterval (each OpenPoll while opens wait for their flows' first
// traffic) the hub reads the counts of the flows that counted traffic
// (match.Engine.DrainTraffic), and sends one update per flow and direction
// per UpdateInterval, spread over the polls until the next read.
func (h *hub) run(ctx context.Context) {
	if h.cfg.Linger < 0 {
		h.mu.Lock()
		h.follow()
		h.mu.Unlock()
	}
	defer func() {
		h.mu.Lock()
		h.unfollow()
		h.mu.Unlock()
	}()
	poll := time.NewTicker(h.cfg.Poll)
	defer poll.Stop()
	next := time.Now().Add(h.cfg.UpdateInterval)
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-poll.C:
			h.mu.Lock()
			events := h.events
			idle := h.cfg.Linger >= 0 && len(h.subs) == 0 && now.Sub(h.lastStream) >= h.cfg.Linger
			h.mu.Unlock()
			if events == nil {
				continue
			}
			h.out = h.out[:0]
			tick := !now.Before(next) || idle
			if tick || len(h.pending) > 0 && now.Sub(h.lastRead) >= h.cfg.OpenPoll {
				h.readTraffic(events, now)
			}
			h.drainEvents(events, math.MaxUint64)
			if tick {
				h.flushPending(now)
				next = now.Add(h.cfg.UpdateInterval)
			}
			if idle {
				h.flushUpdates(len(h.dirty))
			} else {
				h.flushUpdates(h.updateBudget(now, next))
			}
			h.publish(h.out)
			if tick {
				h.reportEngineLoss()
			}
			h.reportLost()
			if idle {
				h.mu.Lock()
				if len(h.subs) == 0 {
					h.unfollow()
				}
				h.mu.Unlock()
			}
		}
	}
}

// follow subscribes to the engine's events; h.mu held.
func (h *hub) follow() {
	if h.events == nil {
		h.events, h.cancel = h.src.Subscribe(subscriberName, h.cfg.EventBuffer)
		if ls, ok := h.src.(LossSource); ok {
			h.engineLost = ls.EventsLost(subscriberName)
		}
		h.metrics.following.Set(1)
	}
}

// unfollow ends the subscription and forgets the flows; h.mu held.
func (h *hub) unfollow() {
	if h.events == nil {
		return
	}
	h.cancel()
	h.events, h.cancel = nil, nil
	h.held, h.holding = match.Event{}, false
	clear(h.flows)
	clear(h.nodes)
	clear(h.pending)
	h.pending = h.pending[:0]
	clear(h.dirty)
	h.dirty, h.dirtyHead = h.dirty[:0], 0
	h.metrics.following.Set(0)
}

// drainEvents handles the events that the channel holds, up to its size,
// whose Seq is at most upTo; it keeps the first later one for the next
// call.
func (h *hub) drainEvents(events <-chan match.Event, upTo uint64) {
	if h.holding {
		if h.held.Seq > upTo {
			return
		}
		h.holding = false
		h.handle(h.held)
	}
	for range cap(events) + 1 {
		select {
		case ev, ok := <-events:
			if !ok {
				return
			}
			if ev.Seq > upTo {
				h.held, h.holding = ev, true
				return
			}
			h.handle(ev)
		default:
			return
		}
	}
}

// readTraffic reads the counts of the flows that counted traffic since the
// last read, DrainBatch flows at a time, each batch after the events it
// follows and before the later ones.
func (h *hub) readTraffic(events <-chan match.Event, now time.Time) {
	h.lastRead = now
	for range h.cfg.MaxFlows/h.cfg.DrainBatch + 1 {
		var seq uint64
		h.traffic, seq = h.src.DrainTraffic(h.traffic[:0], h.cfg.DrainBatch)
		h.drainEvents(events, seq)
		for i := range h.traffic {
			h.count(&h.traffic[i], now)
		}
		n := len(h.traffic)
		clear(h.traffic) // lets go of the edges
		if n < h.cfg.DrainBatch {
			return
		}
	}
}

// count adds what a flow counted since the last read to its pending
// update.
func (h *hub) count(t *match.Traffic, now time.Time) {
	k := pairKey{t.Ends[0], t.Ends[1]}
	st := h.flows[k]
	if st == nil {
		// A flow that was open before the hub started: updates only, and
		// its totals from its start.
		st = &flowState{ep: t.Ends, client: -1, openSent: true}
		for i, tot := range t.Total {
			st.reported[i] = match.Counts{Bytes: tot.Bytes - t.Delta[i].Bytes, Segments: tot.Segments - t.Delta[i].Segments}
			st.bytes += st.reported[i].Bytes
			st.packets += st.reported[i].Segments
		}
		st.node[0], st.node[1] = h.nodes[k.a], h.nodes[k.b]
		if len(h.flows) < h.cfg.MaxFlows {
			h.flows[k] = st
			st.tracked = true
		}
	}
	st.client = int8(t.Client)
	for i, n := range t.Nodes {
		if n != "" {
			st.node[i] = n
		}
	}
	// The client's edge names both ends; else the other direction's.
	c := int(t.Client)
	if ed := t.Edges[c]; ed != nil {
		st.setWorkloads(c, ed)
	} else if ed := t.Edges[1-c]; ed != nil {
		st.setWorkloads(1-c, ed)
	}
	if !st.openSent {
		h.emitOpen(st)
	}
	st.add(t.Delta, now)
	switch {
	case !st.tracked:
		h.emitUpdates(st) // no later close to flush it: now
	case !st.dirty:
		st.dirty = true
		h.dirty = append(h.dirty, st)
	}
}

// setWorkloads names the ends from the key of edge ed, the edge of the
// traffic from end i.
func (st *flowState) setWorkloads(i int, ed *aggregate.Edge) {
	if st.wlEdge == ed {
		return
	}
	st.wlEdge = ed
	k := ed.Key()
	st.wl[i], st.wl[1-i] = workload(k.Src), workload(k.Dst)
}

// add adds what was counted from each end to the totals and the pending
// update.
func (st *flowState) add(delta [2]match.Counts, at time.Time) {
	for i, d := range delta {
		if d.Bytes|d.Segments == 0 {
			continue
		}
		st.reported[i].Bytes += d.Bytes
		st.reported[i].Segments += d.Segments
		st.bytes += d.Bytes
		st.packets += d.Segments
		st.pend[i].bytes += d.Bytes
		st.pend[i].packets += d.Segments
		st.pendAt = at
	}
}

// handle converts one engine event into zero or more flow events in h.out.
func (h *hub) handle(ev match.Event) {
	switch ev.Kind {
	case match.EventSocketOpen:
		if !ev.Local.IsValid() {
			return
		}
		if len(h.nodes) < h.cfg.MaxFlows*2 {
			h.nodes[ev.Local] = ev.Node
		}
		// The second end of a flow joins without a flow open event.
		k, i := newPairKey(ev.Local, ev.Remote)
		if st := h.flows[k]; st != nil {
			st.node[i] = ev.Node
		}
	case match.EventSocketClose:
		if n, ok := h.nodes[ev.Local]; ok && n == ev.Node {
			delete(h.nodes, ev.Local)
		}
	case match.EventFlowOpen:
		k, _ := newPairKey(ev.Local, ev.Remote)
		if _, ok := h.flows[k]; ok || len(h.flows) >= h.cfg.MaxFlows {
			return
		}
		st := &flowState{ep: [2]netip.AddrPort{k.a, k.b}, client: -1, openedAt: ev.Time, tracked: true}
		st.node[0], st.node[1] = h.nodes[k.a], h.nodes[k.b]
		h.flows[k] = st
		h.pending = append(h.pending, st)
	case match.EventEdgeChange:
		k, i := newPairKey(ev.Local, ev.Remote)
		if st := h.flows[k]; st != nil {
			st.client = int8(i)
			st.wl[i], st.wl[1-i] = workload(ev.Key.Src), workload(ev.Key.Dst)
		}
	case match.EventFlowClose:
		// Local is the client end; the close carries the flow's totals, of
		// which the traffic since the last read is still to be sent.
		k, i := newPairKey(ev.Local, ev.Remote)
		st := h.flows[k]
		if st == nil {
			return
		}
		delete(h.flows, k)
		st.closed = true
		st.client = int8(i)
		if ev.Key != (aggregate.Key{}) {
			st.wl[i], st.wl[1-i] = workload(ev.Key.Src), workload(ev.Key.Dst)
		}
		var delta [2]match.Counts
		for j, tot := range ev.Total {
			end := i ^ j // Total[0] is from the client
			r := st.reported[end]
			delta[end] = match.Counts{Bytes: tot.Bytes - min(r.Bytes, tot.Bytes), Segments: tot.Segments - min(r.Segments, tot.Segments)}
		}
		if !st.openSent {
			h.emitOpen(st)
		}
		st.add(delta, ev.Time)
		h.emitUpdates(st)
		h.out = append(h.out, h.flow(ev.Time, observerv1.FlowEventType_FLOW_EVENT_TYPE_CLOSE, st, st.clientIndex()))
	}
}

// flushPending sends the opens whose flows have had no traffic for the
// grace period, with the workloads known so far.
func (h *hub) flushPending(now time.Time) {
	keep := h.pending[:0]
	for _, st := range h.pending {
		switch {
		case st.openSent:
		case now.Sub(st.openedAt) >= h.cfg.OpenGrace:
			h.emitOpen(st)
		default:
			keep = append(keep, st)
		}
	}
	clear(h.pending[len(keep):])
	h.pending = keep
}

// flushUpdates sends the updates of the first n flows with traffic, one
// per flow and direction with the traffic counted since the last one.
func (h *hub) flushUpdates(n int) {
	n = min(n, len(h.dirty)-h.dirtyHead)
	for i := h.dirtyHead; i < h.dirtyHead+n; i++ {
		st := h.dirty[i]
		h.dirty[i] = nil
		st.dirty = false
		if !st.closed {
			h.emitUpdates(st)
		}
	}
	h.dirtyHead += n
	if h.dirtyHead == len(h.dirty) {
		h.dirty, h.dirtyHead = h.dirty[:0], 0
	}
}

// updateBudget is how many flows' updates to send at a poll: those of one
// read spread over the polls until the next, so that a stream that keeps
// up with their rate does not lose them to a burst beyond its buffer.
func (h *hub) updateBudget(now, next time.Time) int {
	n := len(h.dirty) - h.dirtyHead
	polls := int(next.Sub(now) / h.cfg.Poll)
	if polls <= 1 {
		return n
	}
	return (n + polls - 1) / polls
}

// emitUpdates sends the pending traffic of st, one update per sending end.
func (h *hub) emitUpdates(st *flowState) {
	for i := range st.pend {
		p := st.pend[i]
		if p.bytes|p.packets == 0 {
			continue
		}
		f := h.flow(st.pendAt, observerv1.FlowEventType_FLOW_EVENT_TYPE_UPDATE, st, i)
		f.Bytes, f.Packets = p.bytes, p.packets
		h.out = append(h.out, f)
		st.pend[i].bytes, st.pend[i].packets = 0, 0
	}
}

// emitOpen sends the open event of st, dated when the flow opened.
func (h *hub) emitOpen(st *flowState) {
	st.openSent = true
	h.out = append(h.out, h.flow(st.openedAt, observerv1.FlowEventType_FLOW_EVENT_TYPE_OPEN, st, st.clientIndex()))
}

// clientIndex returns the client end: known from an edge change, else the
// end with the higher (ephemeral) port.
func (st *flowState) clientIndex() int {
	if st.client >= 0 {
		return int(st.client)
	}
	if st.ep[1].Port() > st.ep[0].Port() {
		return 1
	}
	return 0
}

// flow returns an event of st from end src to the other end.
func (h *hub) flow(t time.Time, typ observerv1.FlowEventType, st *flowState, src int) *observerv1.Flow {
	if t.IsZero() {
		t = time.Now()
	}
	return &observerv1.Flow{
		Time:         timestamppb.New(t),
		Type:         typ,
		Source:       h.endpoint(st, src),
		Destination:  h.endpoint(st, 1-src),
		TotalBytes:   st.bytes,
		TotalPackets: st.packets,
	}
}

// endpoint returns end i of st. The events of a flow share it while its
// workload and node stay the same: sent events are never changed.
func (h *hub) endpoint(st *flowState, i int) *observerv1.Endpoint {
	ap := st.ep[i]
	node := st.node[i]
	if node == "" {
		node = h.nodes[ap]
	}
	if e := st.eps[i]; e != nil && e.Workload == st.wl[i] && e.Node == node {
		return e
	}
	e := &observerv1.Endpoint{Ip: ap.Addr().String(), Port: uint32(ap.Port()), Workload: st.wl[i], Node: node}
	st.eps[i] = e
	return e
}

func workload(w aggregate.Workload) *observerv1.Workload {
	if w == (aggregate.Workload{}) {
		return nil
	}
	return &observerv1.Workload{Name: w.Name, Kind: w.Kind, Namespace: w.Namespace, Zone: w.Zone, Node: w.Node, Pod: w.Pod}
}

// publish keeps flows in the ring and offers them to every stream.
func (h *hub) publish(flows []*observerv1.Flow) {
	if len(flows) == 0 {
		return
	}
	h.metrics.events.Add(float64(len(flows)))
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, f := range flows {
		if len(h.ring) > 0 {
			h.ring[h.next] = f
			h.next++
			if h.next == len(h.ring) {
				h.next, h.full = 0, true
			}
		}
		var resp *observerv1.WatchFlowsResponse
		for s := range h.subs {
			if !s.wants(f) {
				continue
			}
			if resp == nil {
				resp = &observerv1.WatchFlowsResponse{Response: &observerv1.WatchFlowsResponse_Flow{Flow: f}}
			}
			h.offer(s, item{flow: f, resp: resp})
		}
	}
}

// offer puts it in s's buffer, after the report of earlier losses, or
// counts it lost.
func (h *hub) offer(s *sub, it item) {
	if s.pending > 0 {
		select {
		case s.ch <- item{lost: s.pending}:
			s.pending = 0
		default:
			s.pending++
			h.metrics.lost.Inc()
			return
		}
	}
	select {
	case s.ch <- it:
	default:
		s.pending++
		h.metrics.lost.Inc()
	}
}

// reportEngineLoss tells every stream of the events that the hub itself
// lost since the last report, because it fell behind the engine.
func (h *hub) reportEngineLoss() {
	ls, ok := h.src.(LossSource)
	if !ok {
		return
	}
	n := ls.EventsLost(subscriberName)
	h.mu.Lock()
	defer h.mu.Unlock()
	if n <= h.engineLost {
		return
	}
	d := n - h.engineLost
	h.engineLost = n
	for s := range h.subs {
		select {
		case s.ch <- item{lost: d, reducer: true}:
		default:
			s.pending += d // reported with the stream's own loss
		}
	}
}

// reportLost queues the loss reports of the streams that have room again,
// so that a consumer that resumes learns of its loss even when no new event
// follows.
func (h *hub) reportLost() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if s.pending == 0 {
			continue
		}
		select {
		case s.ch <- item{lost: s.pending}:
			s.pending = 0
		default:
		}
	}
}

// subscribe registers s and returns the recent events it asked for, so
// that nothing is missed or sent twice between the two.
func (h *hub) subscribe(s *sub, req *observerv1.WatchFlowsRequest) []*observerv1.Flow {
	h.mu.Lock()
	defer h.mu.Unlock()
	recent := h.recent(req, s)
	if req.GetFollow() {
		h.subs[s] = struct{}{}
		h.follow()
	}
	return recent
}

func (h *hub) unsubscribe(s *sub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
	if len(h.subs) == 0 {
		h.lastStream = time.Now()
	}
}

// recent returns the ring's events that req asks for, oldest first.
func (h *hub) recent(req *observerv1.WatchFlowsRequest, s *sub) []*observerv1.Flow {
	if req.GetSince() == nil && req.GetLast() == 0 {
		return nil
	}
	var all []*observerv1.Flow
	if h.full {
		all = append(all, h.ring[h.next:]...)
	}
	all = append(all, h.ring[:h.next]...)
	var since time.Time
	if req.GetSince() != nil {
		since = req.GetSince().AsTime()
	}
	out := all[:0:0]
	for _, f := range all {
		if f == nil || (!since.IsZero() && f.GetTime().AsTime().Before(since)) || !s.wants(f) {
			continue
		}
		out = append(out, f)
	}
	if n := int(req.GetLast()); n > 0 && len(out) > n {
		out = out[len(out)-n:]
	}
	return out
}

// wants reports whether s's filters pass f.
func (s *sub) wants(f *observerv1.Flow) bool {
	for _, d := range s.deny {
		if matches(d, f) {
			return false
		}
	}
	if len(s.allow) == 0 {
		return true
	}
	for _, a := range s.allow {
		if matches(a, f) {
			return true
		}
	}
	return false
}

// matches reports whether f passes every field of flt.
func matches(flt *observerv1.FlowFilter, f *observerv1.Flow) bool {
	ends := [2]*observerv1.Endpoint{f.GetSource(), f.GetDestination()}
	field := func(values []string, get func(*observerv1.Workload) string) bool {
		if len(values) == 0 {
			return true
		}
		for _, e := range ends {
			w := e.GetWorkload()
			if w == nil {
				continue
			}
			for _, v := range values {
				if get(w) == v {
					return true
				}
			}
		}
		return false
	}
	if !field(flt.GetWorkload(), (*observerv1.Workload).GetName) ||
		!field(flt.GetNamespace(), (*observerv1.Workload).GetNamespace) ||
		!field(flt.GetKind(), (*observerv1.Workload).GetKind) {
		return false
	}
	if len(flt.GetPort()) == 0 {
		return true
	}
	for _, e := range ends {
		for _, p := range flt.GetPort() {
			if e.GetPort() == p {
				return true
			}
		}
	}
	return false
}
