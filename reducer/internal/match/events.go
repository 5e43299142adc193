package match

import (
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// EventKind is what happened to a socket, a flow or an edge.
type EventKind uint8

// Kinds of events.
const (
	// EventSocketOpen: a collector announced a socket. Node, Cookie, Local
	// and Remote are the socket's.
	EventSocketOpen EventKind = iota + 1
	// EventSocketClose: a collector reported a socket closed.
	EventSocketClose
	// EventFlowOpen: the first end of a connection arrived. Local and
	// Remote are its endpoints, in key order.
	EventFlowOpen
	// EventFlowClose: no end reports the flow any more. Local is its
	// client end, Remote its server end, Key the edge from client to
	// server (zero if neither direction counted on an edge), and Total what
	// it counted from Local (0) and from Remote (1) over its life. The
	// traffic of a flow while it is open is not an event: see
	// DrainTraffic.
	EventFlowClose
	// EventEdgeChange: the connection from Local (client) to Remote moved
	// from the edge Prev to the edge Key, e.g. because an end resolved to
	// another workload.
	EventEdgeChange
)

// String returns the kind's name.
func (k EventKind) String() string {
	switch k {
	case EventSocketOpen:
		return "socket_open"
	case EventSocketClose:
		return "socket_close"
	case EventFlowOpen:
		return "flow_open"
	case EventFlowClose:
		return "flow_close"
	case EventEdgeChange:
		return "edge_change"
	}
	return "unknown"
}

// Event is one change in the engine, as subscribers see it.
type Event struct {
	Kind EventKind
	// Seq numbers the events in the order the engine published them,
	// from 1; DrainTraffic tells which of them its counts follow.
	Seq           uint64
	Time          time.Time
	Node          string
	Cookie        uint64
	Local, Remote netip.AddrPort
	Key, Prev     aggregate.Key
	Total         [2]Counts
}

// subscriber is one subscription.
type subscriber struct {
	ch   chan Event
	lost prometheus.Counter
}

// events hands the engine's events to its subscribers without ever
// blocking the engine: each subscriber has a bounded channel, and an event
// that does not fit is lost and counted.
type events struct {
	lost *prometheus.CounterVec
	on   atomic.Bool // any subscriber

	mu   sync.Mutex // guards subs and the closing of their channels
	subs []*subscriber

	// Guarded by Engine.mu, under which every event is published.
	seq   uint64        // of the last event published
	marks []trafficMark // flows with traffic not yet drained, from head on
	head  int
}

func newEvents() *events {
	return &events{lost: prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_reducer_events_lost_total",
		Help: "Engine events a subscriber lost because its queue was full, by subscriber.",
	}, []string{"subscriber"})}
}

// active reports whether anyone subscribes.
func (ev *events) active() bool { return ev.on.Load() }

// publish offers e to every subscriber.
func (ev *events) publish(e Event) {
	ev.mu.Lock()
	defer ev.mu.Unlock()
	ev.seq++
	e.Seq = ev.seq
	for _, s := range ev.subs {
		select {
		case s.ch <- e:
		default:
			s.lost.Inc()
		}
	}
}

// Subscribe returns a channel of the engine's events from now on, buffered
// to size events. A subscriber that falls behind loses the events that do
// not fit, counted in weir_reducer_events_lost_total{subscriber=name}; the
// engine never waits for it. While anyone subscribes, the engine also
// notes the flows that count traffic, for DrainTraffic. cancel ends the
// subscription and closes the channel; it is safe to call more than once.
func (e *Engine) Subscribe(name string, size int) (<-chan Event, func()) {
	ev := e.events
	s := &subscriber{ch: make(chan Event, max(size, 1)), lost: ev.lost.WithLabelValues(name)}
	ev.mu.Lock()
	ev.subs = append(ev.subs, s)
	ev.on.Store(true)
	ev.mu.Unlock()
	var once sync.Once
	return s.ch, func() {
		once.Do(func() {
			e.mu.Lock()
			defer e.mu.Unlock()
			ev.mu.Lock()
			defer ev.mu.Unlock()
			ev.subs = slices.DeleteFunc(ev.subs, func(x *subscriber) bool { return x == s })
			ev.on.Store(len(ev.subs) > 0)
			if len(ev.subs) == 0 {
				e.forgetTraffic()
			}
			close(s.ch)
		})
	}
}

// emit publishes an event; callers check e.emitting first, so that the
// engine builds no event when no one subscribes.
func (e *Engine) emit(ev Event) { e.events.publish(ev) }

// emitSocket publishes an event of socket sk.
func (e *Engine) emitSocket(now time.Time, kind EventKind, sk *socket) {
	ev := Event{Kind: kind, Time: now, Node: e.sessAt(sk.sess).node, Cookie: sk.cookie}
	if sk.flow != 0 {
		f := e.flowAt(sk.flow)
		ev.Local, ev.Remote = e.endpoint(&f.key, sk.end), e.endpoint(&f.key, 1-sk.end)
	}
	e.emit(ev)
}

// emitFlowClose publishes the close of f, which left the table.
func (e *Engine) emitFlowClose(now time.Time, f flowRef) {
	c := e.client(f.flow)
	ev := Event{Kind: EventFlowClose, Time: now, Local: e.endpoint(&f.key, c), Remote: e.endpoint(&f.key, 1-c)}
	if ed := e.edgeAt(f.edge[c]); ed != nil {
		ev.Key = ed.Key()
	} else if ed := e.edgeAt(f.edge[1-c]); ed != nil {
		k := ed.Key()
		ev.Key = aggregate.Key{Src: k.Dst, Dst: k.Src}
	}
	ev.Total = [2]Counts{f.counted(c), f.counted(1 - c)}
	e.emit(ev)
}
