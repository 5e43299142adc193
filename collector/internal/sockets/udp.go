package sockets

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/collector/internal/probe"
)

// UDPSampler reads the current counters of every UDP socket's remotes.
type UDPSampler interface {
	SampleUDP(fn func(probe.UDPRecord)) (complete bool, err error)
}

// UDPReader is the kernel's stream of UDP close records.
type UDPReader interface {
	ReadUDP() (probe.UDPRecord, error)
}

// udpKey is one slot of one socket: a remote, or the other peers.
type udpKey struct {
	cookie uint64
	slot   uint8
}

// udpCounts are a slot's counters.
type udpCounts struct {
	bytesSent, bytesReceived, datagramsSent, datagramsReceived, drops uint64
}

type udpFlow struct {
	key    udpKey
	local  netip.AddrPort
	remote netip.AddrPort // invalid for the other peers
	netns  uint32
	owner  probe.Owner
	raw    probe.UDPRecord // the counters as last read
	total  udpCounts       // counted since first seen
	rep    udpCounts       // total at the last drain
	seen   uint64          // the last poll that sampled it
	missed uint8
	closed bool
}

// UDP tracks the node's UDP traffic per socket and remote, from the
// kernel's cumulative counters: samples at each poll, and the final
// counters when a socket closes. It is safe for concurrent use.
type UDP struct {
	maxFlows int
	m        *udpMetrics
	// ours tells the network namespaces whose remotes are tracked;
	// records of others are counted in otherNetNS.
	ours       func(netns uint32) bool
	otherNetNS prometheus.Counter

	mu          sync.Mutex
	flows       map[udpKey]*udpFlow
	refused     map[udpKey]uint64 // keys over the cap, by the poll that last saw them
	pollGen     uint64
	completeGen uint64
	loss        UDPLoss
}

// UDPLoss are the UDP table's cumulative loss counters.
type UDPLoss struct {
	PeerCap      uint64 // datagrams folded into other peers at a socket's cap of remotes
	FlowsDropped uint64 // remotes not tracked because the table was full
}

type udpMetrics struct {
	closes, vanished, refused, regressions prometheus.Counter
	flows                                  prometheus.GaugeFunc
	folded                                 prometheus.CounterFunc
}

// NewUDP returns an empty UDP table of at most maxFlows remotes, whose
// metrics are registered with reg.
func NewUDP(maxFlows int, reg prometheus.Registerer) (*UDP, error) {
	if maxFlows <= 0 {
		return nil, errors.New("max UDP flows must be positive")
	}
	u := &UDP{maxFlows: maxFlows, flows: make(map[udpKey]*udpFlow), refused: make(map[udpKey]uint64)}
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	u.m = &udpMetrics{
		closes:      counter("weir_collector_udp_closes_total", "UDP close records read (one per remote of a closing socket)."),
		vanished:    counter("weir_collector_udp_vanished_total", "UDP remotes that two complete polls in a row no longer saw (their close record was lost)."),
		refused:     counter("weir_collector_udp_flows_dropped_total", "UDP remotes not tracked because --max-udp-flows were tracked already; each is counted once."),
		regressions: counter("weir_collector_udp_backward_reads_total", "UDP counter reads that went backwards; nothing was counted for them."),
		flows: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "weir_collector_udp_flows",
			Help: "UDP remotes of live sockets tracked.",
		}, func() float64 { return float64(u.Len()) }),
		folded: prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "weir_collector_udp_peer_cap_total",
			Help: "UDP datagrams (sent, received or dropped) of sockets at their --udp-peers cap, reported under other peers.",
		}, func() float64 {
			u.mu.Lock()
			defer u.mu.Unlock()
			return float64(u.loss.PeerCap)
		}),
	}
	for _, c := range []prometheus.Collector{u.m.closes, u.m.vanished, u.m.refused, u.m.regressions, u.m.flows, u.m.folded} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register UDP metrics: %w", err)
		}
	}
	return u, nil
}

// Len returns the number of remotes tracked.
func (u *UDP) Len() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.flows)
}

// Apply records one close record: the remote's final counters.
func (u *UDP) Apply(r probe.UDPRecord) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.other(r.NetNS) {
		return
	}
	u.m.closes.Inc()
	f := u.flow(r)
	if f == nil {
		delete(u.refused, udpKey{r.Cookie, r.Slot})
		return
	}
	u.advance(f, r)
	f.closed = true
}

// Follow applies the close records of r until r is closed.
func (u *UDP) Follow(r UDPReader) error {
	failures := 0
	for {
		rec, err := r.ReadUDP()
		if errors.Is(err, probe.ErrClosed) {
			return nil
		}
		if err != nil {
			failures++
			if failures > 10 {
				time.Sleep(100 * time.Millisecond)
			}
			continue
		}
		failures = 0
		u.Apply(rec)
	}
}

// flow returns the flow of r, new if unknown (its counters start at zero:
// the kernel counts a socket's remotes from the first datagram after the
// probe was loaded), or nil when the table is full or the flow closed.
func (u *UDP) flow(r probe.UDPRecord) *udpFlow {
	k := udpKey{r.Cookie, r.Slot}
	if f := u.flows[k]; f != nil {
		if r.Owner.PID != 0 && (!sameProcess(f.owner, r.Owner)) {
			f.owner = r.Owner
		}
		return f
	}
	if _, ok := u.refused[k]; ok {
		u.refused[k] = u.pollGen
		return nil
	}
	if len(u.flows) >= u.maxFlows {
		u.refused[k] = u.pollGen
		u.loss.FlowsDropped++
		u.m.refused.Inc()
		return nil
	}
	f := &udpFlow{key: k, local: r.Local, netns: r.NetNS, owner: r.Owner}
	if !r.Other {
		f.remote = r.Remote
	}
	u.flows[k] = f
	return f
}

// advance adds what r's counters moved since they were last read.
func (u *UDP) advance(f *udpFlow, r probe.UDPRecord) {
	old := &f.raw
	regressed := false
	add64 := func(total *uint64, cur, prev uint64) {
		if cur >= prev {
			*total += cur - prev
		} else {
			regressed = true
		}
	}
	add32 := func(total *uint64, cur, prev uint32) {
		if d, ok := delta32(cur, prev); ok {
			*total += uint64(d)
		} else {
			regressed = true
		}
	}
	add64(&f.total.bytesSent, r.BytesSent, old.BytesSent)
	add64(&f.total.bytesReceived, r.BytesReceived, old.BytesReceived)
	add32(&f.total.datagramsSent, r.DatagramsSent, old.DatagramsSent)
	add32(&f.total.datagramsReceived, r.DatagramsReceived, old.DatagramsReceived)
	add32(&f.total.drops, r.Drops, old.Drops)
	if r.Other {
		// The fold counter is the socket's; the other peers slot moves
		// whenever it does.
		var folded uint64
		add32(&folded, r.Folded, old.Folded)
		u.loss.PeerCap += folded
	}
	if regressed {
		u.m.regressions.Inc()
	}
	f.raw = r
	if r.Local.IsValid() {
		f.local = r.Local
	}
}

// Poll reads every live UDP socket's remotes through src. Only a complete
// walk can tell that a remote is gone (its close record was lost).
func (u *UDP) Poll(src UDPSampler) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.pollGen++
	complete, err := src.SampleUDP(func(r probe.UDPRecord) {
		if u.other(r.NetNS) {
			return
		}
		f := u.flow(r)
		if f == nil || f.closed {
			return // refused, or a sample older than the close already applied
		}
		f.seen = u.pollGen
		u.advance(f, r)
	})
	if err != nil || !complete {
		return err
	}
	prev := u.completeGen
	u.completeGen = u.pollGen
	for k, gen := range u.refused {
		if gen != u.pollGen {
			delete(u.refused, k)
		}
	}
	for _, f := range u.flows {
		if f.closed || f.seen == u.pollGen {
			f.missed = 0
			continue
		}
		if f.seen > prev {
			f.missed = 0
		}
		if f.missed++; f.missed >= vanishedAfter {
			u.m.vanished.Inc()
			f.closed = true
		}
	}
	return nil
}

// UDPDelta is how far one remote of a UDP socket moved since the previous
// drain.
type UDPDelta struct {
	Cookie                                                            uint64
	Local                                                             netip.AddrPort // unspecified address for a socket bound to any
	Remote                                                            netip.AddrPort // invalid for other peers
	NetNS                                                             uint32
	Owner                                                             probe.Owner
	BytesSent, BytesReceived, DatagramsSent, DatagramsReceived, Drops uint64
	// PeerLocal: the remote is a socket of this node whose own record
	// counts what it sent here.
	PeerLocal bool
	// Closed: the socket closed, this is the remote's last delta.
	Closed bool
}

// portPair is a sender's local port and the port it sent to.
type portPair struct{ from, to uint16 }

// sentTo is where a local socket sent: its own address and the remote's.
type sentTo struct{ local, remote netip.Addr }

// drain appends what changed since the previous drain to dst, and forgets
// closed remotes.
func (u *UDP) drain(dst []UDPDelta) ([]UDPDelta, UDPLoss) {
	u.mu.Lock()
	defer u.mu.Unlock()
	// Where the node's own sockets sent: a received view from one of them
	// is covered by that socket's own record.
	senders := make(map[portPair][]sentTo)
	for _, f := range u.flows {
		if f.total.datagramsSent != 0 && f.remote.IsValid() {
			pp := portPair{f.local.Port(), f.remote.Port()}
			senders[pp] = append(senders[pp], sentTo{f.local.Addr().Unmap(), f.remote.Addr().Unmap()})
		}
	}
	for k, f := range u.flows {
		if f.total == f.rep && !f.closed {
			continue
		}
		d := UDPDelta{
			Cookie: f.key.cookie, Local: f.local, Remote: f.remote, NetNS: f.netns, Owner: f.owner,
			BytesSent:         f.total.bytesSent - f.rep.bytesSent,
			BytesReceived:     f.total.bytesReceived - f.rep.bytesReceived,
			DatagramsSent:     f.total.datagramsSent - f.rep.datagramsSent,
			DatagramsReceived: f.total.datagramsReceived - f.rep.datagramsReceived,
			Drops:             f.total.drops - f.rep.drops,
			Closed:            f.closed,
		}
		if f.remote.IsValid() && d.DatagramsReceived != 0 {
			la, ra := f.local.Addr().Unmap(), f.remote.Addr().Unmap()
			for _, s := range senders[portPair{f.remote.Port(), f.local.Port()}] {
				if (s.remote == la || la.IsUnspecified()) && (s.local == ra || s.local.IsUnspecified()) {
					d.PeerLocal = true
					break
				}
			}
		}
		f.rep = f.total
		dst = append(dst, d)
		if f.closed {
			delete(u.flows, k)
		}
	}
	return dst, u.loss
}

// only restricts the table to the network namespaces ours accepts.
func (u *UDP) only(ours func(netns uint32) bool, other prometheus.Counter) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ours, u.otherNetNS = ours, other
}

// other reports, and counts, a record of a namespace not tracked. u.mu is
// held.
func (u *UDP) other(netns uint32) bool {
	if u.ours == nil || u.ours(netns) {
		return false
	}
	u.otherNetNS.Inc()
	return true
}
