// Package encode turns what changed in the socket table into ingest batches,
// and owns the wire handles of sockets and processes.
package encode

import (
	"context"
	"math"
	"net/netip"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/weir-project/weir/collector/internal/nat"
	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/procs"
	"github.com/weir-project/weir/collector/internal/sockets"
	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// Source is the socket table: what changed since the last drain, and a new
// epoch in which everything live is announced again.
type Source interface {
	Drain(c *sockets.Changes)
	Resync()
}

// Cgroups finds the cgroup path of a process, provided the pid still
// belongs to the process that started at startTime.
type Cgroups interface {
	CgroupPath(pid uint32, startTime uint64) (string, error)
}

// Describer describes a process once per lifetime: what the wire's Process
// carries besides its identity. A Cgroups that is also a Describer is asked
// for this instead of the cgroup path alone.
type Describer interface {
	Describe(pid uint32, startTime uint64, comm string) procs.Info
}

// Translator finds the NAT translation of a TCP connection, by its ends as
// its socket sees them. Report calls Sync once with the network namespaces
// of the sockets it is about to announce (each once), after it drained the
// source and before it calls Translate for them.
type Translator interface {
	Sync(netns []uint32)
	Translate(local, remote netip.AddrPort) (nat.Translation, bool)
}

// procKey is a process's identity: pid and start time tell apart the
// processes that reuse a pid. Comm is part of it only when the start time
// is unknown.
type procKey struct {
	pid       uint32
	startTime uint64
	comm      string
}

func keyOf(o probe.Owner) procKey {
	k := procKey{pid: o.PID, startTime: o.StartTime}
	if o.StartTime == 0 {
		k.comm = o.Comm
	}
	return k
}

type process struct {
	key       procKey
	handle    uint32
	refs      int  // announced sockets whose owner this is
	forgotten bool // queued for forgetting
}

type socket struct {
	handle uint32
	proc   *process // nil: owner unknown
}

// Encoder builds the batches of one table. It is not safe for concurrent
// use: one stream calls Report and Resync.
type Encoder struct {
	src     Source
	cgroups Cgroups

	changes     sockets.Changes   // reused between reports
	socks       map[uint64]socket // by cookie
	procs       map[procKey]*process
	lastProc    *process // the last one ref found or made, while in procs
	sockHandles handles
	procHandles handles
	orphans     []*process
	slots       []int32 // Changes.Deltas index by socket handle, -1 for none
	// opened are the sockets of the report's Changes.Opened, by index,
	// and closedNow says which of them the same report closes: those are
	// never put in socks, which under churn held every socket for the
	// length of one report.
	opened    []socket
	closedNow []bool
	freeSocks []uint32
	nat       Translator          // nil: no translations
	netns     []uint32            // netnsOf's result
	udp       map[uint64]*process // the process of each UDP socket (by cookie) announced with a flow
	procSync  ProcessSyncer       // nil: the process table is not followed
}

// ProcessSyncer applies the process events the kernel has submitted so far
// to the table that Describe reads. Report calls Sync once, after it
// drained the source and before it describes a process: a process's exec
// comes before any event of the sockets it opens, so their processes are
// described as they are after that exec (its executable, cgroup and
// container), however late the process events' reader runs. A Sync that
// fails leaves the table as it is; the failure is the syncer's to count.
type ProcessSyncer interface {
	Sync(ctx context.Context) error
}

// procSyncTimeout bounds the wait for the process events' reader, which
// reads /proc once per exec, in a report.
const procSyncTimeout = 250 * time.Millisecond

// SetProcessSync makes Report sync the process table with s first.
func (e *Encoder) SetProcessSync(s ProcessSyncer) { e.procSync = s }

// SetTranslator makes the encoder announce each socket with its NAT
// translation, when t knows one.
func (e *Encoder) SetTranslator(t Translator) { e.nat = t }

// New returns an Encoder of the changes of src. cgroups may be nil: no
// cgroup paths are announced then.
func New(src Source, cgroups Cgroups) *Encoder {
	return &Encoder{
		src:     src,
		cgroups: cgroups,
		socks:   make(map[uint64]socket),
		procs:   make(map[procKey]*process),
		udp:     make(map[uint64]*process),
	}
}

// netnsOf returns the network namespaces of opened, each once, in a slice
// that the next call reuses.
func (e *Encoder) netnsOf(opened []sockets.Socket) []uint32 {
	e.netns = e.netns[:0]
	for i := range opened {
		// Few namespaces per batch, and runs of one: a linear search.
		if ns := opened[i].NetNS; !slices.Contains(e.netns, ns) {
			e.netns = append(e.netns, ns)
		}
	}
	return e.netns
}

// Resync starts a new epoch: every handle is forgotten and the next Report
// announces every live socket and its process again.
func (e *Encoder) Resync() {
	clear(e.socks)
	clear(e.udp)
	clear(e.procs)
	e.lastProc = nil
	e.sockHandles.reset()
	e.procHandles.reset()
	clear(e.orphans)
	e.orphans = e.orphans[:0]
	e.src.Resync()
}

// Report returns everything that changed since the previous report as one
// batch, without its sequence number and the probe's loss counters, which
// belong to the caller.
func (e *Encoder) Report(now time.Time) *ingestv1.Batch {
	c := &e.changes
	e.src.Drain(c)
	b := &ingestv1.Batch{Time: timestamppb.New(now)}
	if e.procSync != nil && (len(c.Opened) > 0 || len(c.UDP) > 0) {
		ctx, cancel := context.WithTimeout(context.Background(), procSyncTimeout)
		_ = e.procSync.Sync(ctx) // counted by the syncer; the table stands as it is
		cancel()
	}
	if e.nat != nil && len(c.Opened) > 0 {
		e.nat.Sync(e.netnsOf(c.Opened))
	}

	// The announcements and their addresses are carved from one
	// allocation each rather than three per socket: under connection
	// churn most sockets of a batch are announced in it.
	wire := make([]ingestv1.Socket, len(c.Opened))
	var addrs []byte
	if len(c.Opened) > 0 {
		b.Sockets = make([]*ingestv1.Socket, 0, len(c.Opened))
		addrs = make([]byte, 0, 8*len(c.Opened))
	}
	e.opened = slices.Grow(e.opened[:0], len(c.Opened))[:len(c.Opened)]
	e.closedNow = slices.Grow(e.closedNow[:0], len(c.Opened))[:len(c.Opened)]
	clear(e.closedNow)
	for i := range c.Closed {
		if at := closedOpened(c, i); at > 0 {
			e.closedNow[at-1] = true
		}
	}
	for i := range c.Opened {
		o := &c.Opened[i]
		s := socket{handle: e.sockHandles.get(), proc: e.ref(b, o.Owner)}
		e.opened[i] = s
		if !e.closedNow[i] {
			e.socks[o.Cookie] = s
		}
		ws := &wire[i]
		ws.Handle = s.handle
		ws.Process = handleOf(s.proc)
		ws.Role = wireRole(o.Role)
		ws.LocalAddr, addrs = appendAddr(addrs, o.LocalAddr)
		ws.LocalPort = uint32(o.LocalPort)
		ws.RemoteAddr, addrs = appendAddr(addrs, o.RemoteAddr)
		ws.RemotePort = uint32(o.RemotePort)
		ws.Netns = o.NetNS
		ws.NewConnection = o.NewConnection
		ws.Cookie = o.Cookie
		ws.Nat = e.translate(o)
		b.Sockets = append(b.Sockets, ws)
	}

	for _, oc := range c.Owners {
		s, ok := e.socks[oc.Cookie]
		if !ok {
			continue
		}
		p := e.ref(b, oc.Owner)
		if p == s.proc {
			e.unref(p)
			continue
		}
		e.unref(s.proc)
		s.proc = p
		e.socks[oc.Cookie] = s
		b.Owners = append(b.Owners, &ingestv1.SocketOwner{Socket: s.handle, Process: handleOf(p)})
	}

	b.Stats = e.stats(c.Deltas)

	// Failed connects reference their process for this batch only: it is
	// forgotten below unless a socket still holds it.
	for i := range c.Failed {
		f := &c.Failed[i]
		p := e.ref(b, f.Owner)
		b.FailedConnects = append(b.FailedConnects, &ingestv1.FailedConnect{
			Process:        handleOf(p),
			LocalAddr:      f.LocalAddr.AsSlice(),
			LocalPort:      uint32(f.LocalPort),
			RemoteAddr:     f.RemoteAddr.AsSlice(),
			RemotePort:     uint32(f.RemotePort),
			Netns:          f.NetNS,
			Reason:         wireFailure(f.Reason),
			SynRetransmits: uint64(f.SynRetransmits),
		})
		e.unref(p)
	}

	e.udpFlows(b, c.UDP)

	e.freeSocks = e.freeSocks[:0]
	for i, cookie := range c.Closed {
		var s socket
		if at := closedOpened(c, i); at > 0 {
			s = e.opened[at-1]
		} else {
			var ok bool
			if s, ok = e.socks[cookie]; !ok {
				continue
			}
			delete(e.socks, cookie)
		}
		b.ClosedSockets = append(b.ClosedSockets, s.handle)
		e.freeSocks = append(e.freeSocks, s.handle)
		e.unref(s.proc)
	}

	for _, p := range e.orphans {
		p.forgotten = false
		if p.refs > 0 {
			continue
		}
		b.ForgottenProcesses = append(b.ForgottenProcesses, p.handle)
		e.procHandles.put(p.handle)
		delete(e.procs, p.key)
		if e.lastProc == p {
			e.lastProc = nil
		}
	}
	clear(e.orphans)
	e.orphans = e.orphans[:0]
	// Handles are reusable only after the batch that released them.
	for _, h := range e.freeSocks {
		e.sockHandles.put(h)
	}

	b.Loss = &ingestv1.Loss{
		BufferDropped:         c.Loss.BufferDropped,
		SocketCap:             c.Loss.SocketCap,
		CounterRegressions:    c.Loss.CounterRegressions,
		FailedConnectsDropped: c.Loss.FailedDropped,
		ResetsUnreported:      c.Loss.ResetsUnreported,
		UdpPeerCap:            c.Loss.UDP.PeerCap,
		UdpFlowsDropped:       c.Loss.UDP.FlowsDropped,
	}
	return b
}

// closedOpened is where in c.Opened the i-th closed socket is announced,
// plus one; 0 when not in this report (or not said by the source).
func closedOpened(c *sockets.Changes, i int) int32 {
	if i < len(c.ClosedOpened) {
		return c.ClosedOpened[i]
	}
	return 0
}

// udpFlows encodes the UDP deltas. A UDP socket holds a reference to its
// process from its first flow to its close, so that a process is announced
// once per socket lifetime rather than once per batch.
func (e *Encoder) udpFlows(b *ingestv1.Batch, deltas []sockets.UDPDelta) {
	for i := range deltas {
		d := &deltas[i]
		p := e.udpProcess(b, d.Cookie, d.Owner)
		f := &ingestv1.UdpFlow{
			Process:           handleOf(p),
			LocalAddr:         d.Local.Addr().AsSlice(),
			LocalPort:         uint32(d.Local.Port()),
			Netns:             d.NetNS,
			BytesSent:         d.BytesSent,
			BytesReceived:     d.BytesReceived,
			DatagramsSent:     d.DatagramsSent,
			DatagramsReceived: d.DatagramsReceived,
			Drops:             d.Drops,
			Cookie:            d.Cookie,
			PeerLocal:         d.PeerLocal,
			Closed:            d.Closed,
		}
		if d.Remote.IsValid() {
			f.RemoteAddr = d.Remote.Addr().AsSlice()
			f.RemotePort = uint32(d.Remote.Port())
		}
		b.UdpFlows = append(b.UdpFlows, f)
	}
	for i := range deltas {
		if d := &deltas[i]; d.Closed {
			if p, ok := e.udp[d.Cookie]; ok {
				e.unref(p)
				delete(e.udp, d.Cookie)
			}
		}
	}
}

// udpProcess returns the process of UDP socket cookie, referencing the
// process of owner o when it is a new one.
func (e *Encoder) udpProcess(b *ingestv1.Batch, cookie uint64, o probe.Owner) *process {
	cur := e.udp[cookie]
	if o.PID == 0 || (cur != nil && cur.key == keyOf(o)) {
		return cur
	}
	p := e.ref(b, o)
	if cur != nil {
		e.unref(cur)
	}
	e.udp[cookie] = p
	return p
}

// stats encodes the deltas as columns in ascending handle order.
func (e *Encoder) stats(deltas []sockets.Delta) *ingestv1.SocketStats {
	st := &ingestv1.SocketStats{}
	if len(deltas) == 0 {
		return st
	}
	// Bucket the deltas by handle: handles are dense, so this is a pass
	// over the handle range rather than a sort.
	top := e.sockHandles.next
	if cap(e.slots) < int(top)+1 {
		e.slots = make([]int32, int(top)+1)
	}
	e.slots = e.slots[:top+1]
	for i := range e.slots {
		e.slots[i] = -1
	}
	n := 0
	for i := range deltas {
		if at := deltas[i].Opened; at > 0 {
			e.slots[e.opened[at-1].handle] = int32(i)
			n++
		} else if s, ok := e.socks[deltas[i].Cookie]; ok {
			e.slots[s.handle] = int32(i)
			n++
		}
	}
	st.HandleGaps = make([]uint32, 0, n)
	st.BytesSent = make([]uint64, 0, n)
	st.BytesReceived = make([]uint64, 0, n)
	st.SegmentsSent = make([]uint64, 0, n)
	st.SegmentsReceived = make([]uint64, 0, n)
	// The rare columns (retransmits, resets) and the RTT go out only when
	// some entry of the batch has one: an empty column means all zero.
	var retrans, rst, rtt bool
	for i := range deltas {
		d := &deltas[i]
		retrans = retrans || d.Retransmits != 0
		rst = rst || d.ResetsSent|d.ResetsReceived != 0
		rtt = rtt || d.SRTT != 0
	}
	if retrans {
		st.Retransmits = make([]uint64, 0, n)
	}
	if rst {
		st.ResetsSent = make([]uint64, 0, n)
		st.ResetsReceived = make([]uint64, 0, n)
	}
	if rtt {
		st.SrttUs = make([]uint32, 0, n)
	}
	var prev uint32
	for h, i := range e.slots {
		if i < 0 {
			continue
		}
		d := &deltas[i]
		st.HandleGaps = append(st.HandleGaps, uint32(h)-prev)
		prev = uint32(h)
		st.BytesSent = append(st.BytesSent, d.BytesSent)
		st.BytesReceived = append(st.BytesReceived, d.BytesReceived)
		st.SegmentsSent = append(st.SegmentsSent, d.SegmentsSent)
		st.SegmentsReceived = append(st.SegmentsReceived, d.SegmentsReceived)
		if retrans {
			st.Retransmits = append(st.Retransmits, d.Retransmits)
		}
		if rst {
			st.ResetsSent = append(st.ResetsSent, d.ResetsSent)
			st.ResetsReceived = append(st.ResetsReceived, d.ResetsReceived)
		}
		if rtt {
			st.SrttUs = append(st.SrttUs, uint32(min(d.SRTT/time.Microsecond, math.MaxUint32)))
		}
	}
	return st
}

// ref returns the process of owner o with one more reference, announcing
// it in b if it has no handle in this epoch; nil for an unknown owner.
func (e *Encoder) ref(b *ingestv1.Batch, o probe.Owner) *process {
	if o.PID == 0 {
		return nil
	}
	k := keyOf(o)
	// Sockets come in runs of one owner (a client's connections, a
	// server's accepts): the last process found is tried first.
	p := e.lastProc
	if p == nil || p.key != k {
		p = e.procs[k]
	}
	if p == nil {
		p = &process{key: k, handle: e.procHandles.get()}
		e.procs[k] = p
		b.Processes = append(b.Processes, e.describe(p.handle, o))
	}
	p.refs++
	e.lastProc = p
	return p
}

// unref drops a reference to p; a process left without sockets is
// forgotten at the end of the batch.
func (e *Encoder) unref(p *process) {
	if p == nil {
		return
	}
	p.refs--
	if p.refs == 0 && !p.forgotten {
		p.forgotten = true
		e.orphans = append(e.orphans, p)
	}
}

// translate returns the NAT translation of socket o, nil if none.
func (e *Encoder) translate(o *sockets.Socket) *ingestv1.Translation {
	if e.nat == nil {
		return nil
	}
	tr, ok := e.nat.Translate(netip.AddrPortFrom(o.LocalAddr, o.LocalPort), netip.AddrPortFrom(o.RemoteAddr, o.RemotePort))
	if !ok {
		return nil
	}
	return &ingestv1.Translation{
		LocalAddr:  tr.Local.Addr().AsSlice(),
		LocalPort:  uint32(tr.Local.Port()),
		RemoteAddr: tr.Remote.Addr().AsSlice(),
		RemotePort: uint32(tr.Remote.Port()),
	}
}

// describe announces the process of owner o under handle h.
func (e *Encoder) describe(h uint32, o probe.Owner) *ingestv1.Process {
	wp := &ingestv1.Process{
		Handle:    h,
		Pid:       o.PID,
		Comm:      o.Comm,
		StartTime: o.StartTime,
		CgroupId:  o.CgroupID,
	}
	d, ok := e.cgroups.(Describer)
	if !ok {
		wp.Cgroup = e.cgroupPath(o)
		return wp
	}
	info := d.Describe(o.PID, o.StartTime, o.Comm)
	wp.Cgroup = info.Cgroup
	wp.Ppid = info.PPID
	wp.Executable = info.Executable
	wp.Cmdline = info.Cmdline
	wp.ContainerId = info.Container.ID
	wp.PodUid = info.Container.PodUID
	return wp
}

func (e *Encoder) cgroupPath(o probe.Owner) string {
	if e.cgroups == nil {
		return ""
	}
	path, err := e.cgroups.CgroupPath(o.PID, o.StartTime)
	if err != nil {
		return "" // exited, or the pid was reused: unknown
	}
	return path
}

// appendAddr appends the bytes of a (4 or 16, as AsSlice gives them) to
// buf and returns them as a slice of buf that appending cannot overwrite.
// buf is preallocated for IPv4 ends: an IPv6 end may move it, which leaves
// the slices already returned intact.
func appendAddr(buf []byte, a netip.Addr) (addr, rest []byte) {
	if !a.IsValid() {
		return nil, buf
	}
	n := len(buf)
	if a.Is4() {
		v := a.As4()
		buf = append(buf, v[:]...)
	} else {
		v := a.As16()
		buf = append(buf, v[:]...)
	}
	return buf[n:len(buf):len(buf)], buf
}

func handleOf(p *process) uint32 {
	if p == nil {
		return 0
	}
	return p.handle
}

func wireFailure(r probe.FailReason) ingestv1.ConnectFailure {
	switch r {
	case probe.FailRefused:
		return ingestv1.ConnectFailure_CONNECT_FAILURE_REFUSED
	case probe.FailTimeout:
		return ingestv1.ConnectFailure_CONNECT_FAILURE_TIMEOUT
	case probe.FailUnreachable:
		return ingestv1.ConnectFailure_CONNECT_FAILURE_UNREACHABLE
	}
	return ingestv1.ConnectFailure_CONNECT_FAILURE_UNSPECIFIED
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
