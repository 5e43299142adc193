// Package sockets tracks the node's TCP sockets by cookie (endpoints, owners
// and counters), its failed connects, and its UDP sockets' remotes, and
// tells what changed since the previous report.
package sockets

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/collector/internal/probe"
)

// Config sizes a Table.
type Config struct {
	// BufferBytes caps the estimated memory of closed sockets awaiting
	// report; beyond it the oldest are dropped and counted.
	BufferBytes int64
	// MaxSockets caps the live sockets tracked. A socket beyond the cap is
	// refused once, counted, and ignored until it closes.
	MaxSockets int
	// MaxListeners caps the listening sockets remembered for the owner
	// fallback of accepted and existing sockets.
	MaxListeners int
	// Owners finds the owners of sockets found already open whose event
	// carries none, by socket inode (a /proc scan). Nil: no scan.
	Owners OwnerScanner
	// MaxFailed caps the failed connects awaiting report; beyond it they
	// are dropped and counted. 0 means DefaultConfig's.
	MaxFailed int
	// UDP is the UDP table that Poll also polls (when its source is a
	// UDPSampler) and Drain also drains; nil without UDP.
	UDP *UDP
	// NoRTT leaves the smoothed RTT out of the deltas (about 1 byte per
	// update on the wire).
	NoRTT bool
	// NetNS are the inodes of the network namespaces whose sockets are
	// tracked (flag --netns); empty: every namespace. Events and samples
	// of other namespaces are ignored and counted.
	NetNS map[uint32]struct{}
}

// DefaultConfig returns the defaults of a Table.
func DefaultConfig() Config {
	return Config{BufferBytes: 8 << 20, MaxSockets: 65536, MaxListeners: 65536, MaxFailed: defaultMaxFailed}
}

// Sampler reads the current state of every socket the kernel tracks. A walk
// that is not complete may have reported a socket twice or not at all.
type Sampler interface {
	SampleWalk(fn func(probe.Sample)) (complete bool, err error)
}

// Discoverer finds the sockets that were open before the probe was loaded.
type Discoverer interface {
	Discover(fn func(probe.Event)) error
}

// OwnerScanner maps socket inodes to the processes that hold them.
type OwnerScanner interface {
	SocketOwners() (map[uint64]probe.Owner, error)
}

// closedEntryBytes estimates the memory of one closed socket awaiting
// report: the socket itself, its slot in the queue, and its entry in the
// set of closing cookies (key and map overhead, about three words), which
// a socket first seen at its close does not take.
const closedEntryBytes = int64(unsafe.Sizeof(socket{})) + 8 + 24

type sockState uint8

const (
	stateLive sockState = iota
	stateClosed
	stateReleased
)

// defaultMaxFailed is how many failed connects wait for a report at most.
const defaultMaxFailed = 16384

// totals are a socket's counters accumulated since the table first saw it,
// in 64 bits: the kernel's 32-bit segment counters wrap, these do not.
type totals struct {
	bytesSent, bytesReceived, segsSent, segsReceived uint64
	retransmits, resetsSent, resetsReceived          uint64
}

type socket struct {
	probe.Endpoint
	seq        uint64 // order first seen, for deterministic announcement
	seen       uint64 // the last poll that sampled it
	state      sockState
	missed     uint8 // complete polls in a row that did not see the socket
	exposed    bool  // in Changes.Opened during this epoch
	newConn    bool  // announce with new_connection: established while the probe was loaded, never announced
	ownerDirty bool  // exposed, owner changed since the last drain
	inFresh    bool  // in Table.fresh
	// openedIn and openedAt: the drain that announced the socket last, and
	// its index in that drain's Changes.Opened plus one.
	openedIn uint64
	openedAt int32
	owner    probe.Owner
	raw      probe.Counters // the kernel's counters as last read; raw.SRTT is the last RTT read
	total    totals         // counted since first seen
	rep      totals         // total as of the last drain: the baseline of deltas
}

type listenKey struct {
	netns uint32
	port  uint16
}

// Table is the collector's view of the node's TCP sockets, keyed by socket
// cookie. Events and samples update it; Drain hands over what changed since
// the previous Drain. It is safe for concurrent use.
type Table struct {
	cfg Config
	m   *metrics

	mu     sync.Mutex
	seq    uint64
	live   map[uint64]*socket
	fresh  []*socket // sockets not yet exposed in this epoch (and stale entries)
	closed []*socket // closed sockets awaiting report, oldest first
	// closing are the cookies of the sockets in closed: a late sample of
	// one of them is the same socket, not a new one.
	closing map[uint64]*socket
	// vanishedClosing says that closing holds a socket that polls took for
	// vanished (closed unseen) since it was last emptied.
	vanishedClosing bool
	// unfreshClosed says that closed may hold a socket never announced
	// that is not in fresh (the bound on fresh dropped it, or Resync
	// rebuilt fresh): Drain then looks for them through closed, which it
	// otherwise skips (under churn closed holds every short connection of
	// the interval, cold in memory).
	unfreshClosed bool
	// pressure is signalled, without blocking, when the closed sockets pass
	// half of BufferBytes, so that a connected stream reports before the
	// next interval instead of dropping the oldest at the cap.
	pressure chan struct{}
	// closedDropped are the cookies of exposed sockets dropped from the
	// buffer: their final delta is lost but the reducer still learns that
	// they closed.
	closedDropped []uint64
	ownerChanges  []*socket
	listeners     map[listenKey]probe.Owner
	// refused are the sockets refused (at the cap, or for an endpoint
	// without addresses), until they close or a complete poll no longer
	// sees them; the value is the poll generation that last saw them.
	refused map[uint64]uint64
	pollGen uint64 // polls so far, complete or not
	// completeGen is the last complete poll, whose word on a socket's
	// absence counts.
	completeGen uint64
	// failed are the failed connects awaiting report, oldest first.
	failed []FailedConnect
	loss   Loss
	// drains counts Drain calls; unconfirmed keeps what the drains the
	// reducer has not confirmed yet took (resume.go).
	drains      uint64
	unconfirmed []drainRecord
	nEntries    int        // entries over unconfirmed
	udpResend   []UDPDelta // UDP records of undone drains, for the next
	rec         drainRecord
	spare       [][]drainEntry // entries of confirmed records, for reuse
	// free are records of sockets reported closed in a drain the reducer
	// confirmed: nothing refers to them any more (resume.go).
	free []*socket
}

// Loss are the table's cumulative loss counters.
type Loss struct {
	BufferDropped      uint64 // closed sockets dropped from the buffer unreported
	SocketCap          uint64 // sockets refused at the cap
	CounterRegressions uint64 // counter reads that went backwards (the wire's Loss.counter_regressions)
	FailedDropped      uint64 // failed connects dropped because MaxFailed were awaiting report
	ResetsUnreported   uint64 // RSTs of sockets already reported closed, not counted
	UDP                UDPLoss
}

// FailedConnect is a TCP connect that never established.
type FailedConnect struct {
	probe.Endpoint
	Owner          probe.Owner
	Reason         probe.FailReason
	SynRetransmits uint32
}

// New returns an empty Table whose metrics are registered with reg.
func New(cfg Config, reg prometheus.Registerer) (*Table, error) {
	if cfg.BufferBytes <= 0 {
		return nil, errors.New("buffer bytes must be positive")
	}
	if cfg.MaxSockets <= 0 {
		return nil, errors.New("max sockets must be positive")
	}
	if cfg.MaxListeners <= 0 {
		return nil, errors.New("max listeners must be positive")
	}
	if cfg.MaxFailed <= 0 {
		cfg.MaxFailed = defaultMaxFailed
	}
	t := &Table{
		cfg:       cfg,
		live:      make(map[uint64]*socket),
		listeners: make(map[listenKey]probe.Owner),
		refused:   make(map[uint64]uint64),
		closing:   make(map[uint64]*socket),
		pressure:  make(chan struct{}, 1),
	}
	m, err := newMetrics(reg, t)
	if err != nil {
		return nil, err
	}
	t.m = m
	if cfg.UDP != nil {
		cfg.UDP.only(t.ours, m.otherNetNS.WithLabelValues("udp"))
	}
	return t, nil
}

// Live returns the number of live sockets tracked.
func (t *Table) Live() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.live)
}

// BufferedBytes returns the estimated memory held by closed sockets
// awaiting report.
func (t *Table) BufferedBytes() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closedBytes()
}

// closedBytes estimates the memory held by closed sockets awaiting report.
func (t *Table) closedBytes() int64 { return int64(len(t.closed)) * closedEntryBytes }

// Apply records one lifecycle event.
func (t *Table) Apply(ev probe.Event) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.apply(ev)
}

// ours reports whether sockets of network namespace ns are tracked.
func (t *Table) ours(ns uint32) bool {
	if len(t.cfg.NetNS) == 0 {
		return true
	}
	_, ok := t.cfg.NetNS[ns]
	return ok
}

func (t *Table) apply(ev probe.Event) {
	if !t.ours(ev.NetNS) {
		t.m.otherNetNS.WithLabelValues("event").Inc()
		return
	}
	switch ev.Kind {
	case probe.EventExisting:
		t.m.existing.Inc()
		t.open(ev.Endpoint, ev.Owner, ev.Counters, false)
	case probe.EventClose:
		t.m.closes.Inc()
		s := t.live[ev.Cookie]
		if s == nil {
			if t.isRefused(ev.Cookie) {
				delete(t.refused, ev.Cookie)
				return
			}
			if ev.Role == probe.RoleUnknown {
				// Found already open, yet never discovered nor sampled:
				// its counters would only be its baseline.
				t.m.untrackedCloses.Inc()
				return
			}
			// Established and closed between two polls: its close is all
			// there is of it, and all its traffic counts. It goes
			// straight to the closed queue, never into the live map.
			if s = t.newConnection(ev.Endpoint, ev.Owner, ev.Counters, false); s == nil {
				return
			}
			// No walk saw it open, and walks skip closed sockets: no late
			// sample can come, so it is not kept among the closing
			// (a reset after its close finds it in the queue's tail).
			t.enqueueClosed(s)
			return
		}
		// The close carries the socket's last user, which a socket that
		// lived less than an interval was never sampled for.
		t.update(s, ev.Counters, ev.Owner)
		delete(t.live, s.Cookie)
		t.close(s)
	case probe.EventOrphan:
		t.m.orphans.Inc()
		t.sample(probe.Sample{Endpoint: ev.Endpoint, Owner: ev.Owner, Counters: ev.Counters})
	case probe.EventListen:
		t.m.listens.Inc()
		t.listen(listenKey{netns: ev.NetNS, port: ev.LocalPort}, ev.Owner)
	case probe.EventFailed:
		t.m.failed.WithLabelValues(ev.Reason.String()).Inc()
		if len(t.failed) >= t.cfg.MaxFailed {
			t.loss.FailedDropped++
			t.m.failedDropped.Inc()
			return
		}
		t.failed = append(t.failed, FailedConnect{Endpoint: ev.Endpoint, Owner: ev.Owner, Reason: ev.Reason, SynRetransmits: ev.Counters.Retransmits})
	case probe.EventReset:
		// A RST sent or received just after the close event (close() with
		// SO_LINGER 0 or unread data). Only the reset counters are taken:
		// the kernel read the rest after the close, without the state
		// that tells the FIN apart.
		s := t.live[ev.Cookie]
		if s == nil {
			s = t.recentlyClosed(ev.Cookie)
		}
		if s == nil {
			s = t.closing[ev.Cookie]
		}
		if s == nil {
			t.loss.ResetsUnreported++
			t.m.resetsUnreported.Inc()
			return
		}
		c := s.raw
		c.ResetsSent, c.ResetsRecv = ev.Counters.ResetsSent, ev.Counters.ResetsRecv
		t.advance(s, c)
	default:
		t.m.unknownEvents.Inc()
	}
}

// newConnection starts tracking a socket the probe saw established (its
// role is known), first seen by a sample or by its close: its counters run
// from the handshake, so all of c counts. It returns the socket, or nil if
// refused. The caller has found no live socket of its cookie; live says
// whether the socket goes into the live map (false for one that is
// closing now).
func (t *Table) newConnection(ep probe.Endpoint, owner probe.Owner, c probe.Counters, live bool) *socket {
	refused := t.isRefused(ep.Cookie)
	// The kernel reports a socket's close once, so a close event finds
	// its cookie among the closing sockets only if polls took the socket
	// for vanished first. Under churn most closes are of sockets never
	// sampled, and the lookup missed in a map of one interval's closes.
	closing := false
	if live || t.vanishedClosing {
		_, closing = t.closing[ep.Cookie]
	}
	if !refused && !closing {
		// Once per socket: a refused one is not seen as new again.
		t.m.opens.Inc()
	}
	// The baseline is zero: the kernel took the handshake out.
	s := t.admit(ep, owner, probe.Counters{}, true, refused, closing, live)
	if s != nil {
		t.advance(s, c)
	}
	return s
}

// isRefused says whether the socket of cookie is refused, without hashing
// when none is.
func (t *Table) isRefused(cookie uint64) bool {
	if len(t.refused) == 0 {
		return false
	}
	_, ok := t.refused[cookie]
	return ok
}

// open starts tracking a socket, with c as the counters last read. isNew
// says the probe saw it established (see newConnection). Otherwise c is the
// baseline and nothing is counted until the counters move on. It returns
// the socket, or nil if refused.
func (t *Table) open(ep probe.Endpoint, owner probe.Owner, c probe.Counters, isNew bool) *socket {
	if s := t.live[ep.Cookie]; s != nil {
		// Cookies are unique per boot: this is the same socket.
		t.m.duplicateOpens.Inc()
		t.setOwner(s, owner)
		return s
	}
	_, closing := t.closing[ep.Cookie]
	return t.admit(ep, owner, c, isNew, t.isRefused(ep.Cookie), closing, true)
}

// admit is open for a cookie without a live socket, refused or closing as
// found; live says whether the socket goes into the live map.
func (t *Table) admit(ep probe.Endpoint, owner probe.Owner, c probe.Counters, isNew, refused, closing, live bool) *socket {
	if refused {
		return nil
	}
	if closing {
		t.m.duplicateOpens.Inc()
		return nil
	}
	if !ep.LocalAddr.IsValid() || !ep.RemoteAddr.IsValid() {
		// The reducer refuses a socket without addresses, and the whole
		// batch with it.
		t.refused[ep.Cookie] = t.pollGen
		t.m.invalidEndpoints.Inc()
		return nil
	}
	if len(t.live) >= t.cfg.MaxSockets {
		t.refused[ep.Cookie] = t.pollGen
		t.loss.SocketCap++
		t.m.socketCap.Inc()
		return nil
	}
	t.seq++
	s := t.newSocket()
	*s = socket{Endpoint: ep, seq: t.seq, newConn: isNew, raw: c}
	t.setOwner(s, owner)
	if live {
		t.live[ep.Cookie] = s
	}
	if len(t.fresh) >= 2*(len(t.live)+len(t.closed))+64 {
		// Without reports (the reducer is away) short-lived sockets would
		// pile up here; closed ones are queued in t.closed anyway. The
		// bound counts the closed sockets awaiting report (t.closed is
		// bounded by BufferBytes): under connection churn most of fresh
		// is closed sockets, and dropping them from it at every 2×live
		// new ones cost a scan each time and a sort of the announcements
		// at every Drain (4% of the collector's CPU).
		kept := t.fresh[:0]
		for _, f := range t.fresh {
			if f.state == stateLive && !f.exposed {
				kept = append(kept, f)
			} else {
				f.inFresh = false
			}
		}
		clear(t.fresh[len(kept):])
		t.fresh = kept
		t.unfreshClosed = true
	}
	s.inFresh = true
	t.fresh = append(t.fresh, s)
	return s
}

// newSocket takes a socket record from those free for reuse, or a new one.
// Under connection churn a record per socket was about a tenth of the
// collector's CPU with the collections it caused.
func (t *Table) newSocket() *socket {
	if n := len(t.free); n > 0 {
		s := t.free[n-1]
		t.free[n-1] = nil
		t.free = t.free[:n-1]
		return s
	}
	return new(socket)
}

// update records the counters and owner read for s.
func (t *Table) update(s *socket, c probe.Counters, owner probe.Owner) {
	t.advance(s, c)
	t.setOwner(s, owner)
}

// advance adds what the counters moved since they were last read to the
// socket's totals. The segment counters are 32 bits and wrap, so they move
// by the difference modulo 2^32. A counter that went backwards (for the
// segment counters, by a difference over 2^31) is a regression: it counts
// nothing, and its new value is the baseline from now on.
func (t *Table) advance(s *socket, c probe.Counters) {
	regressed := false
	if c.BytesAcked >= s.raw.BytesAcked {
		s.total.bytesSent += c.BytesAcked - s.raw.BytesAcked
	} else {
		regressed = true
		s.total.bytesSent = retract(s.total.bytesSent, s.rep.bytesSent, s.raw.BytesAcked-c.BytesAcked)
	}
	if c.BytesReceived >= s.raw.BytesReceived {
		s.total.bytesReceived += c.BytesReceived - s.raw.BytesReceived
	} else {
		regressed = true
		s.total.bytesReceived = retract(s.total.bytesReceived, s.rep.bytesReceived, s.raw.BytesReceived-c.BytesReceived)
	}
	if d, ok := delta32(c.SegsDelivered, s.raw.SegsDelivered); ok {
		s.total.segsSent += uint64(d)
	} else {
		regressed = true
	}
	if d, ok := delta32(c.DataSegsIn, s.raw.DataSegsIn); ok {
		s.total.segsReceived += uint64(d)
	} else {
		regressed = true
	}
	if d, ok := delta32(c.Retransmits, s.raw.Retransmits); ok {
		s.total.retransmits += uint64(d)
	} else {
		regressed = true
	}
	if d, ok := delta32(c.ResetsSent, s.raw.ResetsSent); ok {
		s.total.resetsSent += uint64(d)
	} else {
		regressed = true
	}
	if d, ok := delta32(c.ResetsRecv, s.raw.ResetsRecv); ok {
		s.total.resetsReceived += uint64(d)
	} else {
		regressed = true
	}
	s.raw = c
	if regressed {
		t.loss.CounterRegressions++
		t.m.backwardReads.Inc()
	}
}

// retract takes back the one byte that a byte counter went backwards by
// from a total that has not reported it yet (total > rep). A sample reads a
// socket without its lock, so a read racing a FIN can count the FIN's
// sequence number as a byte before the socket's state says so; the next
// read (the close's, under the lock) is right. Any other regression, and a
// byte already reported, stay as they are: nothing is counted for the
// regression, its new value is the baseline, and it is counted either way.
func retract(total, rep, back uint64) uint64 {
	if back == 1 && total > rep {
		return total - 1
	}
	return total
}

// delta32 returns how far a wrapping 32-bit counter moved from prev to cur,
// and false when the move is more than half the range: the counter went
// backwards.
func delta32(cur, prev uint32) (uint32, bool) {
	d := cur - prev
	return d, d <= 1<<31
}

// Pressure is signalled when the closed sockets awaiting report pass half of
// the buffer's cap: a connected stream should report before the next
// interval. --buffer-bytes must otherwise hold one interval's closed sockets.
func (t *Table) Pressure() <-chan struct{} { return t.pressure }

// close moves a socket, no longer in the live map, to the queue of closed
// sockets awaiting report, and among the closing ones.
func (t *Table) close(s *socket) {
	if t.enqueueClosed(s) {
		t.closing[s.Cookie] = s
	}
}

// recentCloses is how far back from the tail of the closed queue a reset
// that follows its socket's close looks: the kernel sends it in the same
// call that closed the socket, so only the other CPUs' events come in
// between.
const recentCloses = 64

// recentlyClosed finds the socket of cookie among the last recentCloses
// sockets of the closed queue.
func (t *Table) recentlyClosed(cookie uint64) *socket {
	for i := len(t.closed) - 1; i >= max(0, len(t.closed)-recentCloses); i-- {
		if t.closed[i].Cookie == cookie {
			return t.closed[i]
		}
	}
	return nil
}

// enqueueClosed puts s in the queue of closed sockets awaiting report, and
// says whether it did: a socket never reported with nothing to tell is
// forgotten instead.
func (t *Table) enqueueClosed(s *socket) bool {
	if !s.exposed && !s.newConn && s.total == s.rep {
		// Never reported and nothing to tell: forget it silently.
		s.state = stateReleased
		return false
	}
	s.state = stateClosed
	t.closed = append(t.closed, s)
	if t.closedBytes() > t.cfg.BufferBytes/2 {
		select {
		case t.pressure <- struct{}{}:
		default:
		}
	}
	for t.closedBytes() > t.cfg.BufferBytes && len(t.closed) > 0 {
		t.dropOldest()
	}
	return s.state == stateClosed // not dropped at once by a tiny buffer
}

func (t *Table) dropOldest() {
	s := t.closed[0]
	t.closed[0] = nil
	t.closed = t.closed[1:]
	delete(t.closing, s.Cookie)
	t.loss.BufferDropped++
	t.m.bufferDropped.Inc()
	t.m.bufferDroppedBytes.Add(float64(s.total.bytesSent - s.rep.bytesSent + s.total.bytesReceived - s.rep.bytesReceived))
	if s.exposed {
		t.closedDropped = append(t.closedDropped, s.Cookie)
	}
	s.state = stateReleased
}

func (t *Table) listen(k listenKey, owner probe.Owner) {
	if owner.PID == 0 {
		return
	}
	if _, ok := t.listeners[k]; !ok && len(t.listeners) >= t.cfg.MaxListeners {
		for old := range t.listeners {
			delete(t.listeners, old)
			t.m.listenersEvicted.Inc()
			break
		}
	}
	t.listeners[k] = owner
}

// sameProcess says whether two owners are the same process: the same pid
// and start time (and, when the start time is unknown, the same comm).
func sameProcess(a, b probe.Owner) bool {
	return a.PID == b.PID && a.StartTime == b.StartTime && (a.StartTime != 0 || a.Comm == b.Comm)
}

// setOwner makes o the owner of s, unless o is unknown or already the owner.
func (t *Table) setOwner(s *socket, o probe.Owner) {
	if o.PID == 0 || sameProcess(s.owner, o) {
		return
	}
	s.owner = o
	if s.exposed && !s.ownerDirty {
		s.ownerDirty = true
		t.ownerChanges = append(t.ownerChanges, s)
	}
}

// Poll reads every tracked socket through src and records its owner and
// counters. A socket the table does not know with a client or server role
// was established since the previous poll: it is a new connection, counted
// from its handshake. One without a role (found already open, yet missed
// by discovery) is tracked from here on with these counters as its
// baseline, and counted as untracked. Only a complete walk can tell that a
// socket is gone. The table stays locked during the walk so that events
// are applied either before or after it, never in the middle.
func (t *Table) Poll(src Sampler) error {
	err := t.pollTCP(src)
	if us, ok := src.(UDPSampler); ok && t.cfg.UDP != nil {
		err = errors.Join(err, t.cfg.UDP.Poll(us))
	}
	return err
}

func (t *Table) pollTCP(src Sampler) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.pollGen++
	complete, err := src.SampleWalk(t.sample)
	if err != nil || !complete {
		// A chunked walk can miss a live socket: it says nothing of the
		// sockets it did not report.
		return err
	}
	prevComplete := t.completeGen
	t.completeGen = t.pollGen
	// A refused socket that a complete poll no longer sees is gone (its
	// close was lost): forget it, so that the set stays bounded by the
	// sockets that exist.
	for cookie, gen := range t.refused {
		if gen != t.pollGen {
			delete(t.refused, cookie)
		}
	}
	// A live socket that complete polls no longer see closed and its close
	// event was lost (the ring was full). Two polls in a row, so that a
	// socket is never closed on the word of one iteration: it is closed
	// with its last counters, and does not hold a slot under the cap.
	for _, s := range t.live {
		if s.seen == t.pollGen {
			s.missed = 0
			continue
		}
		if s.seen > prevComplete {
			// Sampled by an incomplete walk since the last complete one:
			// alive then, so this is the first complete poll to miss it.
			s.missed = 0
		}
		if s.missed++; s.missed >= vanishedAfter {
			t.m.vanished.Inc()
			delete(t.live, s.Cookie)
			t.close(s)
			t.vanishedClosing = true
		}
	}
	return nil
}

// sample records one sample of a walk, or an orphan's (EventOrphan).
func (t *Table) sample(smp probe.Sample) {
	if !t.ours(smp.NetNS) {
		t.m.otherNetNS.WithLabelValues("sample").Inc()
		return
	}
	if s := t.live[smp.Cookie]; s != nil {
		s.seen = t.pollGen
		t.update(s, smp.Counters, smp.Owner)
		return
	}
	if _, ok := t.refused[smp.Cookie]; ok {
		t.refused[smp.Cookie] = t.pollGen
		return
	}
	var s *socket
	if smp.Role != probe.RoleUnknown {
		s = t.newConnection(smp.Endpoint, smp.Owner, smp.Counters, true)
	} else {
		t.m.untrackedSamples.Inc()
		s = t.open(smp.Endpoint, smp.Owner, smp.Counters, false)
	}
	if s != nil {
		s.seen = t.pollGen
	}
}

// vanishedAfter is how many complete polls in a row must miss a live
// socket before it is taken for closed.
const vanishedAfter = 2

// Discover adds the sockets that were open before the probe was loaded:
// connected sockets (EventExisting), whose counters are the baseline, and
// listeners (EventListen). Those whose owner the kernel did not know are
// given one from a single scan of the processes' open files by socket
// inode; connected sockets still without one fall back to the listener of
// their local port when they are reported. An error (some namespace could
// not be searched, or the scan failed) leaves sockets or owners unknown;
// what was found is tracked anyway.
func (t *Table) Discover(src Discoverer) error {
	type pending struct {
		cookie uint64 // 0 for a listener
		listen listenKey
		inode  uint64
	}
	var unowned []pending // bounded by MaxSockets and MaxListeners
	err := src.Discover(func(ev probe.Event) {
		t.mu.Lock()
		defer t.mu.Unlock()
		t.apply(ev)
		if ev.Owner.PID != 0 || ev.Inode == 0 {
			return
		}
		switch ev.Kind {
		case probe.EventExisting:
			if s := t.live[ev.Cookie]; s != nil && s.owner.PID == 0 {
				unowned = append(unowned, pending{cookie: ev.Cookie, inode: ev.Inode})
			}
		case probe.EventListen:
			if len(unowned) < t.cfg.MaxSockets+t.cfg.MaxListeners {
				unowned = append(unowned, pending{listen: listenKey{netns: ev.NetNS, port: ev.LocalPort}, inode: ev.Inode})
			}
		}
	})
	if err != nil {
		// Some sockets may be missing; those found are tracked.
		err = fmt.Errorf("discover sockets: %w", err)
	}
	if len(unowned) == 0 || t.cfg.Owners == nil {
		return err
	}
	owners, scanErr := t.cfg.Owners.SocketOwners()
	if scanErr != nil {
		return errors.Join(err, fmt.Errorf("find owners of existing sockets: %w", scanErr))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range unowned {
		o, ok := owners[p.inode]
		if !ok {
			continue
		}
		if p.cookie == 0 {
			if _, known := t.listeners[p.listen]; !known {
				t.listen(p.listen, o)
			}
			continue
		}
		if s := t.live[p.cookie]; s != nil {
			t.setOwner(s, o)
		}
	}
	return err
}

// Socket is a socket to announce.
type Socket struct {
	probe.Endpoint
	Owner probe.Owner // PID 0: not known yet
	// NewConnection: the probe saw the connection being established, and
	// it was never announced before.
	NewConnection bool
}

// OwnerChange is a new owner of an announced socket.
type OwnerChange struct {
	Cookie uint64
	Owner  probe.Owner
}

// Delta is how far an announced socket's counters moved since the previous
// Drain, and its smoothed RTT when last read (0 if not measured).
type Delta struct {
	Cookie uint64
	// Opened is the socket's index in Changes.Opened plus one when this
	// drain announces it, 0 otherwise: a consumer finds its announcement
	// without looking the cookie up.
	Opened                                                   int32
	BytesSent, BytesReceived, SegmentsSent, SegmentsReceived uint64
	Retransmits, ResetsSent, ResetsReceived                  uint64
	SRTT                                                     time.Duration
}

// Changes is what changed since the previous Drain, in the order a reducer
// applies it: sockets to announce, owner changes, deltas, closes.
type Changes struct {
	// Opened are the sockets not announced yet in this epoch, live or
	// already closed, in the order they were first seen.
	Opened []Socket
	// Owners are the owner changes of sockets announced before.
	Owners []OwnerChange
	// Deltas are the nonzero counter deltas of announced sockets,
	// including those in Opened and Closed.
	Deltas []Delta
	// Closed are the cookies of announced sockets that closed, including
	// those in Opened.
	Closed []uint64
	// ClosedOpened is, for each of Closed, its index in Opened plus one
	// when this drain announces it (most closes under churn), 0
	// otherwise.
	ClosedOpened []int32
	// Failed are the connects that failed since the previous Drain.
	Failed []FailedConnect
	// UDP are the UDP remotes that moved or closed since the previous
	// Drain.
	UDP []UDPDelta
	// Loss are the table's cumulative loss counters.
	Loss Loss
}

func (c *Changes) reset() {
	clear(c.Opened)
	c.Opened = c.Opened[:0]
	c.Owners = c.Owners[:0]
	c.Deltas = c.Deltas[:0]
	c.Closed = c.Closed[:0]
	c.ClosedOpened = c.ClosedOpened[:0]
	clear(c.Failed)
	c.Failed = c.Failed[:0]
	clear(c.UDP)
	c.UDP = c.UDP[:0]
}

// Drain fills c (its slices are reused) with what changed since the
// previous Drain, and makes that the new baseline: the caller must hand
// all of it to the reducer.
func (t *Table) Drain(c *Changes) {
	t.mu.Lock()
	defer t.mu.Unlock()
	c.reset()
	rec := t.beginDrain()

	// Announce new sockets, live or already closed, in the order they were
	// first seen. t.fresh is in that order; a closed socket not in it was
	// dropped from it while reports were not made, or by Resync, which
	// t.unfreshClosed notes.
	announce := t.fresh
	if t.unfreshClosed {
		for _, s := range t.closed {
			if !s.exposed && !s.inFresh {
				announce = append(announce, s)
			}
		}
		t.unfreshClosed = false // this Drain empties closed
	}
	if len(announce) > len(t.fresh) {
		slices.SortFunc(announce, cmpSeq)
	}
	for _, s := range announce {
		// The sort may have moved sockets of t.fresh past its length.
		s.inFresh = false
		if s.exposed || s.state == stateReleased {
			continue
		}
		if s.owner.PID == 0 {
			if o, ok := t.listeners[listenKey{netns: s.NetNS, port: s.LocalPort}]; ok {
				s.owner = o
			}
		}
		s.exposed = true
		c.Opened = append(c.Opened, Socket{Endpoint: s.Endpoint, Owner: s.owner, NewConnection: s.newConn})
		s.openedIn, s.openedAt = t.drains, int32(len(c.Opened))
		if s.newConn && s.state != stateClosed {
			// One closed too (most sockets under churn) is noted once,
			// with both, by the closes below.
			rec.note(s, s.rep, entryNewConn)
		}
		s.newConn = false
	}
	clear(announce)
	t.fresh = t.fresh[:0]

	for _, s := range t.ownerChanges {
		if s.ownerDirty && s.state != stateReleased {
			c.Owners = append(c.Owners, OwnerChange{Cookie: s.Cookie, Owner: s.owner})
		}
		s.ownerDirty = false
	}
	clear(t.ownerChanges)
	t.ownerChanges = t.ownerChanges[:0]

	for _, s := range t.live {
		if rep := s.rep; t.drainDelta(c, s) {
			rec.note(s, rep, 0)
		}
	}
	for _, s := range t.closed {
		rep := s.rep
		t.drainDelta(c, s)
		c.Closed = append(c.Closed, s.Cookie)
		at := t.openedAt(s)
		c.ClosedOpened = append(c.ClosedOpened, at)
		s.state = stateReleased
		f := entryClosed
		if at > 0 && c.Opened[at-1].NewConnection {
			f |= entryNewConn
		}
		rec.note(s, rep, f)
	}
	clear(t.closing)
	t.vanishedClosing = false
	clear(t.closed)
	t.closed = t.closed[:0]
	c.Closed = append(c.Closed, t.closedDropped...)
	for range t.closedDropped {
		c.ClosedOpened = append(c.ClosedOpened, 0)
	}
	t.closedDropped = t.closedDropped[:0]
	c.Failed = append(c.Failed, t.failed...)
	clear(t.failed)
	t.failed = t.failed[:0]
	c.UDP = append(c.UDP, t.udpResend...)
	clear(t.udpResend)
	t.udpResend = t.udpResend[:0]
	if t.cfg.UDP != nil {
		c.UDP, t.loss.UDP = t.cfg.UDP.drain(c.UDP)
	}
	rec.keep(c)
	c.Loss = t.loss
	t.endDrain(rec)
}

// drainDelta appends s's delta to c, if its counters moved, and makes its
// total the baseline. It reports whether they moved.
func (t *Table) drainDelta(c *Changes, s *socket) bool {
	if s.total == s.rep {
		return false
	}
	c.Deltas = append(c.Deltas, Delta{
		Cookie:           s.Cookie,
		Opened:           t.openedAt(s),
		BytesSent:        s.total.bytesSent - s.rep.bytesSent,
		BytesReceived:    s.total.bytesReceived - s.rep.bytesReceived,
		SegmentsSent:     s.total.segsSent - s.rep.segsSent,
		SegmentsReceived: s.total.segsReceived - s.rep.segsReceived,
		Retransmits:      s.total.retransmits - s.rep.retransmits,
		ResetsSent:       s.total.resetsSent - s.rep.resetsSent,
		ResetsReceived:   s.total.resetsReceived - s.rep.resetsReceived,
		SRTT:             s.raw.SRTT,
	})
	if t.cfg.NoRTT {
		c.Deltas[len(c.Deltas)-1].SRTT = 0
	}
	s.rep = s.total
	return true
}

// openedAt is s's index in the Changes.Opened of the drain under way plus
// one, or 0 if that drain does not announce it. t.mu is held.
func (t *Table) openedAt(s *socket) int32 {
	if s.openedIn != t.drains {
		return 0
	}
	return s.openedAt
}

// Resync starts a new epoch: the reducer forgot every socket, so the next
// Drain announces every live socket again. Deltas continue from the last
// drained counters, so nothing is counted twice. Sockets announced before
// are announced with NewConnection false.
func (t *Table) Resync() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.closedDropped = t.closedDropped[:0]
	for _, s := range t.ownerChanges {
		s.ownerDirty = false
	}
	clear(t.ownerChanges)
	t.ownerChanges = t.ownerChanges[:0]
	for _, s := range t.fresh {
		s.inFresh = false
	}
	clear(t.fresh)
	t.fresh = t.fresh[:0]
	for _, s := range t.live {
		s.exposed = false
		s.inFresh = true
		t.fresh = append(t.fresh, s)
	}
	t.unfreshClosed = true // the closed sockets below, announced again
	slices.SortFunc(t.fresh, cmpSeq)
	kept := t.closed[:0]
	for _, s := range t.closed {
		s.exposed = false
		if !s.newConn && s.total == s.rep {
			// Announced in an earlier epoch and nothing left to report.
			s.state = stateReleased
			delete(t.closing, s.Cookie)
			continue
		}
		kept = append(kept, s)
	}
	clear(t.closed[len(kept):])
	t.closed = kept
}

func cmpSeq(a, b *socket) int {
	switch {
	case a.seq < b.seq:
		return -1
	case a.seq > b.seq:
		return 1
	}
	return 0
}
