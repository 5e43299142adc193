package match

import (
	"net/netip"
	"time"

	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// ConnectFailure is why a TCP connect never established.
type ConnectFailure uint8

// Reasons of a failed connect.
const (
	ConnectFailureUnspecified ConnectFailure = iota
	// ConnectRefused: the server answered the SYN with a RST.
	ConnectRefused
	// ConnectTimeout: the SYN retries ran out.
	ConnectTimeout
	// ConnectUnreachable: another error, e.g. an ICMP unreachable.
	ConnectUnreachable
)

// FailedConnect is a client's TCP connect that never established. It has
// no socket handle: it is counted on the edge from the client's workload to
// the server's address, and forgotten.
type FailedConnect struct {
	Process        uint32 // 0: unknown
	Local, Remote  netip.AddrPort
	Netns          uint32
	Reason         ConnectFailure
	SynRetransmits uint64
}

// health is what a flow's ends reported of retransmits and resets, kept out
// of line because most flows never have any: per direction, the sender's
// and the receiver's views of the resets, the sender's retransmits, and how
// much of each was counted on the direction's edge.
type health struct {
	dir [2]struct {
		retrans, rstSent, rstRecv  uint64
		countedRetrans, countedRst uint64
	}
}

// hasHealth reports whether a stats message carries any of the rare
// columns or the RTT.
func (st *Stats) hasHealth() bool {
	return len(st.Retransmits)|len(st.ResetsSent)|len(st.ResetsReceived)|len(st.SrttUs) != 0
}

// column returns entry i of an optional column: empty means all zero.
func column[T uint32 | uint64](c []T, i int) T {
	if i < len(c) {
		return c[i]
	}
	return 0
}

// countHealth applies stats entry i of the socket at end of f: its
// retransmits and resets go into the flow's views, counted like bytes (each
// once, the larger view of each direction), and its smoothed RTT is one
// observation on the edge from its end to the other.
func (e *Engine) countHealth(now time.Time, f flowRef, end uint8, st *Stats, i int) {
	retrans := column(st.Retransmits, i)
	sent, recv := column(st.ResetsSent, i), column(st.ResetsReceived, i)
	if retrans|sent|recv != 0 {
		h := e.healths[f.id]
		if h == nil {
			h = &health{}
			e.healths[f.id] = h
			f.flags |= flowHealth
		}
		out, in := &h.dir[end], &h.dir[1-end]
		out.retrans += retrans
		out.rstSent += sent
		in.rstRecv += recv
		e.accountHealth(now, f, end)
		e.accountHealth(now, f, 1-end)
	}
	if rtt := column(st.SrttUs, i); rtt != 0 && f.has(flowPublished) {
		e.dirEdge(now, f, end).Observe(now, aggregate.TCPRTT, float64(rtt)/1e6)
	}
}

// accountHealth counts on direction d's edge what its health views gained;
// as for bytes, not when another reducer has the sending end (both ends
// report a reset).
func (e *Engine) accountHealth(now time.Time, f flowRef, d uint8) {
	if !f.has(flowHealth) || !f.has(flowPublished) || !f.counts(d) {
		return
	}
	h := &e.healths[f.id].dir[d]
	dr := h.retrans - min(h.retrans, h.countedRetrans)
	rst := max(h.rstSent, h.rstRecv)
	ds := rst - min(rst, h.countedRst)
	if dr|ds == 0 {
		return
	}
	h.countedRetrans, h.countedRst = max(h.countedRetrans, h.retrans), max(h.countedRst, rst)
	e.dirEdge(now, f, d).AddPair(now, aggregate.TCPRetransmits, dr, aggregate.TCPResets, ds)
}

// dirEdge returns the edge of direction d of a published flow, looking it up
// as account does.
func (e *Engine) dirEdge(now time.Time, f flowRef, d uint8) *aggregate.Edge {
	ed := e.edgeAt(f.edge[d])
	if ed == nil {
		ed = e.store.Edge(now, aggregate.Key{Src: e.resolve(f, d), Dst: e.resolve(f, 1-d)})
		e.setEdge(&f.edge[d], ed)
	} else if ed.Dead() {
		ed = e.store.Edge(now, ed.Key())
		e.setEdge(&f.edge[d], ed)
	}
	return ed
}

// prepareFailed checks the process handles of b's failed connects.
func (e *Engine) prepareFailed(s *Session, b *Batch) error {
	for i, fc := range b.Failed {
		if _, ok := e.lookupProc(s, fc.Process); !ok {
			return refuse(ReasonUnknownHandle, "batch %d: failed connect %d: unknown process handle %d", b.Sequence, i, fc.Process)
		}
	}
	return nil
}

// countFailed counts the failed connects of a batch on the edges between
// the client's workload and the server's address: a timeout or a refusal
// from client to server, the server's RST of a refusal from server to
// client, and the SYN retransmissions from client to server.
func (e *Engine) countFailed(now time.Time, s *Session, failed []FailedConnect) {
	for i := range failed {
		fc := &failed[i]
		local, remote := netipUnmap(fc.Local), netipUnmap(fc.Remote)
		loop := local.Addr().IsLoopback() || remote.Addr().IsLoopback()
		if loop && !e.cfg.Loopback {
			continue
		}
		p, _ := e.lookupProc(s, fc.Process)
		// Its two ends resolve as a flow's would.
		ep := resolve.Endpoint{Addr: local.Addr()}
		e.socketEndpoint(&ep, s, p, fc.Netns)
		client, server := e.resolver.Lookup(ep), e.resolver.Lookup(resolve.Endpoint{Addr: remote.Addr()})
		out := e.store.Edge(now, aggregate.Key{Src: client, Dst: server})
		switch fc.Reason {
		case ConnectRefused:
			out.Add(now, aggregate.TCPConnectionsRefused, 1)
			e.store.Edge(now, aggregate.Key{Src: server, Dst: client}).Add(now, aggregate.TCPResets, 1)
		case ConnectTimeout:
			out.Add(now, aggregate.TCPSynTimeouts, 1)
		}
		if fc.SynRetransmits != 0 {
			out.Add(now, aggregate.TCPRetransmits, fc.SynRetransmits)
		}
	}
}
