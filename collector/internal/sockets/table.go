// Package sockets tracks the node's TCP sockets and encodes what changed as ingest batches.
package sockets

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/weir-project/weir/collector/internal/probe"
	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// Config sizes a Table.
type Config struct {
	// BufferBytes caps the estimated memory of closed sockets awaiting
	// report; beyond it the oldest are dropped and counted.
	BufferBytes int64
	// ProcRoot is where process cgroups are read: <ProcRoot>/<pid>/cgroup.
	ProcRoot string
	// MaxListeners caps the listening sockets remembered for the owner
	// fallback of accepted sockets.
	MaxListeners int
}

// DefaultConfig returns the defaults of a Table.
func DefaultConfig() Config {
	return Config{BufferBytes: 8 << 20, ProcRoot: "/proc", MaxListeners: 65536}
}

// Sampler iterates the kernel socket map.
type Sampler interface {
	Samples(fn func(probe.Sample)) error
}

// closedEntryBytes estimates the memory of one closed socket awaiting
// report: the socket itself and its slot in the queue.
const closedEntryBytes = int64(unsafe.Sizeof(socket{})) + 8

type sockState uint8

const (
	stateLive sockState = iota
	stateClosed
	stateReleased
)

type procKey struct {
	pid  uint32
	comm string
}

type process struct {
	key      procKey
	handle   uint32 // 0 while not announced in this epoch
	refs     int    // sockets whose owner this is
	orphaned bool   // queued for forgetting
}

type socket struct {
	sock       uint64
	seq        uint64 // open order, for deterministic announcement
	handle     uint32 // 0 while not announced in this epoch
	state      sockState
	role       probe.Role
	newConn    bool // announce with new_connection: the open was seen and never announced
	ownerDirty bool // announced, owner changed since the last report
	localPort  uint16
	remotePort uint16
	netns      uint32
	local      netip.Addr
	remote     netip.Addr
	owner      *process
	cur        probe.Counters // latest cumulative counters
	rep        probe.Counters // counters as of the last report: the baseline of deltas
}

type listenKey struct {
	netns uint32
	port  uint16
}

// Table is the collector's view of the node's TCP sockets. Events and
// samples update it; Report encodes what changed since the previous report.
// It is safe for concurrent use.
type Table struct {
	cfg Config
	m   *metrics

	mu     sync.Mutex
	seq    uint64
	live   map[uint64]*socket
	fresh  []*socket // live sockets not yet announced in this epoch
	closed []*socket // closed sockets awaiting report, oldest first
	// closedHandles are announced sockets dropped from the buffer: their
	// final delta is lost but the reducer still learns that they closed.
	closedHandles []uint32
	byHandle      []*socket // announced sockets by handle
	dirtyOwners   []*socket
	procs         map[procKey]*process
	orphans       []*process // announced processes that lost their last socket
	sockHandles   handles
	procHandles   handles
	listeners     map[listenKey]probe.Owner
	dropped       uint64 // cumulative buffer drops
}

// New returns an empty Table whose metrics are registered with reg.
func New(cfg Config, reg prometheus.Registerer) (*Table, error) {
	if cfg.BufferBytes <= 0 {
		return nil, errors.New("buffer bytes must be positive")
	}
	if cfg.MaxListeners <= 0 {
		return nil, errors.New("max listeners must be positive")
	}
	t := &Table{
		cfg:       cfg,
		live:      make(map[uint64]*socket),
		procs:     make(map[procKey]*process),
		listeners: make(map[listenKey]probe.Owner),
		byHandle:  []*socket{nil},
	}
	m, err := newMetrics(reg, t)
	if err != nil {
		return nil, err
	}
	t.m = m
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
	switch ev.Kind {
	case probe.EventOpen:
		t.m.opens.Inc()
		t.open(ev)
	case probe.EventClose:
		t.m.closes.Inc()
		// The close carries the map entry's owner: the socket's last user,
		// which a socket that lived less than an interval was never
		// polled for.
		if s := t.update(ev.Sock, ev.Counters, ev.Owner, t.m.untrackedCloses); s != nil {
			t.close(s)
		}
	case probe.EventListen:
		t.m.listens.Inc()
		t.listen(ev)
	default:
		t.m.unknownEvents.Inc()
	}
}

func (t *Table) open(ev probe.Event) {
	if old := t.live[ev.Sock]; old != nil {
		t.m.replaced.Inc()
		t.close(old)
	}
	t.seq++
	s := &socket{
		sock:       ev.Sock,
		seq:        t.seq,
		role:       ev.Role,
		local:      ev.LocalAddr,
		localPort:  ev.LocalPort,
		remote:     ev.RemoteAddr,
		remotePort: ev.RemotePort,
		netns:      ev.NetNS,
		cur:        ev.Counters,
		rep:        ev.Counters,
	}
	if ev.Role != probe.RoleUnknown {
		// A connection seen from its start: every payload byte and data
		// segment belongs to it. tcp_sock.delivered already counts the
		// handshake, which is not data, so it keeps its baseline.
		s.newConn = true
		s.rep.BytesAcked, s.rep.BytesReceived, s.rep.DataSegsIn = 0, 0, 0
	}
	t.setOwner(s, ev.Owner)
	t.live[ev.Sock] = s
	if len(t.fresh) >= 2*len(t.live)+64 {
		// Without reports (the reducer is away) short-lived sockets would
		// pile up here; closed ones are queued in t.closed anyway.
		kept := t.fresh[:0]
		for _, f := range t.fresh {
			if f.state == stateLive && f.handle == 0 {
				kept = append(kept, f)
			}
		}
		clear(t.fresh[len(kept):])
		t.fresh = kept
	}
	t.fresh = append(t.fresh, s)
}

// close moves a live socket to the queue of closed sockets awaiting report.
func (t *Table) close(s *socket) {
	delete(t.live, s.sock)
	if s.handle == 0 && !s.newConn && s.cur == s.rep {
		// Never announced and nothing to tell: forget it silently.
		t.release(s)
		return
	}
	s.state = stateClosed
	t.closed = append(t.closed, s)
	for t.closedBytes() > t.cfg.BufferBytes && len(t.closed) > 0 {
		t.dropOldest()
	}
}

func (t *Table) dropOldest() {
	s := t.closed[0]
	t.closed[0] = nil
	t.closed = t.closed[1:]
	t.dropped++
	t.m.bufferDropped.Inc()
	t.m.bufferDroppedBytes.Add(float64(sub(s.cur.BytesAcked, s.rep.BytesAcked) + sub(s.cur.BytesReceived, s.rep.BytesReceived)))
	if s.handle != 0 {
		t.closedHandles = append(t.closedHandles, s.handle)
		t.byHandle[s.handle] = nil
		s.handle = 0
	}
	t.release(s)
}

// release drops a socket's reference to its owner; the socket is gone.
func (t *Table) release(s *socket) {
	s.state = stateReleased
	if s.owner != nil {
		t.unref(s.owner)
		s.owner = nil
	}
}

func (t *Table) listen(ev probe.Event) {
	if ev.Owner.PID == 0 {
		return
	}
	k := listenKey{netns: ev.NetNS, port: ev.LocalPort}
	if _, ok := t.listeners[k]; !ok && len(t.listeners) >= t.cfg.MaxListeners {
		for old := range t.listeners {
			delete(t.listeners, old)
			t.m.listenersEvicted.Inc()
			break
		}
	}
	t.listeners[k] = ev.Owner
}

// setOwner makes o the owner of s, unless o is unknown or already the owner.
func (t *Table) setOwner(s *socket, o probe.Owner) {
	if o.PID == 0 {
		return
	}
	k := procKey{pid: o.PID, comm: o.Comm}
	if s.owner != nil && s.owner.key == k {
		return
	}
	p := t.procs[k]
	if p == nil {
		p = &process{key: k}
		t.procs[k] = p
	}
	p.refs++
	if s.owner != nil {
		t.unref(s.owner)
	}
	s.owner = p
	if s.handle != 0 && !s.ownerDirty {
		s.ownerDirty = true
		t.dirtyOwners = append(t.dirtyOwners, s)
	}
}

func (t *Table) unref(p *process) {
	p.refs--
	if p.refs > 0 {
		return
	}
	if p.handle == 0 {
		delete(t.procs, p.key)
		return
	}
	if !p.orphaned {
		p.orphaned = true
		t.orphans = append(t.orphans, p)
	}
}

// Poll reads the socket map through src and records each socket's owner
// and counters. The table stays locked during the iteration so that events
// are applied either before or after it, never in the middle.
func (t *Table) Poll(src Sampler) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	return src.Samples(func(smp probe.Sample) {
		t.update(smp.Sock, smp.Counters, smp.Owner, t.m.untrackedSamples)
	})
}

// update sets the counters and owner of the live socket sock and returns
// it; a socket the table does not know is counted in untracked.
func (t *Table) update(sock uint64, c probe.Counters, owner probe.Owner, untracked prometheus.Counter) *socket {
	s := t.live[sock]
	if s == nil {
		untracked.Inc()
		return nil
	}
	s.cur = c
	t.setOwner(s, owner)
	return s
}

// Resync starts a new epoch: every handle is forgotten, and the next Report
// announces every live socket and its process again. Deltas continue from
// the last reported counters, so nothing is counted twice. Sockets announced
// before are announced with new_connection false.
func (t *Table) Resync() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sockHandles.reset()
	t.procHandles.reset()
	clear(t.byHandle)
	t.byHandle = t.byHandle[:1]
	t.closedHandles = t.closedHandles[:0]
	t.dirtyOwners = t.dirtyOwners[:0]
	t.orphans = t.orphans[:0]
	for k, p := range t.procs {
		p.handle, p.orphaned = 0, false
		if p.refs == 0 {
			delete(t.procs, k)
		}
	}
	t.fresh = t.fresh[:0]
	for _, s := range t.live {
		s.handle, s.ownerDirty = 0, false
		t.fresh = append(t.fresh, s)
	}
	slices.SortFunc(t.fresh, func(a, b *socket) int { return cmpSeq(a, b) })
	kept := t.closed[:0]
	for _, s := range t.closed {
		s.handle, s.ownerDirty = 0, false
		if !s.newConn && s.cur == s.rep {
			// Announced in an earlier epoch and nothing left to report.
			t.release(s)
			continue
		}
		kept = append(kept, s)
	}
	clear(t.closed[len(kept):])
	t.closed = kept
}

// Report returns everything that changed since the previous report as one
// batch (without its sequence number and the kernel's loss counters, which
// belong to the caller) and makes it the new baseline.
func (t *Table) Report(now time.Time) *ingestv1.Batch {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := &ingestv1.Batch{Time: timestamppb.New(now)}

	// Announce new sockets, live or already closed, in the order they opened.
	announce := t.fresh
	for _, s := range t.closed {
		if s.handle == 0 {
			announce = append(announce, s)
		}
	}
	slices.SortFunc(announce, cmpSeq)
	for _, s := range announce {
		if s.handle != 0 || s.state == stateReleased {
			continue
		}
		if s.owner == nil {
			if o, ok := t.listeners[listenKey{netns: s.netns, port: s.localPort}]; ok {
				t.setOwner(s, o)
			}
		}
		s.handle = t.sockHandles.get()
		for int(s.handle) >= len(t.byHandle) {
			t.byHandle = append(t.byHandle, nil)
		}
		t.byHandle[s.handle] = s
		b.Sockets = append(b.Sockets, &ingestv1.Socket{
			Handle:        s.handle,
			Process:       t.announceProcess(b, s.owner),
			Role:          wireRole(s.role),
			LocalAddr:     s.local.AsSlice(),
			LocalPort:     uint32(s.localPort),
			RemoteAddr:    s.remote.AsSlice(),
			RemotePort:    uint32(s.remotePort),
			Netns:         s.netns,
			NewConnection: s.newConn,
		})
		s.newConn = false
	}
	clear(t.fresh)
	t.fresh = t.fresh[:0]

	for _, s := range t.dirtyOwners {
		if !s.ownerDirty || s.handle == 0 {
			continue
		}
		s.ownerDirty = false
		b.Owners = append(b.Owners, &ingestv1.SocketOwner{Socket: s.handle, Process: t.announceProcess(b, s.owner)})
	}
	clear(t.dirtyOwners)
	t.dirtyOwners = t.dirtyOwners[:0]

	b.Stats = t.stats()

	var freeSocks []uint32
	for _, s := range t.closed {
		b.ClosedSockets = append(b.ClosedSockets, s.handle)
		freeSocks = append(freeSocks, s.handle)
		t.byHandle[s.handle] = nil
		s.handle = 0
		t.release(s)
	}
	clear(t.closed)
	t.closed = t.closed[:0]
	b.ClosedSockets = append(b.ClosedSockets, t.closedHandles...)
	freeSocks = append(freeSocks, t.closedHandles...)
	t.closedHandles = t.closedHandles[:0]

	for _, p := range t.orphans {
		p.orphaned = false
		if p.refs > 0 {
			continue
		}
		b.ForgottenProcesses = append(b.ForgottenProcesses, p.handle)
		t.procHandles.put(p.handle)
		delete(t.procs, p.key)
	}
	clear(t.orphans)
	t.orphans = t.orphans[:0]
	// Handles are reusable only after the batch that released them.
	for _, h := range freeSocks {
		t.sockHandles.put(h)
	}

	b.Loss = &ingestv1.Loss{BufferDropped: t.dropped}
	return b
}

// stats encodes the counter deltas of the announced sockets that changed,
// in ascending handle order, and advances their baselines.
func (t *Table) stats() *ingestv1.SocketStats {
	st := &ingestv1.SocketStats{}
	var prev uint32
	for h, s := range t.byHandle {
		if s == nil || s.cur == s.rep {
			continue
		}
		sent, ok1 := delta(s.cur.BytesAcked, s.rep.BytesAcked)
		recv, ok2 := delta(s.cur.BytesReceived, s.rep.BytesReceived)
		segOut, ok3 := delta(s.cur.SegsDelivered, s.rep.SegsDelivered)
		segIn, ok4 := delta(s.cur.DataSegsIn, s.rep.DataSegsIn)
		s.rep = s.cur
		if !ok1 || !ok2 || !ok3 || !ok4 {
			t.m.counterResets.Inc()
		}
		if sent|recv|segOut|segIn == 0 {
			continue
		}
		st.HandleGaps = append(st.HandleGaps, uint32(h)-prev)
		prev = uint32(h)
		st.BytesSent = append(st.BytesSent, sent)
		st.BytesReceived = append(st.BytesReceived, recv)
		st.SegmentsSent = append(st.SegmentsSent, segOut)
		st.SegmentsReceived = append(st.SegmentsReceived, segIn)
	}
	return st
}

// announceProcess returns the handle of p, announcing it in b if it has
// none in this epoch. A nil p is the unknown process, handle 0.
func (t *Table) announceProcess(b *ingestv1.Batch, p *process) uint32 {
	if p == nil {
		return 0
	}
	if p.handle == 0 {
		p.handle = t.procHandles.get()
		b.Processes = append(b.Processes, &ingestv1.Process{
			Handle: p.handle,
			Pid:    p.key.pid,
			Comm:   p.key.comm,
			Cgroup: readCgroup(t.cfg.ProcRoot, p.key.pid),
		})
	}
	return p.handle
}

// readCgroup returns the cgroup v2 path of a process, or "" when unknown.
func readCgroup(procRoot string, pid uint32) string {
	data, err := os.ReadFile(filepath.Join(procRoot, strconv.FormatUint(uint64(pid), 10), "cgroup"))
	if err != nil {
		return ""
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if path, ok := strings.CutPrefix(line, "0::"); ok {
			return path
		}
	}
	return ""
}

func wireRole(r probe.Role) ingestv1.Role {
	switch r {
	case probe.RoleClient:
		return ingestv1.Role_ROLE_CLIENT
	case probe.RoleServer:
		return ingestv1.Role_ROLE_SERVER
	default:
		return ingestv1.Role_ROLE_UNSPECIFIED
	}
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

// delta returns cur-prev, or 0 and false when the counter went backwards.
func delta(cur, prev uint64) (uint64, bool) {
	if cur < prev {
		return 0, false
	}
	return cur - prev, true
}

func sub(cur, prev uint64) uint64 {
	d, _ := delta(cur, prev)
	return d
}
