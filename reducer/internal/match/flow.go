package match

import (
	"net/netip"

	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// process is a live process handle of a session.
type process struct {
	id        uint32 // its slot in the engine's process table while sockets refer to it; 0 when none do
	refs      int32  // sockets that refer to it
	handle    uint32
	pid       uint32
	comm      string
	startTime uint64 // with pid, the process's identity across pid reuse
	cgroupID  uint64
	cgroup    string
	container string // short container id, from the cgroup path; empty outside a container
	podUID    string // from the cgroup path; empty outside a pod
}

// sockID is the index of a socket in the engine's socket slab; 0 is none.
type sockID = uint32

// flowID is the index of a flow in the engine's flow slab; 0 is none.
type flowID = uint32

// socket is a live socket handle of a session: one end of a flow. It lives
// in the engine's socket slab, 32 bytes, and stays there while its session
// (or its successor, while it is vacant) holds its handle or a flow holds
// it as an end: refs counts the two. It holds no pointer (its session and
// process are slots of the engine's tables), so that the garbage collector
// does not scan the slab.
type socket struct {
	sess    uint32 // slot of its session (Engine.sessAt)
	process uint32 // slot of its owning process (Engine.procAt); 0 when unknown
	cookie  uint64 // the kernel's socket cookie: tells reused 4-tuples apart; 0 if unknown
	flow    flowID // 0 when the socket is not counted
	handle  uint32
	netns   uint32
	role    Role
	end     uint8 // index of the socket's local endpoint in its flow's key
	refs    uint8
	// brief: the batch that announces the socket also closes it. Its
	// flow waits for the peer's end even when the peer's address is not
	// known as a fleet address: the peer may be as brief, and both ends
	// then often arrive in two batches, each with the first report of
	// its address.
	brief bool
}

// flowKey is the unordered pair of a connection's endpoints, ordered so that
// a < b, by the ids of their interned addresses. The addresses of loopback
// flows are interned with the node and the network namespace, because
// every namespace has a loopback of its own.
type flowKey struct {
	a, b   uint32 // address ids (Engine.addrs)
	pa, pb uint16 // ports
}

// endpoint returns endpoint i of the key k.
func (e *Engine) endpoint(k *flowKey, i uint8) netip.AddrPort {
	if i == 0 {
		return netip.AddrPortFrom(e.addrs.addr(k.a), k.pa)
	}
	return netip.AddrPortFrom(e.addrs.addr(k.b), k.pb)
}

// orderKey orders the endpoints local and remote of a connection: it
// returns the lower one, the higher one, and the index of local.
func orderKey(local, remote netip.AddrPort) (a, b netip.AddrPort, end uint8) {
	if local.Compare(remote) > 0 {
		return remote, local, 1
	}
	return local, remote, 0
}

// lookupKey returns the key of the connection local-remote and the index
// of local in it; ok is false when no flow has one of its addresses, and
// so none has its key. private scopes the addresses to node and netns.
func (e *Engine) lookupKey(local, remote netip.AddrPort, private bool, node string, netns uint32) (k flowKey, end uint8, ok bool) {
	a, b, end := orderKey(local, remote)
	sa, sb := e.scoped(a.Addr(), private, node, netns), e.scoped(b.Addr(), private, node, netns)
	ia, oka := e.addrs.lookup(sa)
	ib, okb := e.addrs.lookup(sb)
	return flowKey{a: ia, b: ib, pa: a.Port(), pb: b.Port()}, end, oka && okb
}

// internKey returns the key of the connection local-remote as lookupKey
// does, with its addresses interned and referenced once more: a new flow
// holds them until it leaves the table.
func (e *Engine) internKey(local, remote netip.AddrPort, private bool, node string, netns uint32) (flowKey, uint8) {
	a, b, end := orderKey(local, remote)
	sa, sb := e.scoped(a.Addr(), private, node, netns), e.scoped(b.Addr(), private, node, netns)
	return flowKey{a: e.addrs.ref(sa), b: e.addrs.ref(sb), pa: a.Port(), pb: b.Port()}, end
}

// scoped returns the interned form of an address of a flow key: private
// adds the node and the network namespace.
func (e *Engine) scoped(a netip.Addr, private bool, node string, netns uint32) addrKey {
	if !private {
		return addrKey{addr: a}
	}
	return addrKey{addr: a, node: e.nodeID(node), netns: netns}
}

// nodeID returns the id of a node name in private flow keys. Node names
// stay interned for the engine's life: there are as many as nodes.
func (e *Engine) nodeID(node string) uint32 {
	if id, ok := e.nodeIDs[node]; ok {
		return id
	}
	id := uint32(len(e.nodeIDs) + 1)
	e.nodeIDs[node] = id
	return id
}

// addrKey is an address as flow keys intern it: with the node id
// (Engine.nodeID) and the network namespace for a private (loopback)
// flow's, zeros for others.
type addrKey struct {
	addr        netip.Addr
	node, netns uint32
}

// addrTable interns the addresses of flow keys, so that a key holds 4-byte
// ids. An address stays while a flow's key holds it.
type addrTable struct {
	ids   map[addrKey]uint32
	addrs []addrKey // by id; 0 is unused
	refs  []uint32
	free  []uint32
}

func newAddrTable() addrTable {
	return addrTable{ids: make(map[addrKey]uint32), addrs: make([]addrKey, 1), refs: make([]uint32, 1)}
}

func (t *addrTable) addr(id uint32) netip.Addr { return t.addrs[id].addr }

func (t *addrTable) lookup(a addrKey) (uint32, bool) {
	id, ok := t.ids[a]
	return id, ok
}

// ref interns a and adds a reference to it.
func (t *addrTable) ref(a addrKey) uint32 {
	id, ok := t.ids[a]
	if !ok {
		if n := len(t.free); n > 0 {
			id, t.free = t.free[n-1], t.free[:n-1]
			t.addrs[id] = a
		} else {
			id = uint32(len(t.addrs))
			t.addrs = append(t.addrs, a)
			t.refs = append(t.refs, 0)
		}
		t.ids[a] = id
	}
	t.refs[id]++
	return id
}

// unref takes a reference back, and lets the address go with the last.
func (t *addrTable) unref(id uint32) {
	if t.refs[id]--; t.refs[id] == 0 {
		delete(t.ids, t.addrs[id])
		t.addrs[id] = addrKey{}
		t.free = append(t.free, id)
	}
}

// direction holds the two views of the traffic from endpoint i to the other
// one: the sender's and the receiver's, cumulative. Once the direction is
// counted (flowCounted0 or 1), the larger of the two has been counted on
// an edge (the flow's edge[i]).
type direction struct {
	sentBytes, recvBytes uint64
	sentSegs, recvSegs   uint64
}

// maxViews returns the larger of the two views of bytes and of segments.
func (d *direction) maxViews() (bytes, segs uint64) {
	return max(d.sentBytes, d.recvBytes), max(d.sentSegs, d.recvSegs)
}

// Flags of a flow.
const (
	// flowPublished: the flow counts on edges. Until then it is held: its
	// peer is a fleet address whose end has not reported yet, and its
	// views and its opened count wait for that end or for the join window.
	flowPublished uint16 = 1 << iota
	// flowClosed0 and flowClosed1: end 0 or 1 was reported closed; no
	// other socket ever becomes that end of this flow.
	flowClosed0
	flowClosed1
	// flowQueued: the flow is in the engine's queue of held flows.
	flowQueued
	// flowGone: the flow left the table.
	flowGone
	// flowRecount: the flow was published; its views are counted at its
	// next settle.
	flowRecount
	// flowVacant0 and flowVacant1: the socket of end 0 or 1 left with its
	// session; it names the end's workload until it comes back or the flow
	// ends.
	flowVacant0
	flowVacant1
	// flowPartial: a sharded reducer's flow whose peer end is a fleet
	// address that did not report here: another reducer has that end. This
	// reducer counts what its end sends, and the connection only when its
	// end is the client.
	flowPartial
	// flowTraffic: the flow is on the list of flows with traffic not yet
	// drained (DrainTraffic).
	flowTraffic
	// flowCounted0 and flowCounted1: the larger view of direction 0 or 1
	// is counted on an edge; until then nothing of it is.
	flowCounted0
	flowCounted1
	// flowOpened: an end announced the flow as a new connection.
	flowOpened
	// flowPendingOpen: opened, not yet counted on an edge.
	flowPendingOpen
	// flowDirty: ends, owners or metadata changed since the last settle.
	flowDirty
	// flowHealth: an end reported retransmits or resets; the engine's
	// healths has the flow's.
	flowHealth
)

// flow is one TCP connection with up to two reporting ends. The flows of
// one 4-tuple form a chain, oldest first: a reused 4-tuple is a new flow,
// and each side's sockets join the flows of the chain in the order they
// opened. Flows live in the engine's flow slab.
//
// A flow holds no pointer (its edges are references the store counts), so
// that the garbage collector does not scan the slab, nor its own id (a
// flowRef pairs the two): 120 bytes.
type flow struct {
	// dir[i] is the traffic from endpoint i to endpoint 1-i.
	dir  [2]direction
	key  flowKey
	next flowID    // the next, newer flow of the same 4-tuple
	ends [2]sockID // 0: no socket reported that end yet
	// edge[i] is the edge that direction i counts on; 0 until looked up.
	edge  [2]aggregate.EdgeRef
	conn  aggregate.EdgeRef // edge where the flow counts as active
	flags uint16
	uses  resolve.Uses // the metadata keys its ends resolved through
}

// setEdge makes *r a reference to ed (nil: none), giving back the one it
// held.
func (e *Engine) setEdge(r *aggregate.EdgeRef, ed *aggregate.Edge) {
	old := *r
	*r = e.store.Hold(ed)
	e.store.Release(old)
}

// edgeAt returns the edge of r; nil for none.
func (e *Engine) edgeAt(r aggregate.EdgeRef) *aggregate.Edge { return e.store.At(r) }

// flowAt returns the flow of id.
func (e *Engine) flowAt(id flowID) *flow { return e.flowTab.at(id) }

// flowRef is a flow and its id, for the code that needs both: the id
// names the flow to the resolver, the dirty list and the slab.
type flowRef struct {
	*flow
	id flowID
}

// ref returns the flow of id with its id.
func (e *Engine) ref(id flowID) flowRef { return flowRef{e.flowTab.at(id), id} }

// sockAt returns the socket of id.
func (e *Engine) sockAt(id sockID) *socket { return e.sockTab.at(id) }

// client returns the index of the client endpoint: the role an end knows,
// else the endpoint with the higher port.
func (e *Engine) client(f *flow) uint8 {
	for i, id := range f.ends {
		if id == 0 {
			continue
		}
		switch e.sockAt(id).role {
		case RoleClient:
			return uint8(i)
		case RoleServer:
			return uint8(1 - i)
		}
	}
	if f.key.pb > f.key.pa {
		return 1
	}
	return 0
}

// empty reports whether no end reports the flow any more: each end is
// closed or was never (or is no longer) reported.
func (f *flow) empty() bool { return !f.live(0) && !f.live(1) }

// counts reports whether this reducer counts what endpoint i sends, and
// the connection when i is the client: not when another reducer has end i.
func (f *flow) counts(i uint8) bool { return !f.has(flowPartial) || f.ends[i] != 0 }

// live reports whether a socket reports end i.
func (f *flow) live(i uint8) bool {
	return f.ends[i] != 0 && !f.has(closedFlag(i)|vacantFlag(i))
}

func (f *flow) has(flag uint16) bool { return f.flags&flag != 0 }

// closedFlag is the flag of end i being closed.
func closedFlag(i uint8) uint16 { return flowClosed0 << i }

// vacantFlag is the flag of end i being vacant.
func vacantFlag(i uint8) uint16 { return flowVacant0 << i }

// countedFlag is the flag of direction i being counted.
func countedFlag(i uint8) uint16 { return flowCounted0 << i }

// joinable reports whether a new socket sk may become end i of f: a socket
// that no other socket preceded as end i, or the same socket coming back
// after its collector's session was replaced (same node, boot and cookie;
// or, without cookies, a socket announced as existing).
func (e *Engine) joinable(f *flow, i uint8, sk *socket, newConn bool) (fresh, again bool) {
	if f.has(closedFlag(i)) || f.has(flowGone) {
		return false, false
	}
	if f.ends[i] == 0 {
		return true, false
	}
	if !f.has(vacantFlag(i)) {
		return false, false
	}
	c := e.sockAt(f.ends[i])
	cs, ss := e.sessAt(c.sess), e.sessAt(sk.sess)
	if cs.node != ss.node || cs.bootID != ss.bootID || c.netns != sk.netns {
		return false, false
	}
	if c.cookie != 0 || sk.cookie != 0 {
		return false, c.cookie == sk.cookie
	}
	return false, !newConn
}

// netipUnmap turns an IPv4-mapped IPv6 endpoint into its IPv4 form, so that
// a dual-stack socket joins its IPv4 peer.
func netipUnmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
