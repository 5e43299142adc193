package match

import (
	"net/netip"
	"time"

	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// Apply validates b against the session and then applies all of it. A
// refused batch changes nothing.
func (e *Engine) Apply(s *Session, b *Batch) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s.gone {
		return refuse(ReasonSessionReplaced, "session of node %q epoch %d was replaced", s.node, s.epoch)
	}
	if err := e.prepare(s, b); err != nil {
		for _, id := range e.created {
			e.freeSock(id)
		}
		e.created = e.created[:0]
		return err
	}
	e.commit(s, b)
	s.applied = b.Sequence
	return nil
}

// prepare checks every handle of b and resolves the stats entries to
// sockets, without changing the session.
func (e *Engine) prepare(s *Session, b *Batch) error {
	e.newProcs.reuse(len(b.Processes))
	e.newSocks.reuse(len(b.Sockets))
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
		if _, ok := e.newProcs.m[p.Handle]; ok {
			return refuse(ReasonDuplicateHandle, "batch %d: process %d: handle %d announced twice", seq, i, p.Handle)
		}
		e.newProcs.m[p.Handle] = &process{handle: p.Handle, pid: p.PID, comm: p.Comm, startTime: p.StartTime, cgroupID: p.CgroupID, cgroup: p.Cgroup, container: shortID(p.ContainerID), podUID: p.PodUID}
	}
	for i, k := range b.Sockets {
		if _, ok := s.socks.get(k.Handle); ok {
			return refuse(ReasonDuplicateHandle, "batch %d: socket %d: handle %d is already live", seq, i, k.Handle)
		}
		if _, ok := e.newSocks.m[k.Handle]; ok {
			return refuse(ReasonDuplicateHandle, "batch %d: socket %d: handle %d announced twice", seq, i, k.Handle)
		}
		p, ok := e.lookupProc(s, k.Process)
		if !ok {
			return refuse(ReasonUnknownHandle, "batch %d: socket %d: unknown process handle %d", seq, i, k.Process)
		}
		id := e.sockTab.alloc()
		*e.sockAt(id) = socket{handle: k.Handle, role: k.Role, process: e.procTab.hold(p), sess: e.sessTab.hold(s), netns: k.Netns, cookie: k.Cookie, refs: 1}
		e.newSocks.m[k.Handle] = id
		e.created = append(e.created, id)
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
		id, ok := e.lookupSock(s, h)
		if !ok {
			return refuse(ReasonUnknownHandle, "batch %d: stats entry %d: unknown socket handle %d", seq, i, h)
		}
		e.statSocks = append(e.statSocks, id)
	}
	if err := e.prepareFailed(s, b); err != nil {
		return err
	}
	if err := e.prepareUDP(s, b); err != nil {
		return err
	}
	e.seen.reuse(len(b.Closed))
	for i, h := range b.Closed {
		if _, ok := s.socks.get(h); !ok {
			id, ok := e.newSocks.m[h]
			if !ok {
				return refuse(ReasonUnknownHandle, "batch %d: closed socket %d: unknown socket handle %d", seq, i, h)
			}
			// Announced by this batch too: brief.
			e.sockAt(id).brief = true
		}
		if _, ok := e.seen.m[h]; ok {
			return refuse(ReasonDuplicateHandle, "batch %d: closed socket %d: handle %d closed twice", seq, i, h)
		}
		e.seen.m[h] = struct{}{}
	}
	if len(b.Forgotten) > 0 {
		e.seen.reuse(len(b.Forgotten)) // otherwise the closes' table stays for the next batch
	}
	for i, h := range b.Forgotten {
		if p, ok := e.lookupProc(s, h); !ok || p == nil {
			return refuse(ReasonUnknownHandle, "batch %d: forgotten process %d: unknown process handle %d", seq, i, h)
		}
		if _, ok := e.seen.m[h]; ok {
			return refuse(ReasonDuplicateHandle, "batch %d: forgotten process %d: handle %d forgotten twice", seq, i, h)
		}
		e.seen.m[h] = struct{}{}
	}
	return nil
}

// commit applies a prepared batch: it announces, resolves, counts, then
// closes, in the order of the batch's parts.
func (e *Engine) commit(s *Session, b *Batch) {
	now := e.now()
	e.emitting = e.events.active()
	// Flows whose metadata changed resolve again in this settle.
	e.resolver.Changed(e.markDirtyID)
	if !b.Time.IsZero() {
		s.lag = max(now.Sub(b.Time), 0)
		e.raiseLag(s.lag)
	}
	if !s.reported {
		e.reported(s)
		e.updateWindow()
	}
	e.publishDue(now)
	for h, p := range e.newProcs.m {
		s.procs[h] = p
	}
	// The batch's local addresses are fleet addresses before its sockets
	// join, so that a connection between two of its sockets waits for both.
	for i := range b.Sockets {
		if a := b.Sockets[i].Local.Addr().Unmap(); !a.IsLoopback() {
			if _, ok := s.addrs[a]; !ok {
				s.addrs[a] = struct{}{}
				e.fleet[a]++
			}
		}
	}
	for i, id := range e.created {
		s.socks.set(e.sockAt(id).handle, id)
		e.join(now, s, id, &b.Sockets[i])
	}
	e.nsockets += len(e.created)
	e.created = e.created[:0]
	for _, o := range b.Owners {
		sid, _ := s.socks.get(o.Socket)
		sk := e.sockAt(sid)
		p, _ := e.lookupProc(s, o.Process)
		if e.procAt(sk.process) == p {
			continue
		}
		old := sk.process
		sk.process = e.procTab.hold(p)
		e.procTab.unref(old)
		if sk.flow != 0 {
			e.markDirty(e.ref(sk.flow))
		}
	}
	// New ends join and owners resolve before counting, so that ends opened
	// in the same interval are counted on their joined edge.
	e.settle(now)

	st := &b.Stats
	e.touchStats()
	for i, id := range e.statSocks {
		sk := e.sockAt(id)
		if sk.flow == 0 {
			continue
		}
		f := e.ref(sk.flow)
		end := sk.end
		if bs, ss := st.BytesSent[i], st.SegmentsSent[i]; bs|ss != 0 {
			d := &f.dir[end]
			b0, s0 := d.maxViews()
			d.sentBytes += bs
			d.sentSegs += ss
			e.account(now, f, end, b0, s0)
		}
		if br, sr := st.BytesReceived[i], st.SegmentsReceived[i]; br|sr != 0 {
			d := &f.dir[1-end]
			b0, s0 := d.maxViews()
			d.recvBytes += br
			d.recvSegs += sr
			e.account(now, f, 1-end, b0, s0)
		}
		if st.hasHealth() {
			e.countHealth(now, f, end, st, i)
		}
	}
	e.countFailed(now, s, b.Failed)
	e.countUDP(now, s, b.UDP)
	e.updates.Add(float64(len(e.statSocks)))

	for _, h := range b.Closed {
		id, _ := s.socks.get(h)
		sk := e.sockAt(id)
		if e.emitting {
			e.emitSocket(now, EventSocketClose, sk)
		}
		e.close(sk)
		s.socks.del(h)
		e.unrefSock(id)
	}
	e.nsockets -= len(b.Closed)
	for _, h := range b.Forgotten {
		// A socket that still points to the process keeps its workload.
		delete(s.procs, h)
	}
	if s.orphans != nil && !b.Continued {
		// The first report, whole, announced everything live again.
		e.closeOrphans(s)
	}
	e.settle(now)
	e.setGauges()
}

// touchStats reads the socket and the flow of each stats entry before the
// counting loop does: they are scattered over the slabs, and loads that do
// not depend on each other let their cache misses overlap, where the
// counting loop would wait for each in turn.
func (e *Engine) touchStats() {
	e.statFlows = e.statFlows[:0]
	for _, id := range e.statSocks {
		e.statFlows = append(e.statFlows, e.sockAt(id).flow)
	}
	var x uint16
	for _, id := range e.statFlows {
		if id != 0 {
			x |= e.flowAt(id).flags
		}
	}
	e.touched = x
}

// join makes a new socket an end of its flow.
func (e *Engine) join(now time.Time, s *Session, id sockID, in *Socket) {
	sk := e.sockAt(id)
	local := netipUnmap(in.Local)
	remote := netipUnmap(in.Remote)
	if e.emitting {
		e.emit(Event{Kind: EventSocketOpen, Time: now, Node: s.node, Cookie: sk.cookie, Local: local, Remote: remote})
	}
	if local == remote {
		return // a self-connected socket has no peer to join
	}
	loop := local.Addr().IsLoopback() || remote.Addr().IsLoopback()
	if loop && !e.cfg.Loopback {
		return
	}
	private := loop
	key, end, ok := e.lookupKey(local, remote, private, s.node, in.Netns)
	var f, last flowRef
	if ok {
		f, last = e.find(e.flows.get(key), end, sk, in.NewConnection)
	}
	if f.flow == nil && !loop && last.flow != nil && last.live(end) && e.sessAt(e.sockAt(last.ends[end]).sess).node != s.node {
		// Another node's live socket claims the same endpoints, e.g. the
		// same private addresses behind two NATs: keep this one to its
		// node.
		e.conflicts.Inc()
		private = true
		key, end, ok = e.lookupKey(local, remote, private, s.node, in.Netns)
		f, last = flowRef{}, flowRef{}
		if ok {
			f, last = e.find(e.flows.get(key), end, sk, in.NewConnection)
		}
	}
	if f.flow == nil {
		f = e.newFlow(now, local, remote, private, s.node, in.Netns, last, loop || sk.brief, remote.Addr())
	}
	if old := f.ends[end]; old != 0 {
		// The same socket, back under its collector's new session: the
		// old handle stays its predecessor's orphan until it closes.
		e.sockAt(old).flow = 0
		e.unrefSock(old)
	}
	f.ends[end] = id
	sk.refs++
	f.flags &^= vacantFlag(end)
	sk.flow, sk.end = f.id, end
	if in.NewConnection && !f.has(flowOpened) {
		f.flags |= flowOpened | flowPendingOpen
	}
	if !f.has(flowPublished) && f.ends[1-end] != 0 && !e.holding(now) {
		e.publish(f) // both ends are here
	}
	if f.has(flowPartial) && f.ends[1-end] != 0 {
		// The peer's end reported here after all: count all of it.
		f.flags = f.flags&^flowPartial | flowRecount
	}
	e.markDirty(f)
}

// find returns the flow of a chain that a new socket sk becomes end i of:
// the flow it was end i of before its session was replaced, else the
// oldest flow whose end i no socket claimed yet. A reused 4-tuple is a new
// flow, and both sides open the flows of one 4-tuple in the same order, so
// the n-th socket of a side joins the n-th flow, whatever the order in
// which the sides report.
//
// It also returns the newest flow of the chain that starts at head.
func (e *Engine) find(head flowID, i uint8, sk *socket, newConn bool) (match, last flowRef) {
	var fresh flowRef
	for id := head; id != 0; {
		f := e.ref(id)
		last = f
		first, again := e.joinable(f.flow, i, sk, newConn)
		if again {
			return f, flowRef{}
		}
		if first && fresh.flow == nil {
			fresh = f
		}
		id = f.next
	}
	return fresh, last
}

// newFlow adds the flow of local-remote after last, the newest of its
// key's chain (none: the first of a new chain). A flow whose peer may be a
// fleet address is held for the join window, and so is one that wait asks
// for (a loopback flow, or a brief socket's).
func (e *Engine) newFlow(now time.Time, local, remote netip.AddrPort, private bool, node string, netns uint32, last flowRef, wait bool, peer netip.Addr) flowRef {
	key, _ := e.internKey(local, remote, private, node, netns)
	id := e.flowTab.alloc()
	f := e.ref(id)
	f.key = key
	if last.flow != nil {
		last.next = id
	} else {
		e.flows.set(key, id)
		if e.emitting {
			e.emit(Event{Kind: EventFlowOpen, Time: now, Local: e.endpoint(&key, 0), Remote: e.endpoint(&key, 1)})
		}
	}
	e.nflows++
	if e.window > 0 && (wait || e.isFleet(now, peer)) || e.holding(now) {
		f.flags |= flowQueued
		e.held.push(id, now.UnixNano())
		e.nheld++
	} else {
		f.flags |= flowPublished
	}
	return f
}

// isFleet reports whether a connected collector may report a socket of
// addr: an address some collector reports as local, one that metadata
// names as a pod's or a node's, or any address while a connected
// collector has not reported yet, or during the first join window after
// start, while the collectors connect.
func (e *Engine) isFleet(now time.Time, addr netip.Addr) bool {
	if e.fleet[addr] > 0 || e.unreported > 0 || now.Sub(e.started) < e.window {
		return true
	}
	return e.resolver.Fleet(addr)
}

// publish makes a held flow count on edges from its next settle, with what
// its ends reported while it was held.
func (e *Engine) publish(f flowRef) {
	if f.has(flowPublished) {
		return
	}
	f.flags |= flowPublished | flowRecount
	if f.has(flowQueued) {
		e.nheld--
	}
	e.markDirty(f)
}

// publishDue publishes the held flows whose join window has passed: their
// peer's end did not report in time, and they count as one-sided. A flow
// that left the table while queued is freed here.
func (e *Engine) publishDue(now time.Time) {
	if e.holding(now) {
		return
	}
	if e.metaRelease {
		e.releaseWait(now)
	}
	n := 0
	deadline := now.UnixNano() - int64(e.window)
queue:
	for _, run := range e.held.runs {
		for _, id := range e.held.ids[n : n+run.n] {
			if !e.publishHeld(id, run.born, deadline) {
				break queue
			}
			n++
		}
	}
	e.held.pop(n)
}

// publishHeld publishes the held flow of id, born at born, unless its join
// window has not passed yet (born is later than deadline), and marks it as
// no longer queued, for the caller to take off the queue; it reports
// whether the flow leaves the queue.
func (e *Engine) publishHeld(id flowID, born, deadline int64) bool {
	f := e.ref(id)
	if !f.has(flowPublished) {
		if born > deadline {
			return false
		}
		if e.awaited(f) {
			e.oneSided.Inc()
		}
		if e.cfg.Sharded {
			for i := range uint8(2) {
				if peer := e.endpoint(&f.key, i).Addr(); f.ends[i] == 0 && (e.fleet[peer] > 0 || e.resolver.Fleet(peer)) {
					f.flags |= flowPartial
				}
			}
		}
		e.publish(f)
	}
	f.flags &^= flowQueued
	if f.has(flowGone) {
		e.releaseGone(f)
	}
	return true
}

// awaited reports whether a held flow's missing end is one that a
// collector was expected to report: a loopback end, or a fleet address. A
// brief socket's flow to an address outside the fleet waits too, but its
// peer is not missed when it does not come.
func (e *Engine) awaited(f flowRef) bool {
	for i := range uint8(2) {
		if f.ends[i] != 0 || f.has(vacantFlag(i)) {
			continue
		}
		if peer := e.endpoint(&f.key, i).Addr(); peer.IsLoopback() || e.fleet[peer] > 0 || e.resolver.Fleet(peer) {
			return true
		}
	}
	return false
}

// releaseWait publishes, once the metadata wait is over, the held flows
// that only the wait held: those whose both ends reported, and those whose
// missing end is not a fleet address, unless the end they have is brief.
// The others wait for their peer's end as usual.
func (e *Engine) releaseWait(now time.Time) {
	e.metaRelease = false
	for _, id := range e.held.ids {
		f := e.ref(id)
		if f.has(flowPublished) {
			continue
		}
		wait := false
		for i := range uint8(2) {
			if id := f.ends[i]; id == 0 && e.isFleet(now, e.endpoint(&f.key, i).Addr()) || id != 0 && e.sockAt(id).brief {
				wait = true
			}
		}
		if !wait {
			e.publish(f)
		}
	}
}

// close marks a socket's end of its flow closed. The socket stays the end
// of its flow, which names its workload, and no other socket becomes that
// end.
func (e *Engine) close(sk *socket) {
	if sk.flow == 0 {
		return
	}
	f := e.ref(sk.flow)
	f.flags |= closedFlag(sk.end)
	if f.empty() {
		// The flow leaves the table at the next settle. While its other
		// end is live, nothing of it changes: its closed end names its
		// workload as before, and it stays active.
		e.markDirty(f)
	}
}

// leave takes a socket of a replaced or expired session out of its flow:
// the same socket may come back under the new session (same cookie), and
// its views go on from where they were, since a collector's deltas after a
// resync continue from its last report. A flow that no end reports and
// that is published leaves the table at the next settle; the socket then
// starts a new one, counting from zero.
func (e *Engine) leave(sk *socket) {
	if sk.flow == 0 {
		return
	}
	f := e.ref(sk.flow)
	i := sk.end
	if f.has(closedFlag(i)) {
		sk.flow = 0
		return
	}
	f.flags |= vacantFlag(i)
	e.markDirty(f)
}

// unrefSock takes back a reference to a socket: its session's (or its
// successor's, while vacant) or its flow's. The last frees it.
func (e *Engine) unrefSock(id sockID) {
	sk := e.sockAt(id)
	if sk.refs--; sk.refs == 0 {
		e.freeSock(id)
	}
}

// freeSock frees a socket's record and its references to its session and
// process.
func (e *Engine) freeSock(id sockID) {
	sk := e.sockAt(id)
	e.sessTab.unref(sk.sess)
	e.procTab.unref(sk.process)
	e.sockTab.release(id)
}

func (e *Engine) markDirty(f flowRef) {
	if !f.has(flowDirty) {
		f.flags |= flowDirty
		e.dirty = append(e.dirty, f.id)
	}
}

// settle brings every changed flow's ends, edges and active connection up
// to date, and removes the flows that no end reports any more.
func (e *Engine) settle(now time.Time) {
	for _, id := range e.dirty {
		f := e.ref(id)
		f.flags &^= flowDirty
		if !f.has(flowPublished) {
			continue // held: no edge until it is published
		}
		if f.empty() && !f.has(flowVacant0|flowVacant1) {
			if f.has(flowRecount) {
				// A tombstone published: count what it held.
				f.flags &^= flowRecount
				e.recount(now, f)
			}
			if c := e.client(f.flow); f.has(flowPendingOpen) && f.counts(c) {
				w := [2]aggregate.Workload{e.resolve(f, 0), e.resolve(f, 1)}
				e.store.Edge(now, aggregate.Key{Src: w[c], Dst: w[1-c]}).Add(now, aggregate.TCPConnectionsOpened, 1)
			}
			f.flags &^= flowPendingOpen
			if f.conn != 0 {
				e.edgeAt(f.conn).Sub(now, aggregate.TCPActiveConnections, 1)
				e.setEdge(&f.conn, nil)
			}
			if e.emitting {
				e.emitFlowClose(now, f)
			}
			e.unlink(f)
			continue
		}
		w := [2]aggregate.Workload{e.resolve(f, 0), e.resolve(f, 1)}
		client := e.client(f.flow)
		for d := range f.dir {
			k := aggregate.Key{Src: w[d], Dst: w[1-d]}
			cur := e.edgeAt(f.edge[d])
			switch {
			case cur != nil && !cur.Dead() && cur.Matches(k):
			case uint8(d) == client && f.counts(client):
				// The connection counts on the client's edge from now on.
				e.setEdge(&f.edge[d], e.store.Edge(now, k))
			default:
				e.setEdge(&f.edge[d], nil)
			}
		}
		conn := e.edgeAt(f.edge[client])
		if !f.counts(client) {
			conn = nil // the client's reducer counts the connection
		}
		if prev := e.edgeAt(f.conn); conn != prev {
			if prev != nil {
				prev.Sub(now, aggregate.TCPActiveConnections, 1)
				if e.emitting && conn != nil {
					e.emit(Event{Kind: EventEdgeChange, Time: now, Local: e.endpoint(&f.key, client), Remote: e.endpoint(&f.key, 1-client),
						Key: conn.Key(), Prev: prev.Key()})
				}
			}
			if conn != nil {
				conn.Add(now, aggregate.TCPActiveConnections, 1)
			}
			e.setEdge(&f.conn, conn)
		}
		if f.has(flowPendingOpen) {
			if conn != nil {
				conn.Add(now, aggregate.TCPConnectionsOpened, 1)
			}
			f.flags &^= flowPendingOpen
		}
		if f.has(flowRecount) {
			f.flags &^= flowRecount
			e.recount(now, f)
		}
	}
	e.dirty = e.dirty[:0]
}

// recount counts what a flow's directions that were not counted yet hold.
func (e *Engine) recount(now time.Time, f flowRef) {
	for d := range uint8(2) {
		b, s := f.dir[d].maxViews()
		e.account(now, f, d, b, s)
	}
}

// unlink takes f out of its chain and the table, and lets its ends, its
// addresses and (unless the queue of held flows still has it) its slot go.
func (e *Engine) unlink(f flowRef) {
	f.flags |= flowGone
	e.nflows--
	e.resolver.Forget(f.id, &f.uses)
	head := e.flows.get(f.key)
	if head == f.id {
		if f.next == 0 {
			e.flows.del(f.key)
		} else {
			e.flows.set(f.key, f.next)
		}
	} else {
		for gid := head; gid != 0; {
			g := e.flowAt(gid)
			if g.next == f.id {
				g.next = f.next
				break
			}
			gid = g.next
		}
	}
	for i, id := range f.ends {
		if id == 0 {
			continue
		}
		if sk := e.sockAt(id); sk.flow == f.id {
			sk.flow = 0
		}
		f.ends[i] = 0
		e.unrefSock(id)
	}
	e.addrs.unref(f.key.a)
	e.addrs.unref(f.key.b)
	if f.has(flowHealth) {
		delete(e.healths, f.id)
	}
	e.setEdge(&f.edge[0], nil)
	e.setEdge(&f.edge[1], nil)
	e.setEdge(&f.conn, nil)
	e.releaseGone(f)
}

// releaseGone frees the slot of a flow that left the table, once neither
// the queue of held flows nor the list of flows with traffic has it.
func (e *Engine) releaseGone(f flowRef) {
	if !f.has(flowQueued | flowTraffic) {
		e.flowTab.release(f.id)
	}
}

// resolve returns the workload of endpoint i of f.
func (e *Engine) resolve(f flowRef, i uint8) aggregate.Workload {
	ep := resolve.Endpoint{Addr: e.addrs.addr(f.key.a)}
	if i == 1 {
		ep.Addr = e.addrs.addr(f.key.b)
	}
	if id := f.ends[i]; id != 0 {
		sk := e.sockAt(id)
		e.socketEndpoint(&ep, e.sessAt(sk.sess), e.procAt(sk.process), sk.netns)
	}
	return e.resolver.Resolve(f.id, &f.uses, int(i), ep)
}

// socketEndpoint fills in what a local end's socket says of it: its
// session, its process (nil if unknown) and its network namespace.
func (e *Engine) socketEndpoint(ep *resolve.Endpoint, s *Session, p *process, netns uint32) {
	ep.Local, ep.Node, ep.Netns = true, s.node, netns
	if p != nil {
		ep.Known, ep.Comm, ep.CgroupID, ep.Container = true, p.comm, p.cgroupID, p.container
		ep.PodUID = p.podUID
	}
}

// account counts on the edge of direction d of f what the larger of its
// views gained: b0 and s0 are the larger views of bytes and segments before
// the change, already counted if the direction was. Each byte counts once,
// even when both ends report it. The edge is looked up at the first traffic
// after the flow's ends changed, so that a direction without traffic leaves
// no empty series.
func (e *Engine) account(now time.Time, f flowRef, d uint8, b0, s0 uint64) {
	if !f.has(flowPublished) {
		return // held: the views keep what the ends report
	}
	if !f.counts(d) {
		return // another reducer has the sending end
	}
	e.accountHealth(now, f, d)
	dir := &f.dir[d]
	if !f.has(countedFlag(d)) {
		f.flags |= countedFlag(d)
		b0, s0 = 0, 0
	}
	b, sg := dir.maxViews()
	db, ds := b-b0, sg-s0
	if db|ds == 0 {
		return
	}
	ed := e.edgeAt(f.edge[d])
	if ed == nil {
		ed = e.store.Edge(now, aggregate.Key{Src: e.resolve(f, d), Dst: e.resolve(f, 1-d)})
		e.setEdge(&f.edge[d], ed)
	} else if ed.Dead() {
		ed = e.store.Edge(now, ed.Key())
		e.setEdge(&f.edge[d], ed)
	}
	ed.AddPair(now, aggregate.TCPBytes, db, aggregate.TCPPackets, ds)
	if e.emitting && !f.has(flowTraffic) {
		e.markTraffic(f, d, db, ds)
	}
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
	p, ok := e.newProcs.m[h]
	return p, ok
}

// lookupSock finds a live or newly announced socket.
func (e *Engine) lookupSock(s *Session, h uint32) (sockID, bool) {
	if id, ok := s.socks.get(h); ok {
		return id, true
	}
	id, ok := e.newSocks.m[h]
	return id, ok
}

// scratch is a map emptied for each batch, with the number of entries
// its table has room for (the most it held since it was made).
type scratch[K comparable, V any] struct {
	m    map[K]V
	room int
}

// reuse empties s for a batch of n entries. Emptying costs the table's
// size, so a table with room for many more is let go; and a batch much
// larger than the room gets a table sized for it at once rather than one
// that grows by splitting, which under connection churn (batches of
// thousands of new and closed sockets) took a tenth of the reducer's CPU.
func (s *scratch[K, V]) reuse(n int) {
	switch {
	case s.m == nil, s.room > 1024 && s.room > 4*n, n > 1024 && s.room < n/2:
		s.m, s.room = make(map[K]V, n), n
	default:
		clear(s.m)
		s.room = max(s.room, n)
	}
}
