package match

import (
	"net/netip"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// The traffic of open flows reaches subscribers without an event per
// update: while anyone subscribes, the first traffic a flow counts after it
// was last drained puts it on a list, with what it had counted until then
// (a flag test per update, one append per flow and drain), and
// DrainTraffic reads the listed flows' counts.

// Counts are bytes and segments.
type Counts struct {
	Bytes, Segments uint64
}

// counted returns what direction d of f counted on its edges.
func (f *flow) counted(d uint8) Counts {
	if !f.has(countedFlag(d)) {
		return Counts{}
	}
	b, s := f.dir[d].maxViews()
	return Counts{b, s}
}

// trafficMark is a flow on the list, with what it had counted from each
// end when it was put there.
type trafficMark struct {
	f      flowRef
	before [2]Counts
}

// Traffic is the traffic that one open connection counted since it was last
// drained, as DrainTraffic reports it. Index i is an endpoint, in the key
// order of EventFlowOpen (Local is 0, Remote 1); a direction is named by its
// sending endpoint.
type Traffic struct {
	Ends [2]netip.AddrPort
	// Nodes are the nodes of the collectors that report each end; empty
	// for an end that no collector reports.
	Nodes [2]string
	// Client is the index of the client end.
	Client uint8
	// Edges[i] is the edge that the traffic from Ends[i] counts on; nil if
	// none yet. Only its Key may be read (it never changes).
	Edges [2]*aggregate.Edge
	// Delta[i] is what was counted from Ends[i] since the flow was last
	// drained (or since the engine started noting traffic); Total[i] what
	// was counted from it over the flow's life.
	Delta, Total [2]Counts
}

// markTraffic puts f on the list of flows with traffic; account calls it
// when f, not on the list, counted db bytes and ds segments from end d.
func (e *Engine) markTraffic(f flowRef, d uint8, db, ds uint64) {
	f.flags |= flowTraffic
	m := trafficMark{f: f, before: [2]Counts{f.counted(0), f.counted(1)}}
	m.before[d].Bytes -= db
	m.before[d].Segments -= ds
	e.events.marks = append(e.events.marks, m)
}

// DrainTraffic appends to dst the traffic of up to limit open flows that
// counted some since they were last drained, oldest first, and takes them
// off the list; the rest stay for the next call, and go on counting. It
// also returns the Seq of the last event published so far: the counts
// follow every event up to it and precede every later one, so that a
// reader that applies them after the events up to seq, and before the
// later ones, sees each flow's opening, traffic and close in order. A flow
// that closed before the call is not reported: its EventFlowClose carries
// its totals.
//
// Flows are noted only while anyone subscribes (Subscribe), and the list is
// one: DrainTraffic is for a single reader. The list holds each flow at
// most once.
func (e *Engine) DrainTraffic(dst []Traffic, limit int) ([]Traffic, uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ev := e.events
	for n := 0; n < limit && ev.head < len(ev.marks); {
		m := &ev.marks[ev.head]
		ev.head++
		f := m.f
		m.f = flowRef{}
		f.flags &^= flowTraffic
		if f.has(flowGone) {
			e.releaseGone(f)
			continue
		}
		n++
		t := Traffic{Ends: [2]netip.AddrPort{e.endpoint(&f.key, 0), e.endpoint(&f.key, 1)}, Client: e.client(f.flow)}
		for i := range f.dir {
			if s := f.ends[i]; s != 0 {
				t.Nodes[i] = e.sessAt(e.sockAt(s).sess).node
			}
			t.Edges[i] = e.edgeAt(f.edge[i])
			t.Total[i] = f.counted(uint8(i))
			t.Delta[i] = Counts{t.Total[i].Bytes - m.before[i].Bytes, t.Total[i].Segments - m.before[i].Segments}
		}
		dst = append(dst, t)
	}
	switch {
	case ev.head == len(ev.marks):
		ev.marks, ev.head = ev.marks[:0], 0
	case ev.head > len(ev.marks)/2:
		n := copy(ev.marks, ev.marks[ev.head:])
		clear(ev.marks[n:])
		ev.marks, ev.head = ev.marks[:n], 0
	}
	return dst, ev.seq
}

// forgetTraffic empties the list when no one subscribes any more; e.mu
// held.
func (e *Engine) forgetTraffic() {
	ev := e.events
	for i := ev.head; i < len(ev.marks); i++ {
		f := ev.marks[i].f
		f.flags &^= flowTraffic
		if f.has(flowGone) {
			e.releaseGone(f)
		}
	}
	clear(ev.marks)
	ev.marks, ev.head = nil, 0
}
