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
		e.newProcs[p.Handle] = &process{handle: p.Handle, pid: p.PID, comm: p.Comm, startTime: p.StartTime, cgroupID: p.CgroupID, cgroup: p.Cgroup, container: shortID(p.ContainerID), podUID: p.PodUID}
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
		sk := &socket{handle: k.Handle, role: k.Role, process: p, ident: &socketIdent{sess: s, netns: k.Netns, cookie: k.Cookie}}
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
	if err := e.prepareFailed(s, b); err != nil {
		return err
	}
	if err := e.prepareUDP(s, b); err != nil {
		return err
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

// commit applies a prepared batch: it announces, resolves, counts, then
// closes, in the order of the batch's parts.
func (e *Engine) commit(s *Session, b *Batch) {
	now := e.now()
	e.emitting = e.events.active()
	// Flows whose metadata changed resolve again in this settle.
	e.resolver.Changed(e.markDirty)
	if !b.Time.IsZero() {
		s.lag = max(now.Sub(b.Time), 0)
	}
	if !s.reported {
		e.reported(s)
		e.updateWindow()
	}
	e.publishDue(now)
	for h, p := range e.newProcs {
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
	for i, sk := range e.created {
		s.socks[sk.handle] = sk
		e.join(now, s, sk, &b.Sockets[i])
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
			e.account(now, f, end)
		}
		if br, sr := st.BytesReceived[i], st.SegmentsReceived[i]; br|sr != 0 {
			d := &f.dir[1-end]
			d.recvBytes += br
			d.recvSegs += sr
			e.account(now, f, 1-end)
		}
		if st.hasHealth() {
			e.countHealth(now, f, end, st, i)
		}
	}
	e.countFailed(now, s, b.Failed)
	e.countUDP(now, s, b.UDP)
	e.updates.Add(float64(len(e.statSocks)))

	for _, h := range b.Closed {
		sk := s.socks[h]
		if e.emitting {
			e.emitSocket(now, EventSocketClose, sk)
		}
		e.close(sk)
		delete(s.socks, h)
	}
	e.nsockets -= len(b.Closed)
	for _, h := range b.Forgotten {
		// A socket that still points to the process keeps its workload.
		delete(s.procs, h)
	}
	if s.orphans != nil {
		// The first batch announced everything live again.
		e.closeOrphans(s)
	}
	e.settle(now)
	e.setGauges()
}

// join makes a new socket an end of its flow.
func (e *Engine) join(now time.Time, s *Session, sk *socket, in *Socket) {
	local := netipUnmap(in.Local)
	remote := netipUnmap(in.Remote)
	if e.emitting {
		e.emit(Event{Kind: EventSocketOpen, Time: now, Node: s.node, Cookie: sk.ident.cookie, Local: local, Remote: remote})
	}
	if local == remote {
		return // a self-connected socket has no peer to join
	}
	loop := local.Addr().IsLoopback() || remote.Addr().IsLoopback()
	if loop && !e.cfg.Loopback {
		return
	}
	key, end := newFlowKey(local, remote, loop, s.node, in.Netns)
	head := e.flows[key]
	f, last := find(head, end, sk.ident, in.NewConnection)
	if f == nil && !loop && last != nil && last.live(end) && last.ends[end].ident.sess.node != s.node {
		// Another node's live socket claims the same endpoints, e.g. the
		// same private addresses behind two NATs: keep this one to its
		// node.
		e.conflicts.Inc()
		key, end = newFlowKey(local, remote, true, s.node, in.Netns)
		head = e.flows[key]
		f, last = find(head, end, sk.ident, in.NewConnection)
	}
	if f == nil {
		f = e.newFlow(now, key, last, loop, remote.Addr())
	}
	f.ends[end] = sk
	f.flags &^= vacantFlag(end)
	sk.flow, sk.end = f, end
	if in.NewConnection && !f.opened {
		f.opened, f.pendingOpen = true, true
	}
	if !f.has(flowPublished) && f.ends[1-end] != nil {
		e.publish(f) // both ends are here
	}
	if f.has(flowPartial) && f.ends[1-end] != nil {
		// The peer's end reported here after all: count all of it.
		f.flags = f.flags&^flowPartial | flowRecount
	}
	e.markDirty(f)
}

// find returns the flow of a chain that a new socket becomes end i of: the
// flow it was end i of before its session was replaced, else the oldest
// flow whose end i no socket claimed yet. A reused 4-tuple is a new flow,
// and both sides open the flows of one 4-tuple in the same order, so the
// n-th socket of a side joins the n-th flow, whatever the order in which
// the sides report.
//
// It also returns the newest flow of the chain that starts at head.
func find(head *flow, i uint8, id *socketIdent, newConn bool) (match, last *flow) {
	var fresh *flow
	for f := head; f != nil; f = f.next {
		last = f
		first, again := f.joinable(i, id, newConn)
		if again {
			return f, nil
		}
		if first && fresh == nil {
			fresh = f
		}
	}
	return fresh, last
}

// newFlow adds a flow after last, the newest of key's chain (nil: the
// first of a new chain). A flow whose peer may be a fleet address is held
// for the join window.
func (e *Engine) newFlow(now time.Time, key flowKey, last *flow, loop bool, peer netip.Addr) *flow {
	f := &flow{key: key, born: now.UnixNano()}
	if last != nil {
		last.next = f
	} else {
		e.flows[key] = f
		if e.emitting {
			e.emit(Event{Kind: EventFlowOpen, Time: now, Local: key.a, Remote: key.b})
		}
	}
	e.nflows++
	if e.window > 0 && (loop || e.isFleet(now, peer)) {
		f.flags |= flowQueued
		e.held = append(e.held, f)
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
func (e *Engine) publish(f *flow) {
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
// peer's end did not report in time, and they count as one-sided.
func (e *Engine) publishDue(now time.Time) {
	n := 0
	deadline := now.UnixNano() - int64(e.window)
	for _, f := range e.held {
		if !f.has(flowPublished) {
			if f.born > deadline {
				break
			}
			e.oneSided.Inc()
			if e.cfg.Sharded {
				for i := range uint8(2) {
					if peer := f.key.endpoint(i).Addr(); f.ends[i] == nil && (e.fleet[peer] > 0 || e.resolver.Fleet(peer)) {
						f.flags |= flowPartial
					}
				}
			}
			e.publish(f)
		}
		f.flags &^= flowQueued
		n++
	}
	if n > 0 {
		rest := copy(e.held, e.held[n:])
		clear(e.held[rest:])
		e.held = e.held[:rest]
	}
}

// close marks a socket's end of its flow closed. The socket stays the end
// of its flow, which names its workload, and no other socket becomes that
// end.
func (e *Engine) close(sk *socket) {
	f := sk.flow
	if f == nil {
		return
	}
	f.flags |= closedFlag(sk.end)
	e.markDirty(f)
}

// leave takes a socket of a replaced or expired session out of its flow:
// the same socket may come back under the new session (same cookie), and
// its views go on from where they were, since a collector's deltas after a
// resync continue from its last report. A flow that no end reports and
// that is published leaves the table at the next settle; the socket then
// starts a new one, counting from zero.
func (e *Engine) leave(sk *socket) {
	f := sk.flow
	if f == nil {
		return
	}
	i := sk.end
	if f.has(closedFlag(i)) {
		sk.flow = nil
		return
	}
	f.flags |= vacantFlag(i)
	e.markDirty(f)
}

func (e *Engine) markDirty(f *flow) {
	if !f.dirty {
		f.dirty = true
		e.dirty = append(e.dirty, f)
	}
}

// settle brings every changed flow's ends, edges and active connection up
// to date, and removes the flows that no end reports any more.
func (e *Engine) settle(now time.Time) {
	for i, f := range e.dirty {
		e.dirty[i] = nil
		f.dirty = false
		if !f.has(flowPublished) {
			continue // held: no edge until it is published
		}
		if f.empty() && !f.has(flowVacant0|flowVacant1) {
			if f.has(flowRecount) {
				// A tombstone published: count what it held.
				f.flags &^= flowRecount
				e.account(now, f, 0)
				e.account(now, f, 1)
			}
			if c := f.client(); f.pendingOpen && f.counts(c) {
				w := [2]aggregate.Workload{e.resolve(f, 0), e.resolve(f, 1)}
				e.store.Edge(now, aggregate.Key{Src: w[c], Dst: w[1-c]}).Add(now, aggregate.TCPConnectionsOpened, 1)
			}
			f.pendingOpen = false
			if f.conn != nil {
				f.conn.Sub(now, aggregate.TCPActiveConnections, 1)
				f.conn = nil
			}
			e.unlink(f)
			e.resolver.Forget(f, &f.uses)
			if e.emitting {
				e.emitFlowClose(now, f)
			}
			continue
		}
		w := [2]aggregate.Workload{e.resolve(f, 0), e.resolve(f, 1)}
		client := f.client()
		for d := range f.dir {
			k := aggregate.Key{Src: w[d], Dst: w[1-d]}
			cur := f.dir[d].edge
			switch {
			case cur != nil && !cur.Dead() && cur.Matches(k):
			case uint8(d) == client && f.counts(client):
				// The connection counts on the client's edge from now on.
				f.dir[d].edge = e.store.Edge(now, k)
			default:
				f.dir[d].edge = nil
			}
		}
		conn := f.dir[client].edge
		if !f.counts(client) {
			conn = nil // the client's reducer counts the connection
		}
		if conn != f.conn {
			if f.conn != nil {
				f.conn.Sub(now, aggregate.TCPActiveConnections, 1)
				if e.emitting && conn != nil {
					e.emit(Event{Kind: EventEdgeChange, Time: now, Local: f.key.endpoint(client), Remote: f.key.endpoint(1 - client),
						Key: conn.Key(), Prev: f.conn.Key()})
				}
			}
			if conn != nil {
				conn.Add(now, aggregate.TCPActiveConnections, 1)
			}
			f.conn = conn
		}
		if f.pendingOpen {
			if conn != nil {
				conn.Add(now, aggregate.TCPConnectionsOpened, 1)
			}
			f.pendingOpen = false
		}
		if f.has(flowRecount) {
			f.flags &^= flowRecount
			e.account(now, f, 0)
			e.account(now, f, 1)
		}
	}
	e.dirty = e.dirty[:0]
}

// unlink takes f out of its chain and the table.
func (e *Engine) unlink(f *flow) {
	f.flags |= flowGone
	e.nflows--
	head := e.flows[f.key]
	if head == f {
		if f.next == nil {
			delete(e.flows, f.key)
		} else {
			e.flows[f.key] = f.next
		}
		return
	}
	for g := head; g != nil; g = g.next {
		if g.next == f {
			g.next = f.next
			return
		}
	}
}

// resolve returns the workload of endpoint i of f.
func (e *Engine) resolve(f *flow, i uint8) aggregate.Workload {
	ep := resolve.Endpoint{Addr: f.key.endpoint(i).Addr()}
	if s := f.ends[i]; s != nil {
		ep.Local, ep.Node, ep.Netns = true, s.ident.sess.node, s.ident.netns
		if p := s.process; p != nil {
			ep.Known, ep.Comm, ep.CgroupID, ep.Container = true, p.comm, p.cgroupID, p.container
			ep.PodUID = p.podUID
		}
	}
	return e.resolver.Resolve(f, &f.uses, int(i), ep)
}

// account counts on the edge of direction d of f what its views gained over
// the amount counted so far: each byte once, even when both ends report it.
// The edge is looked up at the first traffic after the flow's ends changed,
// so that a direction without traffic leaves no empty series.
func (e *Engine) account(now time.Time, f *flow, d uint8) {
	if !f.has(flowPublished) {
		return // held: the views keep what the ends report
	}
	if !f.counts(d) {
		return // another reducer has the sending end
	}
	e.accountHealth(now, f, d)
	dir := &f.dir[d]
	b := max(dir.sentBytes, dir.recvBytes)
	sg := max(dir.sentSegs, dir.recvSegs)
	var db, ds uint64
	if b > dir.countedBytes {
		db, dir.countedBytes = b-dir.countedBytes, b
	}
	if sg > dir.countedSegs {
		ds, dir.countedSegs = sg-dir.countedSegs, sg
	}
	if db|ds == 0 {
		return
	}
	if dir.edge == nil {
		dir.edge = e.store.Edge(now, aggregate.Key{Src: e.resolve(f, d), Dst: e.resolve(f, 1-d)})
	} else if dir.edge.Dead() {
		dir.edge = e.store.Edge(now, dir.edge.Key())
	}
	dir.edge.AddPair(now, aggregate.TCPBytes, db, aggregate.TCPPackets, ds)
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
