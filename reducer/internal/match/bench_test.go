package match

import (
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// BenchmarkApplyStats applies batches of 10k socket updates from two nodes
// whose sockets are the two ends of 10k joined connections.
func BenchmarkApplyStats(b *testing.B) {
	const n = 10000
	e, _ := newTestEngine(b, true)
	nodes := [2]*Session{openSession(b, e, "node-a", 1), openSession(b, e, "node-b", 1)}
	client := netip.MustParseAddr("10.0.0.1")
	server := netip.MustParseAddr("10.0.0.2")
	for side, s := range nodes {
		batch := Batch{Sequence: 1, Processes: []Process{{Handle: 1, Comm: []string{"client", "server"}[side]}}}
		for i := range n {
			c := netip.AddrPortFrom(client, uint16(10000+i))
			sv := netip.AddrPortFrom(server, 443)
			k := Socket{Handle: uint32(i + 1), Process: 1, Role: RoleClient, Local: c, Remote: sv, NewConnection: true}
			if side == 1 {
				k = Socket{Handle: uint32(i + 1), Process: 1, Role: RoleServer, Local: sv, Remote: c, NewConnection: true}
			}
			batch.Sockets = append(batch.Sockets, k)
		}
		if err := e.Apply(s, &batch); err != nil {
			b.Fatal(err)
		}
	}
	var batches [2]Batch
	for side := range batches {
		st := &batches[side].Stats
		for i := range n {
			st.Handles = append(st.Handles, uint32(i+1))
			st.BytesSent = append(st.BytesSent, uint64(100+side))
			st.BytesReceived = append(st.BytesReceived, uint64(101-side))
			st.SegmentsSent = append(st.SegmentsSent, 2)
			st.SegmentsReceived = append(st.SegmentsReceived, 2)
		}
	}
	seq := [2]uint64{1, 1}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		side := i & 1
		seq[side]++
		batches[side].Sequence = seq[side]
		if err := e.Apply(nodes[side], &batches[side]); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*n/b.Elapsed().Seconds(), "updates/s")
	if got := testutil.ToFloat64(e.updates); got != float64(b.N*n) {
		b.Errorf("socket updates counter %v, want %d", got, b.N*n)
	}
}
