package stream

import (
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// bigBatch is a report after an outage: n sockets announced, counted and
// closed in one batch, with their processes and the rarer parts.
func bigBatch(n int, rnd *rand.Rand) *ingestv1.Batch {
	b := &ingestv1.Batch{Time: timestamppb.Now(), Stats: &ingestv1.SocketStats{}, Loss: &ingestv1.Loss{RingFull: 7, MapFull: 3}}
	addr := netip.MustParseAddr("198.18.0.1").AsSlice()
	for i := range n / 10 {
		b.Processes = append(b.Processes, &ingestv1.Process{Handle: uint32(i + 1), Pid: uint32(1000 + i), Comm: "worker", Cgroup: "/kubepods.slice/pod-x/cri-containerd-0123456789abcdef.scope"})
	}
	var last uint32
	for i := range n {
		h := uint32(2*i + 1 + rnd.IntN(2))
		b.Sockets = append(b.Sockets, &ingestv1.Socket{Handle: h, Process: uint32(i/10 + 1), LocalAddr: addr, LocalPort: uint32(40000 + i%20000), RemoteAddr: addr, RemotePort: 8080, Cookie: rnd.Uint64()})
		b.Stats.HandleGaps = append(b.Stats.HandleGaps, h-last)
		last = h
		b.Stats.BytesSent = append(b.Stats.BytesSent, rnd.Uint64N(1<<20))
		b.Stats.BytesReceived = append(b.Stats.BytesReceived, rnd.Uint64N(1<<20))
		b.Stats.SegmentsSent = append(b.Stats.SegmentsSent, rnd.Uint64N(1<<10))
		b.Stats.SegmentsReceived = append(b.Stats.SegmentsReceived, rnd.Uint64N(1<<10))
		b.Stats.SrttUs = append(b.Stats.SrttUs, rnd.Uint32N(1<<16))
		b.ClosedSockets = append(b.ClosedSockets, h)
	}
	b.Stats.Retransmits = make([]uint64, n)
	b.Stats.Retransmits[n/2] = 3
	for i := range n / 100 {
		b.Owners = append(b.Owners, &ingestv1.SocketOwner{Socket: b.Sockets[i].Handle, Process: 1})
		b.FailedConnects = append(b.FailedConnects, &ingestv1.FailedConnect{Process: 1, LocalAddr: addr, RemoteAddr: addr, RemotePort: 9, Reason: ingestv1.ConnectFailure_CONNECT_FAILURE_REFUSED})
		b.UdpFlows = append(b.UdpFlows, &ingestv1.UdpFlow{Process: 1, RemoteAddr: addr, RemotePort: 53})
		b.DnsFlows = append(b.DnsFlows, &ingestv1.DnsFlow{ClientAddr: addr, ServerAddr: addr, ServerPort: 53, Comm: "curl"})
		b.DnsAnswers = append(b.DnsAnswers, &ingestv1.DnsAnswer{Name: "api.example.com", Addrs: [][]byte{addr}, TtlSeconds: 30})
	}
	for i := range n / 10 {
		b.ForgottenProcesses = append(b.ForgottenProcesses, uint32(i+1))
	}
	return b
}

// TestSplitKeepsEverythingInOrder: the pieces of a report over the limit
// each fit, carry every entry once, and name only handles that are live
// where the reducer applies them (a piece's parts in the reducer's order:
// processes, sockets, owners, stats, failed connects, UDP and DNS, closed
// sockets, forgotten processes), with each piece's stats handles based on
// zero; a socket the report announces and closes is closed in its own
// piece, so the reducer never holds more of the report's sockets than one
// piece announces. A report that fits goes out whole.
func TestSplitKeepsEverythingInOrder(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	b := bigBatch(50000, rnd)
	// Three sockets announced in an earlier report: counted, owned and
	// closed in this one (odd handles above the report's).
	const before = 200001
	b.Owners = append(b.Owners, &ingestv1.SocketOwner{Socket: before, Process: 2})
	for i, h := range []uint32{before, before + 2, before + 4} {
		b.Stats.HandleGaps = append(b.Stats.HandleGaps, h-[]uint32{handleOf(b, len(b.Stats.HandleGaps)-1), before, before + 2}[i])
		b.Stats.BytesSent = append(b.Stats.BytesSent, 10)
		b.Stats.BytesReceived = append(b.Stats.BytesReceived, 20)
		b.Stats.SegmentsSent = append(b.Stats.SegmentsSent, 1)
		b.Stats.SegmentsReceived = append(b.Stats.SegmentsReceived, 1)
		b.Stats.SrttUs = append(b.Stats.SrttUs, 100)
		b.Stats.Retransmits = append(b.Stats.Retransmits, 0)
		b.ClosedSockets = append(b.ClosedSockets, h)
	}
	if got := split(b, proto.Size(b)); len(got) != 1 || got[0] != b {
		t.Fatalf("a batch that fits: %d pieces", len(got))
	}
	const limit = 64 << 10
	pieces := split(b, limit)
	if len(pieces) < proto.Size(b)/limit {
		t.Fatalf("%d pieces for %d bytes", len(pieces), proto.Size(b))
	}
	// The handles live where the reducer applies each part; the sockets
	// announced in an earlier report are live from the start.
	procs := map[uint32]bool{}
	live := map[uint32]bool{before: true, before + 2: true, before + 4: true}
	gone := map[uint32]bool{}
	known := func(what string, i int, h uint32, set map[uint32]bool) {
		t.Helper()
		if !set[h] {
			t.Fatalf("piece %d: %s names handle %d, not live there", i, what, h)
		}
	}
	var joined ingestv1.Batch
	joined.Stats = &ingestv1.SocketStats{}
	var handles []uint32
	entries := map[uint32][][4]uint64{}
	mostLive, mostAnnounced := 0, 0
	for i, p := range pieces {
		if n := proto.Size(p); n > limit {
			t.Fatalf("piece %d: %d bytes, limit %d", i, n, limit)
		}
		if !proto.Equal(p.GetTime(), b.GetTime()) || !proto.Equal(p.GetLoss(), b.GetLoss()) {
			t.Fatalf("piece %d: time %v loss %v", i, p.GetTime(), p.GetLoss())
		}
		if last := i == len(pieces)-1; p.GetContinued() == last {
			t.Fatalf("piece %d of %d: continued = %v", i+1, len(pieces), p.GetContinued())
		}
		for _, pr := range p.Processes {
			procs[pr.Handle] = true
		}
		for _, k := range p.Sockets {
			if live[k.Handle] || gone[k.Handle] {
				t.Fatalf("piece %d: socket handle %d announced again", i, k.Handle)
			}
			known("a socket", i, k.Process, procs)
			live[k.Handle] = true
		}
		mostLive, mostAnnounced = max(mostLive, len(live)), max(mostAnnounced, len(p.Sockets))
		for _, o := range p.Owners {
			known("an owner", i, o.Socket, live)
			known("an owner", i, o.Process, procs)
		}
		var h uint32
		for j, g := range p.GetStats().GetHandleGaps() {
			h += g
			known("a stats entry", i, h, live)
			handles = append(handles, h)
			st := p.GetStats()
			entries[h] = append(entries[h], [4]uint64{st.BytesSent[j], st.BytesReceived[j], st.SegmentsSent[j], uint64(st.SrttUs[j])})
		}
		for _, f := range p.FailedConnects {
			known("a failed connect", i, f.Process, procs)
		}
		for _, h := range p.ClosedSockets {
			known("a close", i, h, live)
			delete(live, h)
			gone[h] = true
		}
		for _, h := range p.ForgottenProcesses {
			known("a forgotten process", i, h, procs)
			delete(procs, h)
		}
		if st := p.GetStats(); st != nil {
			for _, col := range [][]uint64{st.Retransmits, st.ResetsSent, st.ResetsReceived} {
				if len(col) != 0 && len(col) != len(st.HandleGaps) {
					t.Fatalf("piece %d: a column of %d entries for %d handles", i, len(col), len(st.HandleGaps))
				}
			}
		}
		joined.Processes = append(joined.Processes, p.Processes...)
		joined.Sockets = append(joined.Sockets, p.Sockets...)
		joined.Owners = append(joined.Owners, p.Owners...)
		joined.FailedConnects = append(joined.FailedConnects, p.FailedConnects...)
		joined.UdpFlows = append(joined.UdpFlows, p.UdpFlows...)
		joined.DnsFlows = append(joined.DnsFlows, p.DnsFlows...)
		joined.DnsAnswers = append(joined.DnsAnswers, p.DnsAnswers...)
		joined.ClosedSockets = append(joined.ClosedSockets, p.ClosedSockets...)
		joined.ForgottenProcesses = append(joined.ForgottenProcesses, p.ForgottenProcesses...)
	}
	if len(live) != 0 || len(procs) != 0 {
		t.Fatalf("after the last piece %d sockets and %d processes are live, want none", len(live), len(procs))
	}
	// Every socket the report announces closes in it: the reducer holds
	// at most one piece's worth of them, and the earlier three.
	if mostLive > mostAnnounced+3 {
		t.Errorf("up to %d sockets live at once, for at most %d announced in a piece", mostLive, mostAnnounced)
	}
	// The pieces carry every entry once: the same entries as the report,
	// in the report's order for the ordered parts.
	if !sameSet(handles, statsHandles(b)) {
		t.Fatal("the pieces' stats handles differ from the report's")
	}
	for i, h := range statsHandles(b) {
		want := [4]uint64{b.Stats.BytesSent[i], b.Stats.BytesReceived[i], b.Stats.SegmentsSent[i], uint64(b.Stats.SrttUs[i])}
		if got := entries[h]; len(got) != 1 || got[0] != want {
			t.Fatalf("stats of handle %d: %v, want [%v]", h, got, want)
		}
	}
	for _, part := range []struct {
		name      string
		got, want any
	}{
		{"processes", joined.Processes, b.Processes},
		{"sockets", joined.Sockets, b.Sockets},
		{"failed connects", joined.FailedConnects, b.FailedConnects},
		{"UDP flows", joined.UdpFlows, b.UdpFlows},
		{"DNS flows", joined.DnsFlows, b.DnsFlows},
		{"DNS answers", joined.DnsAnswers, b.DnsAnswers},
		{"forgotten processes", joined.ForgottenProcesses, b.ForgottenProcesses},
	} {
		if !reflect.DeepEqual(part.got, part.want) {
			t.Errorf("%s differ from the report's", part.name)
		}
	}
	if !sameSet(joined.ClosedSockets, b.ClosedSockets) {
		t.Error("closed sockets differ from the report's")
	}
	if len(joined.Owners) != len(b.Owners) {
		t.Errorf("%d owners, want %d", len(joined.Owners), len(b.Owners))
	}
	t.Logf("%d bytes in %d pieces of at most %d; at most %d of the report's sockets live at once", proto.Size(b), len(pieces), limit, mostLive)
}

// handleOf returns the handle of stats entry i of b (0 before the first).
func handleOf(b *ingestv1.Batch, i int) uint32 {
	var h uint32
	for _, g := range b.Stats.HandleGaps[:i+1] {
		h += g
	}
	return h
}

// statsHandles returns the handles of b's stats entries.
func statsHandles(b *ingestv1.Batch) []uint32 {
	var out []uint32
	var h uint32
	for _, g := range b.Stats.HandleGaps {
		h += g
		out = append(out, h)
	}
	return out
}

// sameSet reports whether a and b hold the same handles.
func sameSet(a, b []uint32) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}
