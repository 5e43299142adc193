package match

import (
	"net/netip"

	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// process is a live process handle of a session.
type process struct {
	handle    uint32
	pid       uint32
	comm      string
	startTime uint64 // with pid, the process's identity across pid reuse
	cgroupID  uint64
	cgroup    string
	container string // short container id, from the cgroup path; empty outside a container
	podUID    string // from the cgroup path; empty outside a pod
}

// socket is a live socket handle of a session: one end of a flow. It is
// kept to 32 bytes: the counting loop reads it for every stats entry.
type socket struct {
	handle  uint32
	role    Role
	end     uint8 // index of the socket's local endpoint in its flow's key
	process *process
	flow    *flow // nil when the socket is not counted
	ident   *socketIdent
}

// socketIdent is what identifies a socket beyond its handle, out of line.
type socketIdent struct {
	sess   *Session
	netns  uint32
	cookie uint64 // the kernel's socket cookie: tells reused 4-tuples apart; 0 if unknown
}

// flowKey is the unordered pair of a connection's endpoints, ordered so that
// a < b. Loopback flows add the node and the network namespace, because
// every namespace has a loopback of its own.
type flowKey struct {
	a, b  netip.AddrPort
	node  string
	netns uint32
}

// endpoint returns endpoint i of the key.
func (k *flowKey) endpoint(i uint8) netip.AddrPort {
	if i == 0 {
		return k.a
	}
	return k.b
}

// newFlowKey returns the key of the connection local-remote and the index of
// local in it. private adds node and netns to the key.
func newFlowKey(local, remote netip.AddrPort, private bool, node string, netns uint32) (flowKey, uint8) {
	k := flowKey{a: local, b: remote}
	var end uint8
	if local.Compare(remote) > 0 {
		k.a, k.b = remote, local
		end = 1
	}
	if private {
		k.node, k.netns = node, netns
	}
	return k, end
}

// direction holds the two views of the traffic from endpoint i to the other
// one, and the amount already counted on an edge.
type direction struct {
	sentBytes, recvBytes      uint64 // sender's and receiver's cumulative views
	sentSegs, recvSegs        uint64
	countedBytes, countedSegs uint64 // max of the views when last counted
	edge                      *aggregate.Edge
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
)

// flow is one TCP connection with up to two reporting ends. The flows of
// one 4-tuple form a chain, oldest first: a reused 4-tuple is a new flow,
// and each side's sockets join the flows of the chain in the order they
// opened.
type flow struct {
	key   flowKey
	next  *flow // the next, newer flow of the same 4-tuple
	ends  [2]*socket
	born  int64 // unix nanoseconds when the first end arrived
	flags uint16
	// dir[i] is the traffic from endpoint i to endpoint 1-i.
	dir         [2]direction
	conn        *aggregate.Edge // edge where the flow counts as active
	opened      bool            // an end announced it as a new connection
	pendingOpen bool            // opened, not yet counted on an edge
	dirty       bool            // ends, owners or metadata changed since the last settle
	uses        resolve.Uses    // the metadata keys its ends resolved through
	health      *health         // retransmits and resets; nil until the first
}

// client returns the index of the client endpoint: the role an end knows,
// else the endpoint with the higher port.
func (f *flow) client() uint8 {
	for i, s := range f.ends {
		if s == nil {
			continue
		}
		switch s.role {
		case RoleClient:
			return uint8(i)
		case RoleServer:
			return uint8(1 - i)
		}
	}
	if f.key.b.Port() > f.key.a.Port() {
		return 1
	}
	return 0
}

// empty reports whether no end reports the flow any more: each end is
// closed or was never (or is no longer) reported.
func (f *flow) empty() bool { return !f.live(0) && !f.live(1) }

// counts reports whether this reducer counts what endpoint i sends, and
// the connection when i is the client: not when another reducer has end i.
func (f *flow) counts(i uint8) bool { return !f.has(flowPartial) || f.ends[i] != nil }

// live reports whether a socket reports end i.
func (f *flow) live(i uint8) bool {
	return f.ends[i] != nil && !f.has(closedFlag(i)|vacantFlag(i))
}

func (f *flow) has(flag uint16) bool { return f.flags&flag != 0 }

// closedFlag is the flag of end i being closed.
func closedFlag(i uint8) uint16 { return flowClosed0 << i }

// vacantFlag is the flag of end i being vacant.
func vacantFlag(i uint8) uint16 { return flowVacant0 << i }

// joinable reports whether a new socket sk may become end i of f: a socket
// that no other socket preceded as end i, or the same socket coming back
// after its collector's session was replaced (same node, boot and cookie;
// or, without cookies, a socket announced as existing).
func (f *flow) joinable(i uint8, id *socketIdent, newConn bool) (fresh, again bool) {
	if f.has(closedFlag(i)) || f.has(flowGone) {
		return false, false
	}
	if f.ends[i] == nil {
		return true, false
	}
	if !f.has(vacantFlag(i)) {
		return false, false
	}
	c := f.ends[i].ident
	if c.sess.node != id.sess.node || c.sess.bootID != id.sess.bootID || c.netns != id.netns {
		return false, false
	}
	if c.cookie != 0 || id.cookie != 0 {
		return false, c.cookie == id.cookie
	}
	return false, !newConn
}

// netipUnmap turns an IPv4-mapped IPv6 endpoint into its IPv4 form, so that
// a dual-stack socket joins its IPv4 peer.
func netipUnmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
