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

// UDP has no connection, but an exchange between two sockets that
// collectors report is joined as a TCP connection is: each socket's record
// with a remote address is an end (udpEnd), and the end of the remote's
// socket whose own remote is this socket is its peer. Two joined ends
// count on one process → process edge: what each sent, from its sender's
// view (the receiver's view of the same datagrams is not counted again),
// and each receiver's drops from its peer.
//
// An end whose remote is a fleet address (or that its collector marked as
// talking to one of its own sockets, or a loopback one) and whose peer has
// not reported is held for the join window, like a TCP connection: its
// counts wait for the peer, and land on the joined edge when it comes.
// When the window passes first, the end counts as one-sided from then on
// (weir_reducer_flows_unjoined_total), as before the join: its sent view
// toward the remote's address, its received view only from a remote that is
// not a fleet address. A peer that reports later still joins it, for what
// both send from then on. An end stays known for udpEndTTL after its last
// report (the tombstone of its traffic), so that a late peer joins it and
// is not counted twice.
//
// A socket bound to the unspecified address does not know its local
// address: it joins a peer whose remote address is one of its node's
// (the same node's collector, or an address its session reports), and
// whose local address is the remote it sent to.

// udpEndTTL is how long an end is kept after its last report, at least; it
// is also at least four join windows.
const udpEndTTL = time.Minute

// udpKey identifies an end: one socket's traffic with one remote, on a node
// and in a network namespace.
type udpKey struct {
	node          string
	netns         uint32
	local, remote netip.AddrPort
}

// udpCounts is traffic held while an end waits for its peer.
type udpCounts struct {
	bytesSent, datagramsSent, bytesReceived, datagramsReceived, drops uint64
	peerLocal                                                         bool
}

// udpEnd is one socket's traffic with one remote address.
type udpEnd struct {
	key  udpKey
	sess *Session
	proc *process
	peer *udpEnd
	last int64 // unix nanoseconds of its last report
	// born is when it started to wait for its peer (0: not held).
	born  int64
	alone bool // the join window passed without a peer: counts one-sided
	held  udpCounts
	gone  bool
}

// udpIndex finds the ends that may be the peer of an end: by their local
// port, their remote port and their local address (unspecified for a
// socket bound to any address), so that the ends of one well-known port
// pair (123 to 123, say) on many hosts are not one long list.
type udpIndex struct {
	lport, rport uint16
	laddr        netip.Addr
}

func indexOf(k udpKey) udpIndex {
	return udpIndex{lport: k.local.Port(), rport: k.remote.Port(), laddr: k.local.Addr()}
}

// udpHeld is an entry of the queue of held ends.
type udpHeld struct {
	end  *udpEnd
	born int64
}

// udpJoin is the engine's table of UDP ends.
type udpJoin struct {
	ends      map[udpKey]*udpEnd
	byPorts   map[udpIndex][]*udpEnd
	held      []udpHeld // oldest first
	lastSweep int64
	batch     []*udpEnd // scratch: the ends of the batch being counted
}

// prepareUDP checks the process handles of b's UDP flows.
func (e *Engine) prepareUDP(s *Session, b *Batch) error {
	for i, f := range b.UDP {
		if _, ok := e.lookupProc(s, f.Process); !ok {
			return refuse(ReasonUnknownHandle, "batch %d: UDP flow %d: unknown process handle %d", b.Sequence, i, f.Process)
		}
	}
	return nil
}

// countUDP counts a batch's UDP flows on edges. Every end of the batch is
// known before any is counted, so that two ends reported in one batch
// always join. The traffic of a socket's other peers counts toward
// "other": its received view is not counted (its senders are unknown, and
// those datagrams are in the collector's udp_peer_cap loss).
func (e *Engine) countUDP(now time.Time, s *Session, flows []UDPFlow) {
	u := &e.udp
	if u.ends == nil {
		u.ends = make(map[udpKey]*udpEnd)
		u.byPorts = make(map[udpIndex][]*udpEnd)
	}
	e.publishUDP(now)
	for i := range flows {
		if a := flows[i].Local.Addr().Unmap(); a.IsValid() && !a.IsUnspecified() && !a.IsLoopback() {
			if _, ok := s.addrs[a]; !ok {
				s.addrs[a] = struct{}{}
				e.fleet[a]++
			}
		}
	}
	ns := now.UnixNano()
	u.batch = u.batch[:0]
	for i := range flows {
		f := &flows[i]
		local, remote := netipUnmap(f.Local), netipUnmap(f.Remote)
		loop := local.Addr().IsLoopback() || remote.Addr().IsLoopback()
		if loop && !e.cfg.Loopback {
			u.batch = append(u.batch, nil)
			continue
		}
		p, _ := e.lookupProc(s, f.Process)
		if !remote.IsValid() {
			u.batch = append(u.batch, nil)
			me := e.udpLocal(s, p, f.Netns, local.Addr())
			if f.BytesSent|f.DatagramsSent != 0 {
				e.store.Edge(now, aggregate.Key{Src: me, Dst: otherPeers}).AddPair(now, aggregate.UDPBytes, f.BytesSent, aggregate.UDPPackets, f.DatagramsSent)
			}
			if f.Drops != 0 {
				e.store.Edge(now, aggregate.Key{Src: otherPeers, Dst: me}).Add(now, aggregate.UDPDrops, f.Drops)
			}
			continue
		}
		k := udpKey{node: s.node, netns: f.Netns, local: local, remote: remote}
		end := u.ends[k]
		if end == nil {
			end = &udpEnd{key: k}
			u.ends[k] = end
			ix := indexOf(k)
			u.byPorts[ix] = append(u.byPorts[ix], end)
		}
		end.sess, end.last = s, ns
		if p != nil || end.proc == nil {
			end.proc = p
		}
		u.batch = append(u.batch, end)
	}
	for _, end := range u.batch {
		if end != nil && (end.peer == nil || end.peer.gone) {
			e.udpPair(now, end)
		}
	}
	for i, end := range u.batch {
		if end == nil {
			continue
		}
		f := &flows[i]
		c := udpCounts{bytesSent: f.BytesSent, datagramsSent: f.DatagramsSent, bytesReceived: f.BytesReceived,
			datagramsReceived: f.DatagramsReceived, drops: f.Drops, peerLocal: f.PeerLocal}
		switch {
		case c == udpCounts{peerLocal: c.peerLocal}:
			// Nothing to count.
		case end.peer != nil:
			e.udpCountJoined(now, end, c)
		case !end.alone && e.window > 0 && (end.key.local.Addr().IsLoopback() || end.key.remote.Addr().IsLoopback() ||
			f.PeerLocal || e.isFleet(now, end.key.remote.Addr())):
			// The peer's socket may report: wait for it.
			h := &end.held
			h.bytesSent += c.bytesSent
			h.datagramsSent += c.datagramsSent
			h.bytesReceived += c.bytesReceived
			h.datagramsReceived += c.datagramsReceived
			h.drops += c.drops
			h.peerLocal = h.peerLocal || c.peerLocal
			if end.born == 0 {
				end.born = ns
				u.held = append(u.held, udpHeld{end: end, born: ns})
				e.nheld++
			}
		default:
			e.udpCountAlone(now, end, c)
		}
	}
	clear(u.batch)
}

// udpPair looks for end's peer among the ends of the other socket, and
// joins the two: what either held counts on the joined edges.
func (e *Engine) udpPair(now time.Time, end *udpEnd) {
	u := &e.udp
	k := end.key
	var found *udpEnd
	// The peer's socket is bound to the address this end sent to, or to
	// any address.
	var buf [3]netip.Addr
	laddrs := append(buf[:0], k.remote.Addr(), netip.IPv6Unspecified())
	if k.remote.Addr().Is4() {
		// A dual-stack socket bound to [::] too.
		laddrs = append(laddrs, netip.IPv4Unspecified())
	}
	for _, laddr := range laddrs {
		if found != nil {
			break
		}
		for _, c := range u.byPorts[udpIndex{lport: k.remote.Port(), rport: k.local.Port(), laddr: laddr}] {
			if c == end || c.gone || (c.peer != nil && !c.peer.gone) || !udpMatch(end, c) {
				continue
			}
			found = c
			if c.key.remote.Addr() == k.local.Addr() {
				break // both addresses known and equal: the best match
			}
		}
	}
	if found == nil {
		return
	}
	end.peer, found.peer = found, end
	for _, x := range [2]*udpEnd{end, found} {
		x.alone = false
		if x.born != 0 {
			x.born = 0
			e.nheld--
			c := x.held
			x.held = udpCounts{}
			e.udpCountJoined(now, x, c)
		}
	}
}

// udpMatch reports whether b may be a's peer (their ports already match):
// each one's remote address is the other's local address, or, for a socket
// bound to the unspecified address, an address of its node: its peer is on
// the same node (the collector's own rule for PeerLocal), or its session
// reports that address as local.
func udpMatch(a, b *udpEnd) bool {
	if a.key.remote.Addr().IsLoopback() || b.key.remote.Addr().IsLoopback() {
		// Every network namespace has a loopback of its own.
		if a.key.node != b.key.node || a.key.netns != b.key.netns {
			return false
		}
	}
	return udpAddrMatch(a, b, b.key.remote.Addr()) && udpAddrMatch(b, a, a.key.remote.Addr())
}

// udpAddrMatch reports whether addr, the address peer sent to, may be
// end's local address.
func udpAddrMatch(end, peer *udpEnd, addr netip.Addr) bool {
	l := end.key.local.Addr()
	if !l.IsUnspecified() {
		return l == addr
	}
	if addr.IsLoopback() || end.key.node == peer.key.node {
		return true
	}
	_, ok := end.sess.addrs[addr]
	return ok
}

// udpEnds returns the workloads of end and of its peer.
func (e *Engine) udpEnds(end *udpEnd) (me, peer aggregate.Workload) {
	p := end.peer
	// A socket bound to any address has its real address in its peer's
	// record.
	meAddr, peerAddr := end.key.local.Addr(), p.key.local.Addr()
	if meAddr.IsUnspecified() {
		meAddr = p.key.remote.Addr()
	}
	if peerAddr.IsUnspecified() {
		peerAddr = end.key.remote.Addr()
	}
	return e.udpEndpoint(end, meAddr), e.udpEndpoint(p, peerAddr)
}

// udpEndpoint resolves the local end of x at addr.
func (e *Engine) udpEndpoint(x *udpEnd, addr netip.Addr) aggregate.Workload {
	return e.udpLocal(x.sess, x.proc, x.key.netns, addr)
}

// udpLocal resolves a local UDP socket of s.
func (e *Engine) udpLocal(s *Session, p *process, netns uint32, addr netip.Addr) aggregate.Workload {
	ep := resolve.Endpoint{Addr: addr, Local: true, Node: s.node, Netns: netns}
	if p != nil {
		ep.Known, ep.Comm, ep.CgroupID, ep.Container, ep.PodUID = true, p.comm, p.cgroupID, p.container, p.podUID
	}
	return e.resolver.Lookup(ep)
}

// udpCountJoined counts an end's traffic on the edges to and from its peer:
// what it sent, and its drops. What it received is its peer's sent view.
func (e *Engine) udpCountJoined(now time.Time, end *udpEnd, c udpCounts) {
	if c.bytesSent|c.datagramsSent|c.drops == 0 {
		return
	}
	me, peer := e.udpEnds(end)
	if c.bytesSent|c.datagramsSent != 0 {
		e.store.Edge(now, aggregate.Key{Src: me, Dst: peer}).AddPair(now, aggregate.UDPBytes, c.bytesSent, aggregate.UDPPackets, c.datagramsSent)
	}
	if c.drops != 0 {
		e.store.Edge(now, aggregate.Key{Src: peer, Dst: me}).Add(now, aggregate.UDPDrops, c.drops)
	}
}

// udpCountAlone counts an end without a peer: what it sent toward its
// remote's address; what it received from there only when no collector
// reports the sender (the remote is not a fleet address, and the collector
// did not mark it as one of its own sockets), so that each datagram counts
// once; its drops from there, since only the receiver knows them.
func (e *Engine) udpCountAlone(now time.Time, end *udpEnd, c udpCounts) {
	me := e.udpEndpoint(end, end.key.local.Addr())
	peer := e.resolver.Lookup(resolve.Endpoint{Addr: end.key.remote.Addr()})
	if c.bytesSent|c.datagramsSent != 0 {
		e.store.Edge(now, aggregate.Key{Src: me, Dst: peer}).AddPair(now, aggregate.UDPBytes, c.bytesSent, aggregate.UDPPackets, c.datagramsSent)
	}
	in := aggregate.Key{Src: peer, Dst: me}
	if c.bytesReceived|c.datagramsReceived != 0 && !c.peerLocal && !e.isFleet(now, end.key.remote.Addr()) {
		e.store.Edge(now, in).AddPair(now, aggregate.UDPBytes, c.bytesReceived, aggregate.UDPPackets, c.datagramsReceived)
	}
	if c.drops != 0 {
		e.store.Edge(now, in).Add(now, aggregate.UDPDrops, c.drops)
	}
}

// publishUDP counts the held ends whose join window passed as one-sided,
// and forgets the ends that have not reported for the TTL.
func (e *Engine) publishUDP(now time.Time) {
	u := &e.udp
	ns := now.UnixNano()
	deadline := ns - int64(e.window)
	n := 0
	for _, h := range u.held {
		if h.end.born == h.born && !h.end.gone {
			if h.born > deadline {
				break
			}
			end := h.end
			end.born, end.alone = 0, true
			e.nheld--
			e.oneSided.Inc()
			c := end.held
			end.held = udpCounts{}
			e.udpCountAlone(now, end, c)
		}
		n++
	}
	if n > 0 {
		rest := copy(u.held, u.held[n:])
		clear(u.held[rest:])
		u.held = u.held[:rest]
	}
	ttl := max(udpEndTTL, 4*e.window)
	if ns-u.lastSweep < int64(ttl/4) {
		return
	}
	u.lastSweep = ns
	for k, end := range u.ends {
		if ns-end.last < int64(ttl) && !end.sess.gone {
			continue
		}
		if end.born != 0 {
			// Its window has passed long ago: count what it held.
			end.born = 0
			e.nheld--
			e.udpCountAlone(now, end, end.held)
		}
		end.gone = true
		if end.peer != nil && end.peer.peer == end {
			end.peer.peer = nil
		}
		end.peer = nil
		delete(u.ends, k)
		ix := indexOf(k)
		list := u.byPorts[ix]
		for i, x := range list {
			if x == end {
				list[i] = list[len(list)-1]
				list[len(list)-1] = nil
				list = list[:len(list)-1]
				break
			}
		}
		if len(list) == 0 {
			delete(u.byPorts, ix)
		} else {
			u.byPorts[ix] = list
		}
	}
}
