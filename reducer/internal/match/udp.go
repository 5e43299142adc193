package match

import (
	"net/netip"
	"time"

	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// UDPFlow is the UDP traffic of one local socket with one remote address
// during an interval, as the collector reports it.
type UDPFlow struct {
	Process                                                           uint32 // 0: unknown
	Local                                                             netip.AddrPort
	Remote                                                            netip.AddrPort // invalid: the socket's other peers, beyond its cap
	Netns                                                             uint32
	BytesSent, BytesReceived, DatagramsSent, DatagramsReceived, Drops uint64
	// PeerLocal: the same collector reports the remote's socket, whose sent
	// view covers this received view.
	PeerLocal bool
}

// otherPeers names the remote of the traffic a socket had with more remote
// addresses than its collector's cap.
var otherPeers = aggregate.Workload{Name: aggregate.Other, Kind: resolve.KindExternal}

// prepareUDP checks the process handles of b's UDP flows.
func (e *Engine) prepareUDP(s *Session, b *Batch) error {
	for i, f := range b.UDP {
		if _, ok := e.lookupProc(s, f.Process); !ok {
			return refuse(ReasonUnknownHandle, "batch %d: UDP flow %d: unknown process handle %d", b.Sequence, i, f.Process)
		}
	}
	return nil
}

// countUDP counts a batch's UDP flows on edges, without joining the two
// ends of a flow (UDP has no connection to join): what a socket sent counts
// from it to its remote, from the sender's view; what it received counts
// from its remote to it only when no collector reports the sender (the
// remote is not a fleet address, and the collector did not mark it as
// one of its own sockets), so that each datagram counts once; its drops
// count from the remote to it, since only the receiver knows them. The
// received view of the other peers is not counted: its senders are
// unknown, and those datagrams are in the collector's udp_peer_cap loss.
func (e *Engine) countUDP(now time.Time, s *Session, flows []UDPFlow) {
	for i := range flows {
		if a := flows[i].Local.Addr().Unmap(); a.IsValid() && !a.IsUnspecified() && !a.IsLoopback() {
			if _, ok := s.addrs[a]; !ok {
				s.addrs[a] = struct{}{}
				e.fleet[a]++
			}
		}
	}
	for i := range flows {
		f := &flows[i]
		local, remote := netipUnmap(f.Local), netipUnmap(f.Remote)
		other := !remote.IsValid()
		if (local.Addr().IsLoopback() || (!other && remote.Addr().IsLoopback())) && !e.cfg.Loopback {
			continue
		}
		p, _ := e.lookupProc(s, f.Process)
		// A flow of its own, only to resolve its ends as a flow's are.
		tmp := &flow{key: flowKey{a: local, b: remote}}
		tmp.ends[0] = &socket{process: p, ident: &socketIdent{sess: s, netns: f.Netns}}
		me, peer := e.resolve(tmp, 0), otherPeers
		if !other {
			peer = e.resolve(tmp, 1)
		}
		e.resolver.Forget(tmp, &tmp.uses)
		if f.BytesSent|f.DatagramsSent != 0 {
			e.store.Edge(now, aggregate.Key{Src: me, Dst: peer}).AddPair(now, aggregate.UDPBytes, f.BytesSent, aggregate.UDPPackets, f.DatagramsSent)
		}
		in := aggregate.Key{Src: peer, Dst: me}
		if f.BytesReceived|f.DatagramsReceived != 0 && !other && !f.PeerLocal && !e.isFleet(now, remote.Addr()) {
			e.store.Edge(now, in).AddPair(now, aggregate.UDPBytes, f.BytesReceived, aggregate.UDPPackets, f.DatagramsReceived)
		}
		if f.Drops != 0 {
			e.store.Edge(now, in).Add(now, aggregate.UDPDrops, f.Drops)
		}
	}
}
