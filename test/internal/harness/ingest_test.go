package harness

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

func TestIngestStub(t *testing.T) {
	stub := StartIngestStub(t)
	conn, err := grpc.NewClient(stub.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := ingestv1.NewIngestServiceClient(conn).Stream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send := func(r *ingestv1.StreamRequest) {
		t.Helper()
		if err := st.Send(r); err != nil {
			t.Fatal(err)
		}
	}
	recv := func() *ingestv1.StreamResponse {
		t.Helper()
		r, err := st.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Hello{Hello: &ingestv1.Hello{ProtocolVersion: 1, NodeName: "n", Capabilities: []string{"x", "compression_zstd"}}}})
	if w := recv().GetWelcome(); w.GetProtocolVersion() != 1 || len(w.GetCapabilities()) != 1 || w.GetCapabilities()[0] != "x" {
		t.Fatalf("welcome = %v", w)
	}
	v4 := []byte{198, 18, 0, 1}
	batch := func(seq uint64, b *ingestv1.Batch) {
		t.Helper()
		b.Sequence = seq
		send(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: b}})
		if a := recv().GetAck(); a.GetSequence() != seq {
			t.Fatalf("ack = %v, want %d", a, seq)
		}
	}
	batch(1, &ingestv1.Batch{
		Processes: []*ingestv1.Process{{Handle: 1, Comm: "flowcli"}},
		Sockets: []*ingestv1.Socket{
			{Handle: 3, Process: 1, LocalAddr: v4, LocalPort: 1000, RemoteAddr: v4, RemotePort: 80},
			{Handle: 5, Process: 1, LocalAddr: v4, LocalPort: 1001, RemoteAddr: v4, RemotePort: 80},
		},
		Stats: &ingestv1.SocketStats{HandleGaps: []uint32{3, 2}, BytesSent: []uint64{10, 20},
			BytesReceived: []uint64{1, 2}, SegmentsSent: []uint64{1, 1}, SegmentsReceived: []uint64{1, 1}},
	})
	batch(2, &ingestv1.Batch{
		Stats: &ingestv1.SocketStats{HandleGaps: []uint32{5}, BytesSent: []uint64{7},
			BytesReceived: []uint64{0}, SegmentsSent: []uint64{1}, SegmentsReceived: []uint64{0}},
		ClosedSockets: []uint32{3},
	})
	if err := st.CloseSend(); err != nil {
		t.Fatal(err)
	}

	got := stub.Sockets(func(StubSocket) bool { return true })
	if len(got) != 2 {
		t.Fatalf("sockets = %+v", got)
	}
	want := []StubSocket{
		{Session: 1, Handle: 3, Local: netip.MustParseAddrPort("198.18.0.1:1000"), Remote: netip.MustParseAddrPort("198.18.0.1:80"),
			Comm: "flowcli", BytesSent: 10, BytesReceived: 1, SegmentsSent: 1, SegmentsReceived: 1, Updates: 1, Closed: true},
		{Session: 1, Handle: 5, Local: netip.MustParseAddrPort("198.18.0.1:1001"), Remote: netip.MustParseAddrPort("198.18.0.1:80"),
			Comm: "flowcli", BytesSent: 27, BytesReceived: 2, SegmentsSent: 2, SegmentsReceived: 1, Updates: 2},
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("socket %d = %+v, want %+v", i, got[i], want[i])
		}
	}
	if n, _ := stub.Batches(); n != 2 {
		t.Errorf("batches = %d, want 2", n)
	}
}

func TestSub(t *testing.T) {
	before := []ProgStats{{ID: 1, Name: "a", RunTime: 100, RunCount: 1}, {ID: 2, Name: "b", RunTime: 5, RunCount: 5}}
	after := []ProgStats{
		{ID: 1, Name: "a", RunTime: 400, RunCount: 4},
		{ID: 2, Name: "b", RunTime: 5, RunCount: 5},
		{ID: 3, Name: "a", RunTime: 50, RunCount: 2}, // loaded meanwhile: all of it counts
		{ID: 4, Name: "it", Iter: true, RunTime: 9, RunCount: 1},
	}
	got := Sub(after, before)
	want := map[string]ProgDelta{
		"a":  {Name: "a", RunTime: 350, RunCount: 5},
		"b":  {Name: "b"},
		"it": {Name: "it", Iter: true, RunTime: 9, RunCount: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("Sub = %+v", got)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("Sub[%q] = %+v, want %+v", k, got[k], w)
		}
	}
}
