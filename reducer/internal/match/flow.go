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

// flow is one TCP connection with up to two reporting ends.
type flow struct {
	key  flowKey
	ends [2]*socket
	// dir[i] is the traffic from endpoint i to endpoint 1-i.
	dir         [2]direction
	conn        *aggregate.Edge // edge where the flow counts as active
	opened      bool            // an end announced it as a new connection
	pendingOpen bool            // opened, not yet counted on an edge
	dirty       bool            // ends, owners or metadata changed since the last settle
	uses        resolve.Uses    // the metadata keys its ends resolved through
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

// empty reports whether no end reports the flow any more.
func (f *flow) empty() bool { return f.ends[0] == nil && f.ends[1] == nil }

// netipUnmap turns an IPv4-mapped IPv6 endpoint into its IPv4 form, so that
// a dual-stack socket joins its IPv4 peer.
func netipUnmap(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
