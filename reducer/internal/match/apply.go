package match

import (
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
		e.newProcs[p.Handle] = &process{handle: p.Handle, pid: p.PID, comm: p.Comm, startTime: p.StartTime, cgroupID: p.CgroupID, cgroup: p.Cgroup}
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
	for h, p := range e.newProcs {
		s.procs[h] = p
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
	}
	e.updates.Add(float64(len(e.statSocks)))

	for _, h := range b.Closed {
		sk := s.socks[h]
		if e.emitting {
			e.emitSocket(now, EventSocketClose, sk)
		}
		e.leave(sk)
		delete(s.socks, h)
	}
	e.nsockets -= len(b.Closed)
	for _, h := range b.Forgotten {
		// A socket that still points to the process keeps its workload.
		delete(s.procs, h)
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
		if e.emitting {
			e.emit(Event{Kind: EventFlowOpen, Time: now, Local: key.a, Remote: key.b})
		}
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

// settle brings every changed flow's ends, edges and active connection up
// to date, and removes the flows that no end reports any more.
func (e *Engine) settle(now time.Time) {
	for i, f := range e.dirty {
		e.dirty[i] = nil
		f.dirty = false
		if f.empty() {
			if f.conn != nil {
				f.conn.Sub(now, aggregate.TCPActiveConnections, 1)
				f.conn = nil
			}
			if e.flows[f.key] == f {
				delete(e.flows, f.key)
			}
			e.resolver.Forget(f, &f.uses)
			if e.emitting {
				e.emit(Event{Kind: EventFlowClose, Time: now, Local: f.key.a, Remote: f.key.b})
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
				f.conn.Sub(now, aggregate.TCPActiveConnections, 1)
				if e.emitting {
					e.emit(Event{Kind: EventEdgeChange, Time: now, Local: f.key.endpoint(client), Remote: f.key.endpoint(1 - client),
						Key: conn.Key(), Prev: f.conn.Key()})
				}
			}
			conn.Add(now, aggregate.TCPActiveConnections, 1)
			f.conn = conn
		}
		if f.pendingOpen {
			conn.Add(now, aggregate.TCPConnectionsOpened, 1)
			f.pendingOpen = false
		}
	}
	e.dirty = e.dirty[:0]
}

// resolve returns the workload of endpoint i of f.
func (e *Engine) resolve(f *flow, i uint8) aggregate.Workload {
	ep := resolve.Endpoint{Addr: f.key.endpoint(i).Addr()}
	if s := f.ends[i]; s != nil {
		ep.Local, ep.Node, ep.Netns = true, s.ident.sess.node, s.ident.netns
		if p := s.process; p != nil {
			ep.Known, ep.Comm, ep.CgroupID = true, p.comm, p.cgroupID
		}
	}
	return e.resolver.Resolve(f, &f.uses, int(i), ep)
}

// account counts on the edge of direction d of f what its views gained over
// the amount counted so far: each byte once, even when both ends report it.
// The edge is looked up at the first traffic after the flow's ends changed,
// so that a direction without traffic leaves no empty series.
func (e *Engine) account(now time.Time, f *flow, d uint8) {
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
	if e.emitting {
		e.emit(Event{Kind: EventFlowUpdate, Time: now, Local: f.key.endpoint(d), Remote: f.key.endpoint(1 - d),
			Key: dir.edge.Key(), Bytes: db, Segments: ds})
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
