package ingest

import (
	"net/netip"
	"testing"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/match"
)

// TestDecodeHealthAndUDP: the optional stats columns are empty or full,
// failed connects and UDP flows decode with their addresses (a UDP flow
// without a remote address is the socket's other peers).
func TestDecodeHealthAndUDP(t *testing.T) {
	v4 := []byte{10, 0, 0, 1}
	full := &ingestv1.Batch{
		Sequence: 1,
		Stats: &ingestv1.SocketStats{
			HandleGaps: []uint32{1, 1}, BytesSent: []uint64{1, 2}, BytesReceived: []uint64{0, 0},
			SegmentsSent: []uint64{1, 1}, SegmentsReceived: []uint64{0, 0},
			Retransmits: []uint64{0, 4}, SrttUs: []uint32{100, 200},
		},
		FailedConnects: []*ingestv1.FailedConnect{{Process: 1, LocalAddr: v4, LocalPort: 1000, RemoteAddr: v4, RemotePort: 80,
			Reason: ingestv1.ConnectFailure_CONNECT_FAILURE_TIMEOUT, SynRetransmits: 2}},
		UdpFlows: []*ingestv1.UdpFlow{
			{Process: 1, LocalAddr: v4, LocalPort: 53, RemoteAddr: v4, RemotePort: 5000, BytesSent: 9, PeerLocal: true},
			{Process: 1, LocalAddr: v4, LocalPort: 53, BytesSent: 3},
		},
	}
	var b match.Batch
	if err := DecodeBatch(&b, full); err != nil {
		t.Fatal(err)
	}
	if len(b.Stats.Retransmits) != 2 || b.Stats.Retransmits[1] != 4 || len(b.Stats.ResetsSent) != 0 || b.Stats.SrttUs[1] != 200 {
		t.Errorf("stats %+v", b.Stats)
	}
	if f := b.Failed; len(f) != 1 || f[0].Reason != match.ConnectTimeout || f[0].SynRetransmits != 2 || f[0].Remote != netip.MustParseAddrPort("10.0.0.1:80") {
		t.Errorf("failed %+v", f)
	}
	if u := b.UDP; len(u) != 2 || !u[0].PeerLocal || u[0].Remote.Port() != 5000 || u[1].Remote.IsValid() {
		t.Errorf("udp %+v", u)
	}
	for _, bad := range []*ingestv1.Batch{
		{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1, 1}, BytesSent: []uint64{1, 2}, BytesReceived: []uint64{0, 0},
			SegmentsSent: []uint64{1, 1}, SegmentsReceived: []uint64{0, 0}, ResetsReceived: []uint64{1}}},
		{FailedConnects: []*ingestv1.FailedConnect{{LocalAddr: []byte{1, 2, 3}}}},
		{UdpFlows: []*ingestv1.UdpFlow{{LocalAddr: v4, RemoteAddr: []byte{1}}}},
	} {
		if err := DecodeBatch(&b, bad); err == nil {
			t.Errorf("accepted %v", bad)
		}
	}
}
