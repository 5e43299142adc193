package ingest

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/aggregate"
	"github.com/weir-project/weir/reducer/internal/match"
	"github.com/weir-project/weir/reducer/internal/resolve"
)

// FuzzDecodeRequest feeds arbitrary bytes to the wire decoding of a request:
// it must never panic, and a batch it accepts must have consistent stats.
func FuzzDecodeRequest(f *testing.F) {
	valid := []*ingestv1.StreamRequest{
		hello("node-a", 1),
		batch(&ingestv1.Batch{Sequence: 1}),
		batch(&ingestv1.Batch{
			Sequence:  2,
			Processes: []*ingestv1.Process{{Handle: 1, Pid: 42, Comm: "curl", Cgroup: "/system.slice"}},
			Sockets: []*ingestv1.Socket{
				{Handle: 1, Process: 1, Role: ingestv1.Role_ROLE_CLIENT, LocalAddr: []byte{10, 0, 0, 1}, LocalPort: 40000,
					RemoteAddr: []byte{10, 0, 0, 2}, RemotePort: 80, Netns: 4026531840, NewConnection: true},
				{Handle: 2, Process: 0, Role: ingestv1.Role_ROLE_SERVER, LocalAddr: make([]byte, 16), LocalPort: 443,
					RemoteAddr: append(make([]byte, 15), 1), RemotePort: 50000},
			},
			Owners:             []*ingestv1.SocketOwner{{Socket: 2, Process: 1}},
			Stats:              encodeStats([]uint32{0, 1, 2, 1 << 20}, []uint64{1, 2, 3, 4}, []uint64{5, 6, 7, 8}, []uint64{1, 1, 1, 1}, []uint64{2, 2, 2, 2}),
			ClosedSockets:      []uint32{1},
			ForgottenProcesses: []uint32{1},
			Loss:               &ingestv1.Loss{RingFull: 1},
		}),
	}
	for _, req := range valid {
		wire, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire)
	}
	invalid := []*ingestv1.StreamRequest{
		// A column shorter than the handle gaps.
		batch(&ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1, 2}, BytesSent: []uint64{1}}}),
		// A gap of 0 after the first handle.
		batch(&ingestv1.Batch{Stats: encodeStats([]uint32{3, 3}, []uint64{1, 1}, []uint64{1, 1}, []uint64{1, 1}, []uint64{1, 1})}),
		// Handles beyond 32 bits.
		batch(&ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1<<32 - 1, 1}, BytesSent: []uint64{1, 1},
			BytesReceived: []uint64{1, 1}, SegmentsSent: []uint64{1, 1}, SegmentsReceived: []uint64{1, 1}}}),
		// A 3-byte address, a port above 65535, an unknown role.
		batch(&ingestv1.Batch{Sockets: []*ingestv1.Socket{{Handle: 1, LocalAddr: []byte{1, 2, 3}, RemoteAddr: []byte{1, 2, 3, 4}}}}),
		batch(&ingestv1.Batch{Sockets: []*ingestv1.Socket{{Handle: 1, LocalAddr: []byte{1, 2, 3, 4}, RemoteAddr: []byte{1, 2, 3, 4}, RemotePort: 1 << 16}}}),
		batch(&ingestv1.Batch{Sockets: []*ingestv1.Socket{{Handle: 1, LocalAddr: []byte{1, 2, 3, 4}, RemoteAddr: []byte{1, 2, 3, 4}, Role: 7}}}),
	}
	for _, req := range invalid {
		wire, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire)
	}
	f.Add([]byte{0x12, 0x05, 0x08})             // truncated batch
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f}) // bad tag

	// dirty holds a decoded batch, so that every decode also checks that
	// decoding into a used batch gives the same result as into a new one.
	var dirty match.Batch
	if err := DecodeBatch(&dirty, valid[2].GetBatch()); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, wire []byte) {
		var req ingestv1.StreamRequest
		if err := proto.Unmarshal(wire, &req); err != nil {
			return
		}
		in := req.GetBatch()
		if in == nil {
			return
		}
		var fresh match.Batch
		err := DecodeBatch(&fresh, in)
		reused := dirty
		reused.Processes = slices.Clone(dirty.Processes)
		reused.Sockets = slices.Clone(dirty.Sockets)
		reused.Stats.Handles = slices.Clone(dirty.Stats.Handles)
		errReused := DecodeBatch(&reused, in)
		if (err == nil) != (errReused == nil) {
			t.Fatalf("decode into a new batch: %v; into a used one: %v", err, errReused)
		}
		if err != nil {
			return
		}
		checkDecoded(t, &fresh, in)
		checkDecoded(t, &reused, in)
	})
}

// checkDecoded checks a batch that DecodeBatch accepted against its input.
func checkDecoded(t *testing.T, b *match.Batch, in *ingestv1.Batch) {
	t.Helper()
	if b.Sequence != in.GetSequence() {
		t.Errorf("sequence %d, want %d", b.Sequence, in.GetSequence())
	}
	if len(b.Processes) != len(in.GetProcesses()) || len(b.Sockets) != len(in.GetSockets()) ||
		len(b.Owners) != len(in.GetOwners()) || !slices.Equal(b.Closed, in.GetClosedSockets()) ||
		!slices.Equal(b.Forgotten, in.GetForgottenProcesses()) {
		t.Errorf("decoded %d processes, %d sockets, %d owners, closed %v, forgotten %v from %d, %d, %d, %v, %v",
			len(b.Processes), len(b.Sockets), len(b.Owners), b.Closed, b.Forgotten,
			len(in.GetProcesses()), len(in.GetSockets()), len(in.GetOwners()), in.GetClosedSockets(), in.GetForgottenProcesses())
	}
	for i, s := range b.Sockets {
		if !s.Local.IsValid() || !s.Remote.IsValid() || s.Local.Addr().Is4In6() || s.Remote.Addr().Is4In6() {
			t.Errorf("socket %d: endpoints %v %v", i, s.Local, s.Remote)
		}
		if s.Role > match.RoleServer {
			t.Errorf("socket %d: role %d", i, s.Role)
		}
	}
	st := &b.Stats
	n := len(st.Handles)
	if n != len(in.GetStats().GetHandleGaps()) {
		t.Errorf("%d handles from %d gaps", n, len(in.GetStats().GetHandleGaps()))
	}
	for _, c := range [][]uint64{st.BytesSent, st.BytesReceived, st.SegmentsSent, st.SegmentsReceived} {
		if len(c) != n {
			t.Fatalf("column of %d entries for %d handles", len(c), n)
		}
	}
	for i := 1; i < n; i++ {
		if st.Handles[i] <= st.Handles[i-1] {
			t.Fatalf("handles not strictly ascending at %d: %v", i, st.Handles)
		}
	}
}

// FuzzEngine drives one node's session of the match engine with short
// sequences of small batches built from the fuzz input, decoded as the
// server decodes them. Apply may refuse a batch but must never panic; it
// must refuse exactly the batches with bad handles, a refused batch must
// change nothing, and the edge table must stay consistent.
func FuzzEngine(f *testing.F) {
	f.Add([]byte{})
	// A client and its server on the same node, traffic both ways, an owner
	// change, then closes and forgets.
	f.Add(encodeSteps(
		fuzzStep{
			procs: [][3]byte{{1, 100, 1}, {2, 200, 2}},
			socks: [][9]byte{{1, 1, 1, 0, 1, 1, 0, 0, 1}, {2, 2, 2, 1, 0, 0, 1, 0, 0}},
			stats: [][5]byte{{1, 9, 5, 1, 1}, {1, 5, 9, 1, 1}},
		},
		fuzzStep{owners: [][2]byte{{2, 1}}, stats: [][5]byte{{1, 3, 0, 1, 0}}},
		fuzzStep{closed: []byte{1}, forgotten: []byte{1}},
		fuzzStep{stats: [][5]byte{{2, 4, 4, 1, 1}}, closed: []byte{2}, forgotten: []byte{2}},
	))
	// Refusals (a process announced twice, stats of an unknown socket, a
	// socket closed twice), then a loopback pair, a clock step past the
	// series TTL and a new epoch.
	f.Add(encodeSteps(
		fuzzStep{procs: [][3]byte{{3, 1, 1}, {3, 1, 1}}},
		fuzzStep{stats: [][5]byte{{5, 1, 1, 1, 1}}},
		fuzzStep{
			procs: [][3]byte{{3, 1, 1}},
			socks: [][9]byte{{1, 3, 0, 2, 1, 2, 2, 0, 1}, {2, 0, 0, 2, 2, 2, 1, 0, 0}},
			stats: [][5]byte{{1, 7, 7, 1, 1}},
		},
		fuzzStep{closed: []byte{1, 1}},
		fuzzStep{op: 6, clock: 3},
		fuzzStep{op: 7},
		fuzzStep{procs: [][3]byte{{3, 1, 2}}},
	))
	// An IPv4-mapped end joining its IPv4 peer, a third socket claiming the
	// same endpoints, a self-connected socket, bad wire values (an unknown
	// role, a 3-byte address, a port above 65535) and closes after a clock
	// step.
	f.Add(encodeSteps(
		fuzzStep{
			procs: [][3]byte{{1, 1, 1}},
			socks: [][9]byte{{1, 1, 1, 3, 1, 1, 0, 0, 1}, {2, 0, 2, 1, 0, 0, 1, 0, 1}, {3, 1, 1, 0, 1, 1, 0, 0, 1}},
			stats: [][5]byte{{1, 2, 2, 1, 1}, {1, 2, 2, 1, 1}, {1, 2, 2, 1, 1}},
		},
		fuzzStep{socks: [][9]byte{{4, 0, 0, 1, 2, 1, 2, 1, 0}}, stats: [][5]byte{{1, 1, 1, 1, 1}, {3, 1, 1, 1, 1}}},
		fuzzStep{socks: [][9]byte{{5, 0, 3, 0, 0, 1, 0, 0, 0}}},
		fuzzStep{socks: [][9]byte{{5, 0, 0, 5, 0, 1, 0, 0, 0}}},
		fuzzStep{socks: [][9]byte{{5, 0, 0, 0, 3, 1, 0, 0, 0}}},
		fuzzStep{op: 6, clock: 1},
		fuzzStep{closed: []byte{1, 2}},
		fuzzStep{closed: []byte{3, 4}},
	))
	f.Fuzz(func(t *testing.T, data []byte) {
		ef := newEngineFuzz(t)
		r := &fuzzReader{data: data}
		for step := 0; step < 16 && !r.done(); step++ {
			ef.step(t, r)
		}
	})
}

// fuzzReader hands out the fuzz input a byte at a time, then zeros.
type fuzzReader struct {
	data []byte
	i    int
}

func (r *fuzzReader) done() bool { return r.i >= len(r.data) }

func (r *fuzzReader) next() byte {
	if r.done() {
		return 0
	}
	b := r.data[r.i]
	r.i++
	return b
}

// small returns a number below n.
func (r *fuzzReader) small(n int) int { return int(r.next()) % n }

// fuzzStep is one step of FuzzEngine's input: a batch (op 0), a clock step
// of clock*2 minutes (op 6) or a new epoch (op 7). The batch's entries hold
// the bytes that engineFuzz.readBatch reads, in its order.
type fuzzStep struct {
	op, clock         byte
	procs             [][3]byte // handle, pid, comm
	socks             [][9]byte // handle, process, role, local addr, port, remote addr, port, netns, new
	owners            [][2]byte // socket, process
	stats             [][5]byte // handle gap, bytes sent, received, segments sent, received
	closed, forgotten []byte
}

// encodeSteps writes a seed for FuzzEngine.
func encodeSteps(steps ...fuzzStep) []byte {
	var out []byte
	for _, s := range steps {
		out = append(out, s.op)
		switch s.op {
		case 6:
			out = append(out, s.clock)
			continue
		case 7:
			continue
		}
		out = append(out, byte(len(s.procs)))
		for _, p := range s.procs {
			out = append(out, p[:]...)
		}
		out = append(out, byte(len(s.socks)))
		for _, k := range s.socks {
			out = append(out, k[:]...)
		}
		out = append(out, byte(len(s.owners)))
		for _, o := range s.owners {
			out = append(out, o[:]...)
		}
		out = append(out, byte(len(s.stats)))
		for _, st := range s.stats {
			out = append(out, st[:]...)
		}
		out = append(out, byte(len(s.closed)))
		out = append(out, s.closed...)
		out = append(out, byte(len(s.forgotten)))
		out = append(out, s.forgotten...)
	}
	return out
}

// engineFuzz is one engine under fuzzing, with a model of the handles that
// its session should hold.
type engineFuzz struct {
	engine *match.Engine
	now    time.Time
	sess   *match.Session
	epoch  uint64
	seq    uint64
	old    []*match.Session // replaced sessions
	procs  map[uint32]bool
	socks  map[uint32]bool
	vacant int // sockets of replaced sessions not yet announced again
}

func newEngineFuzz(t *testing.T) *engineFuzz {
	ef := &engineFuzz{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	e, err := match.New(match.Config{
		SeriesTTL:  5 * time.Minute,
		SessionTTL: 2 * time.Minute,
		Loopback:   true,
		Now:        func() time.Time { return ef.now },
	}, prometheus.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ef.engine = e
	ef.open(t)
	return ef
}

// open starts the node's next epoch, which replaces the current session.
func (ef *engineFuzz) open(t *testing.T) {
	if ef.sess != nil {
		ef.old = append(ef.old, ef.sess)
		// The old session's sockets stay vacant ends of their flows
		// until the new session's first batch announces them again.
		ef.vacant += len(ef.socks)
	}
	ef.epoch++
	s, err := ef.engine.Open(match.Hello{Node: "node-a", BootID: "boot", Epoch: ef.epoch}, nil)
	if err != nil {
		t.Fatalf("open epoch %d: %v", ef.epoch, err)
	}
	ef.sess, ef.seq = s, 0
	ef.procs, ef.socks = make(map[uint32]bool), make(map[uint32]bool)
}

// Small value sets, so that handles collide and sockets pair up.
var (
	fuzzAddrs = [][]byte{
		{10, 0, 0, 1},
		{10, 0, 0, 2},
		{127, 0, 0, 1},
		{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1}, // 10.0.0.1, mapped
		{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},        // ::1
		{10, 0, 1}, // invalid
	}
	fuzzPorts = []uint32{80, 40000, 40001, 1 << 16}
	fuzzComms = []string{"", "curl", "nginx"}
)

// step reads one step from r: a byte whose value mod 8 picks a batch
// (0-5), a clock step (6) or a new epoch (7).
func (ef *engineFuzz) step(t *testing.T, r *fuzzReader) {
	switch r.small(8) {
	case 6:
		step := r.small(4)
		ef.now = ef.now.Add(time.Duration(step) * 2 * time.Minute)
		// Metadata names, renames or forgets an address and a cgroup
		// meanwhile: the flows they touch move at the sweep.
		sink := ef.engine.Metadata(resolve.RankPod)
		for _, k := range []resolve.Key{resolve.IPKey(netip.AddrFrom4([4]byte{10, 0, 0, 2})), resolve.CgroupKey("node-a", 1)} {
			if step == 0 {
				sink.Delete(k)
			} else {
				sink.Put(k, aggregate.Workload{Name: fmt.Sprint("pod-", step), Kind: "pod"})
			}
		}
		ef.engine.Sweep()
		ef.check(t, nil)
	case 7:
		before := ef.snapshot(t)
		ef.open(t)
		for _, s := range ef.old {
			ef.apply(t, s, &ingestv1.Batch{Sequence: 1}, false)
		}
		after := ef.check(t, nil)
		// The replaced session's connections are gone, its counts stay.
		for k, s := range after {
			if b, ok := before[k]; ok && (s.Bytes < b.Bytes || s.Packets < b.Packets || s.Opened < b.Opened) {
				t.Fatalf("edge %v went back from %+v to %+v when the session was replaced", k, b, s)
			}
		}
	default:
		ef.seq++
		ef.apply(t, ef.sess, ef.readBatch(r), true)
	}
}

// readBatch builds a wire batch of up to three entries in every part.
func (ef *engineFuzz) readBatch(r *fuzzReader) *ingestv1.Batch {
	b := &ingestv1.Batch{Sequence: ef.seq}
	for range r.small(4) {
		b.Processes = append(b.Processes, &ingestv1.Process{
			Handle: uint32(r.small(4)), Pid: uint32(r.next()), Comm: fuzzComms[r.small(len(fuzzComms))],
			CgroupId: 1,
		})
	}
	for range r.small(4) {
		b.Sockets = append(b.Sockets, &ingestv1.Socket{
			Handle:        uint32(r.small(8)),
			Process:       uint32(r.small(4)),
			Role:          ingestv1.Role(r.small(4)), // 3 is unknown
			LocalAddr:     fuzzAddrs[r.small(len(fuzzAddrs))],
			LocalPort:     fuzzPorts[r.small(len(fuzzPorts))],
			RemoteAddr:    fuzzAddrs[r.small(len(fuzzAddrs))],
			RemotePort:    fuzzPorts[r.small(len(fuzzPorts))],
			Netns:         uint32(r.small(2)),
			NewConnection: r.small(2) == 1,
		})
	}
	for range r.small(3) {
		b.Owners = append(b.Owners, &ingestv1.SocketOwner{Socket: uint32(r.small(8)), Process: uint32(r.small(4))})
	}
	if n := r.small(4); n > 0 {
		st := &ingestv1.SocketStats{}
		for range n {
			st.HandleGaps = append(st.HandleGaps, uint32(r.small(4))) // 0 after the first is invalid
			st.BytesSent = append(st.BytesSent, uint64(r.next()))
			st.BytesReceived = append(st.BytesReceived, uint64(r.next()))
			st.SegmentsSent = append(st.SegmentsSent, uint64(r.small(4)))
			st.SegmentsReceived = append(st.SegmentsReceived, uint64(r.small(4)))
		}
		b.Stats = st
	}
	for range r.small(3) {
		b.ClosedSockets = append(b.ClosedSockets, uint32(r.small(8)))
	}
	for range r.small(3) {
		b.ForgottenProcesses = append(b.ForgottenProcesses, uint32(r.small(4)))
	}
	return b
}

// apply decodes in as the server does and applies it to s. The engine must
// accept it exactly when the model of s's handles says it is valid.
func (ef *engineFuzz) apply(t *testing.T, s *match.Session, in *ingestv1.Batch, current bool) {
	var b match.Batch
	if err := DecodeBatch(&b, in); err != nil {
		return // the stream would end here
	}
	before := ef.snapshot(t)
	err := ef.engine.Apply(s, &b)
	var refusal *match.Error
	if err != nil && (!errors.As(err, &refusal) || refusal.Reason == "") {
		t.Fatalf("batch %d: error without a reason: %v", in.GetSequence(), err)
	}
	wantOK := current && ef.valid(&b)
	if (err == nil) != wantOK {
		t.Fatalf("batch %+v: Apply error %v, want valid=%v (processes %v, sockets %v)", in, err, wantOK, ef.procs, ef.socks)
	}
	if err != nil {
		after := ef.snapshot(t)
		if !maps.Equal(before, after) {
			t.Fatalf("refused batch %d changed the edges:\nbefore %v\nafter  %v", in.GetSequence(), before, after)
		}
		ef.check(t, nil)
		return
	}
	ef.commit(&b)
	ef.vacant = 0
	after := ef.check(t, &b)
	var sent, segs uint64
	for i := range b.Stats.Handles {
		sent += b.Stats.BytesSent[i] + b.Stats.BytesReceived[i]
		segs += b.Stats.SegmentsSent[i] + b.Stats.SegmentsReceived[i]
	}
	var opens uint64
	for _, sk := range b.Sockets {
		if sk.NewConnection {
			opens++
		}
	}
	var dBytes, dSegs, dOpened uint64
	for k, a := range after {
		was, ok := before[k]
		if ok && (a.Bytes < was.Bytes || a.Packets < was.Packets || a.Opened < was.Opened) {
			t.Fatalf("edge %v went back from %+v to %+v", k, was, a)
		}
		dBytes += a.Bytes - was.Bytes
		dSegs += a.Packets - was.Packets
		dOpened += a.Opened - was.Opened
	}
	for k := range before {
		if _, ok := after[k]; !ok {
			t.Fatalf("edge %v vanished without a clock step", k)
		}
	}
	if dBytes > sent || dSegs > segs || dOpened > opens {
		t.Fatalf("batch %d counted %d bytes, %d segments, %d opens from %d, %d, %d reported",
			in.GetSequence(), dBytes, dSegs, dOpened, sent, segs, opens)
	}
}

// valid reports whether every handle of b is acceptable to the session as
// the model holds it.
func (ef *engineFuzz) valid(b *match.Batch) bool {
	newProcs, newSocks := map[uint32]bool{}, map[uint32]bool{}
	proc := func(h uint32) bool { return h == 0 || ef.procs[h] || newProcs[h] }
	sock := func(h uint32) bool { return ef.socks[h] || newSocks[h] }
	for _, p := range b.Processes {
		if p.Handle == 0 || ef.procs[p.Handle] || newProcs[p.Handle] {
			return false
		}
		newProcs[p.Handle] = true
	}
	for _, s := range b.Sockets {
		if sock(s.Handle) || !proc(s.Process) {
			return false
		}
		newSocks[s.Handle] = true
	}
	for _, o := range b.Owners {
		if !sock(o.Socket) || !proc(o.Process) {
			return false
		}
	}
	for _, h := range b.Stats.Handles {
		if !sock(h) {
			return false
		}
	}
	seen := map[uint32]bool{}
	for _, h := range b.Closed {
		if !sock(h) || seen[h] {
			return false
		}
		seen[h] = true
	}
	clear(seen)
	for _, h := range b.Forgotten {
		if h == 0 || !proc(h) || seen[h] {
			return false
		}
		seen[h] = true
	}
	return true
}

// commit applies an accepted batch to the model.
func (ef *engineFuzz) commit(b *match.Batch) {
	for _, p := range b.Processes {
		ef.procs[p.Handle] = true
	}
	for _, s := range b.Sockets {
		ef.socks[s.Handle] = true
	}
	for _, h := range b.Closed {
		delete(ef.socks, h)
	}
	for _, h := range b.Forgotten {
		delete(ef.procs, h)
	}
}

// counts are the values of one edge.
type counts struct {
	Bytes, Packets, Opened uint64
	Active                 int64
}

func (ef *engineFuzz) snapshot(t *testing.T) map[aggregate.Key]counts {
	out := make(map[aggregate.Key]counts)
	for _, s := range ef.engine.Snapshot(nil) {
		if _, ok := out[s.Key]; ok {
			t.Fatalf("two series for edge %v", s.Key)
		}
		out[s.Key] = counts{
			Bytes:   s.Value(aggregate.TCPBytes),
			Packets: s.Value(aggregate.TCPPackets),
			Opened:  s.Value(aggregate.TCPConnectionsOpened),
			Active:  int64(s.Value(aggregate.TCPActiveConnections)),
		}
	}
	return out
}

// check checks what the engine shows from outside against the model and
// returns the edge table.
func (ef *engineFuzz) check(t *testing.T, b *match.Batch) map[aggregate.Key]counts {
	t.Helper()
	snap := ef.snapshot(t)
	sockets, flows, edges := ef.engine.Counts()
	if sockets != len(ef.socks) {
		t.Fatalf("after batch %+v: %d sockets, the model holds %v", b, sockets, ef.socks)
	}
	if flows < 0 || flows > sockets+ef.vacant || edges != len(snap) {
		t.Fatalf("%d sockets, %d flows, %d edges, %d series", sockets, flows, edges, len(snap))
	}
	// Every flow is active on exactly one edge.
	var active int64
	for k, s := range snap {
		if s.Active < 0 {
			t.Fatalf("edge %v: active %d", k, s.Active)
		}
		active += s.Active
	}
	if active != int64(flows) {
		t.Fatalf("%d active connections on the edges, %d flows: %v", active, flows, snap)
	}
	return snap
}
