package ingest

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/match"
)

// encodeStats is the collector's side of the stats columns: ascending
// handles become gaps from the previous handle.
func encodeStats(handles []uint32, sent, recv, segsSent, segsRecv []uint64) *ingestv1.SocketStats {
	st := &ingestv1.SocketStats{BytesSent: sent, BytesReceived: recv, SegmentsSent: segsSent, SegmentsReceived: segsRecv}
	var prev uint32
	for _, h := range handles {
		st.HandleGaps = append(st.HandleGaps, h-prev)
		prev = h
	}
	return st
}

func TestDecodeStatsRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		handles []uint32
	}{
		{name: "empty"},
		{name: "one", handles: []uint32{7}},
		{name: "handle zero first", handles: []uint32{0, 1, 2}},
		{name: "dense", handles: []uint32{1, 2, 3, 4, 5}},
		{name: "sparse", handles: []uint32{3, 1000, 70000, 1 << 24}},
		{name: "largest handle", handles: []uint32{1, 1<<32 - 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := len(tc.handles)
			cols := make([][]uint64, 4)
			for c := range cols {
				for i := range n {
					cols[c] = append(cols[c], uint64((c+1)*1000+i))
				}
			}
			wire, err := proto.Marshal(encodeStats(tc.handles, cols[0], cols[1], cols[2], cols[3]))
			if err != nil {
				t.Fatal(err)
			}
			var in ingestv1.SocketStats
			if err := proto.Unmarshal(wire, &in); err != nil {
				t.Fatal(err)
			}
			var got match.Stats
			if err := DecodeStats(&got, &in); err != nil {
				t.Fatal(err)
			}
			if len(got.Handles) != n || (n > 0 && !slices.Equal(got.Handles, tc.handles)) {
				t.Errorf("handles %v, want %v", got.Handles, tc.handles)
			}
			for c, col := range [][]uint64{got.BytesSent, got.BytesReceived, got.SegmentsSent, got.SegmentsReceived} {
				if !slices.Equal(col, cols[c]) {
					t.Errorf("column %d: %v, want %v", c, col, cols[c])
				}
			}
		})
	}
}

func TestDecodeStatsErrors(t *testing.T) {
	one := []uint64{1}
	two := []uint64{1, 2}
	tests := []struct {
		name string
		in   *ingestv1.SocketStats
		want string
	}{
		{"short bytes_sent", &ingestv1.SocketStats{HandleGaps: []uint32{1, 1}, BytesSent: one, BytesReceived: two, SegmentsSent: two, SegmentsReceived: two},
			"stats: column bytes_sent has 1 entries, handle_gaps has 2"},
		{"long segments_received", &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: one, BytesReceived: one, SegmentsSent: one, SegmentsReceived: two},
			"stats: column segments_received has 2 entries, handle_gaps has 1"},
		{"missing column", &ingestv1.SocketStats{HandleGaps: []uint32{1}, BytesSent: one, BytesReceived: one, SegmentsSent: one},
			"stats: column segments_received has 0 entries, handle_gaps has 1"},
		{"repeated handle", &ingestv1.SocketStats{HandleGaps: []uint32{4, 0}, BytesSent: two, BytesReceived: two, SegmentsSent: two, SegmentsReceived: two},
			"stats entry 1: handle gap 0 (handles must ascend)"},
		{"overflow", &ingestv1.SocketStats{HandleGaps: []uint32{1<<32 - 1, 1}, BytesSent: two, BytesReceived: two, SegmentsSent: two, SegmentsReceived: two},
			"stats entry 1: handle exceeds 32 bits"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var st match.Stats
			err := DecodeStats(&st, tc.in)
			if err == nil || err.Error() != tc.want {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestDecodeBatch(t *testing.T) {
	v4 := []byte{10, 0, 0, 1}
	mapped := netip.MustParseAddr("::ffff:10.0.0.2").AsSlice()
	good := func() *ingestv1.Batch {
		return &ingestv1.Batch{
			Sequence:  7,
			Processes: []*ingestv1.Process{{Handle: 1, Pid: 42, Comm: "curl", StartTime: 123456, CgroupId: 7788}},
			Sockets: []*ingestv1.Socket{{Handle: 3, Process: 1, Role: ingestv1.Role_ROLE_CLIENT,
				LocalAddr: v4, LocalPort: 40000, RemoteAddr: mapped, RemotePort: 80, Netns: 9, NewConnection: true, Cookie: 0xc00c1e}},
			Owners:             []*ingestv1.SocketOwner{{Socket: 3, Process: 1}},
			Stats:              encodeStats([]uint32{3}, []uint64{1}, []uint64{2}, []uint64{3}, []uint64{4}),
			ClosedSockets:      []uint32{3},
			ForgottenProcesses: []uint32{1},
		}
	}
	t.Run("valid", func(t *testing.T) {
		var b match.Batch
		if err := DecodeBatch(&b, good()); err != nil {
			t.Fatal(err)
		}
		want := match.Socket{Handle: 3, Process: 1, Role: match.RoleClient,
			Local: netip.MustParseAddrPort("10.0.0.1:40000"), Remote: netip.MustParseAddrPort("10.0.0.2:80"), Netns: 9, NewConnection: true, Cookie: 0xc00c1e}
		if b.Sequence != 7 || len(b.Sockets) != 1 || b.Sockets[0] != want {
			t.Errorf("sockets %+v, want %+v", b.Sockets, want)
		}
		if b.Processes[0] != (match.Process{Handle: 1, PID: 42, Comm: "curl", StartTime: 123456, CgroupID: 7788}) || b.Owners[0] != (match.Owner{Socket: 3, Process: 1}) ||
			!slices.Equal(b.Stats.Handles, []uint32{3}) || !slices.Equal(b.Closed, []uint32{3}) || !slices.Equal(b.Forgotten, []uint32{1}) {
			t.Errorf("decoded %+v", b)
		}
	})
	t.Run("nat and dns", func(t *testing.T) {
		in := good()
		in.Sockets[0].Nat = &ingestv1.Translation{LocalAddr: v4, LocalPort: 40000, RemoteAddr: []byte{10, 0, 9, 9}, RemotePort: 8080}
		in.DnsFlows = []*ingestv1.DnsFlow{{ClientAddr: v4, ServerAddr: mapped, ServerPort: 53, Comm: "curl",
			Responses: []*ingestv1.DnsRcodeCount{{Rcode: 3, Count: 2}}, Timeouts: 1, DurationsUs: []uint32{1500}}}
		in.DnsAnswers = []*ingestv1.DnsAnswer{{Name: "api.example.com", Addrs: [][]byte{{198, 18, 7, 7}}, TtlSeconds: 30}}
		var b match.Batch
		if err := DecodeBatch(&b, in); err != nil {
			t.Fatal(err)
		}
		if got := b.Sockets[0].Remote; got != netip.MustParseAddrPort("10.0.9.9:8080") {
			t.Errorf("remote %s, want the backend after NAT", got)
		}
		f := b.DNSFlows[0]
		if f.Server != netip.MustParseAddrPort("10.0.0.2:53") || f.Responses[0] != (match.DNSCount{RCode: 3, Count: 2}) ||
			f.Timeouts != 1 || f.Durations[0] != 1500*time.Microsecond {
			t.Errorf("dns flow %+v", f)
		}
		a := b.DNSAnswers[0]
		if a.Name != "api.example.com" || a.TTL != 30*time.Second || a.Addrs[0] != netip.MustParseAddr("198.18.7.7") {
			t.Errorf("dns answer %+v", a)
		}
	})
	tests := []struct {
		name   string
		mutate func(*ingestv1.Batch)
		want   string
	}{
		{"short nat address", func(b *ingestv1.Batch) {
			b.Sockets[0].Nat = &ingestv1.Translation{LocalAddr: []byte{1}, RemoteAddr: []byte{1, 2, 3, 4}}
		},
			"batch 7: socket 0: nat local address has 1 bytes"},
		{"short dns client", func(b *ingestv1.Batch) { b.DnsFlows = []*ingestv1.DnsFlow{{ClientAddr: []byte{1}}} },
			"batch 7: dns flow 0: client address has 1 bytes"},
		{"dns answer without name", func(b *ingestv1.Batch) { b.DnsAnswers = []*ingestv1.DnsAnswer{{}} },
			"batch 7: dns answer 0: empty name"},
		{"short local address", func(b *ingestv1.Batch) { b.Sockets[0].LocalAddr = []byte{10, 0, 0} },
			"batch 7: socket 0: local address has 3 bytes (want 4 or 16)"},
		{"empty remote address", func(b *ingestv1.Batch) { b.Sockets[0].RemoteAddr = nil },
			"batch 7: socket 0: remote address has 0 bytes (want 4 or 16)"},
		{"port out of range", func(b *ingestv1.Batch) { b.Sockets[0].RemotePort = 70000 },
			"batch 7: socket 0: remote port 70000 exceeds 65535"},
		{"unknown role", func(b *ingestv1.Batch) { b.Sockets[0].Role = 9 },
			"batch 7: socket 0: unknown role 9"},
		{"bad stats", func(b *ingestv1.Batch) { b.Stats.BytesSent = nil },
			"batch 7: stats: column bytes_sent has 0 entries, handle_gaps has 1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := good()
			tc.mutate(in)
			var b match.Batch
			if err := DecodeBatch(&b, in); err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
}

// BenchmarkDecode unmarshals and decodes a batch of 10k socket updates.
func BenchmarkDecode(b *testing.B) {
	const n = 10000
	handles := make([]uint32, n)
	cols := make([][]uint64, 4)
	for i := range n {
		handles[i] = uint32(i*3 + 1)
		for c := range cols {
			cols[c] = append(cols[c], uint64(i%1500+c))
		}
	}
	wire, err := proto.Marshal(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: &ingestv1.Batch{
		Sequence: 1,
		Stats:    encodeStats(handles, cols[0], cols[1], cols[2], cols[3]),
	}}})
	if err != nil {
		b.Fatal(err)
	}
	var dst match.Batch
	b.SetBytes(int64(len(wire)))
	b.ReportAllocs()
	for b.Loop() {
		var req ingestv1.StreamRequest
		if err := proto.Unmarshal(wire, &req); err != nil {
			b.Fatal(err)
		}
		if err := DecodeBatch(&dst, req.GetBatch()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*n/b.Elapsed().Seconds(), "updates/s")
	if len(dst.Stats.Handles) != n || dst.Stats.Handles[n-1] != handles[n-1] {
		b.Fatalf("decoded %d handles", len(dst.Stats.Handles))
	}
}
