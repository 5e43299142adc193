package stream

import (
	"math/rand/v2"
	"net/netip"
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
// each fit, carry every entry once in the order the reducer applies a
// batch's parts, and re-base each piece's stats handles; a report that
// fits goes out whole.
func TestSplitKeepsEverythingInOrder(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	b := bigBatch(50000, rnd)
	if got := split(b, proto.Size(b)); len(got) != 1 || got[0] != b {
		t.Fatalf("a batch that fits: %d pieces", len(got))
	}
	const limit = 64 << 10
	pieces := split(b, limit)
	if len(pieces) < proto.Size(b)/limit {
		t.Fatalf("%d pieces for %d bytes", len(pieces), proto.Size(b))
	}
	var joined ingestv1.Batch
	joined.Stats = &ingestv1.SocketStats{}
	var handles []uint32
	// The last part each piece holds, in the reducer's order of a batch's
	// parts; no piece may hold an earlier part than the piece before.
	stage := 0
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
		parts := []int{len(p.Processes), len(p.Sockets), len(p.Owners), len(p.GetStats().GetHandleGaps()), len(p.FailedConnects),
			len(p.UdpFlows), len(p.DnsFlows), len(p.DnsAnswers), len(p.ClosedSockets), len(p.ForgottenProcesses)}
		first := slices.IndexFunc(parts, func(n int) bool { return n > 0 })
		if first < 0 {
			t.Fatalf("piece %d is empty", i)
		}
		if first < stage {
			t.Fatalf("piece %d starts with part %d after a piece that held part %d", i, first, stage)
		}
		for j, n := range parts {
			if n > 0 {
				stage = j
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
		if st := p.GetStats(); st != nil {
			var h uint32
			for _, g := range st.HandleGaps {
				h += g
				handles = append(handles, h)
			}
			for _, col := range [][]uint64{st.Retransmits, st.ResetsSent, st.ResetsReceived} {
				if len(col) != 0 && len(col) != len(st.HandleGaps) {
					t.Fatalf("piece %d: a column of %d entries for %d handles", i, len(col), len(st.HandleGaps))
				}
			}
			joined.Stats.BytesSent = append(joined.Stats.BytesSent, st.BytesSent...)
			joined.Stats.BytesReceived = append(joined.Stats.BytesReceived, st.BytesReceived...)
			joined.Stats.SegmentsSent = append(joined.Stats.SegmentsSent, st.SegmentsSent...)
			joined.Stats.SegmentsReceived = append(joined.Stats.SegmentsReceived, st.SegmentsReceived...)
			joined.Stats.Retransmits = append(joined.Stats.Retransmits, st.Retransmits...)
			joined.Stats.SrttUs = append(joined.Stats.SrttUs, st.SrttUs...)
		}
	}
	var last uint32
	for _, h := range handles {
		joined.Stats.HandleGaps = append(joined.Stats.HandleGaps, h-last)
		last = h
	}
	joined.Time, joined.Loss = b.Time, b.Loss
	if !proto.Equal(&joined, b) {
		t.Fatal("the pieces joined differ from the report")
	}
	t.Logf("%d bytes in %d pieces of at most %d", proto.Size(b), len(pieces), limit)
}
