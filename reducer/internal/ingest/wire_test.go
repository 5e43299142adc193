package ingest

import (
	"fmt"
	"reflect"
	"runtime"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/match"
)

// wireSeeds are requests that exercise every part of a batch.
func wireSeeds() []*ingestv1.StreamRequest {
	full := &ingestv1.Batch{
		Sequence:  7,
		Time:      timestamppb.New(time.Unix(1700000000, 123456789)),
		Processes: []*ingestv1.Process{{Handle: 1, Pid: 42, Comm: "curl", Cgroup: "/system.slice", Cmdline: "curl -s x", PodUid: "p"}},
		Sockets: []*ingestv1.Socket{
			{Handle: 1, Process: 1, Role: ingestv1.Role_ROLE_CLIENT, LocalAddr: []byte{10, 0, 0, 1}, LocalPort: 40000,
				RemoteAddr: []byte{10, 0, 0, 2}, RemotePort: 80, Netns: 4026531840, NewConnection: true, Cookie: 99},
			{Handle: 2, Role: ingestv1.Role_ROLE_SERVER, LocalAddr: make([]byte, 16), LocalPort: 443,
				RemoteAddr: append(make([]byte, 15), 1), RemotePort: 50000,
				Nat: &ingestv1.Translation{LocalAddr: []byte{10, 1, 0, 1}, LocalPort: 8443, RemoteAddr: []byte{10, 2, 0, 1}, RemotePort: 5}},
		},
		Owners:             []*ingestv1.SocketOwner{{Socket: 2, Process: 1}},
		Stats:              encodeStats([]uint32{1, 2}, []uint64{1, 2}, []uint64{5, 6}, []uint64{1, 1}, []uint64{2, 2}),
		ClosedSockets:      []uint32{1},
		ForgottenProcesses: []uint32{1},
		Loss:               &ingestv1.Loss{RingFull: 1, DnsRingFull: 4},
		FailedConnects: []*ingestv1.FailedConnect{{Process: 1, LocalAddr: []byte{1, 2, 3, 4}, LocalPort: 5,
			RemoteAddr: []byte{4, 3, 2, 1}, RemotePort: 80, Reason: ingestv1.ConnectFailure_CONNECT_FAILURE_REFUSED}},
		UdpFlows: []*ingestv1.UdpFlow{{Process: 1, LocalAddr: []byte{1, 2, 3, 4}, LocalPort: 53, BytesSent: 10}},
		DnsFlows: []*ingestv1.DnsFlow{{ClientAddr: []byte{1, 2, 3, 4}, ServerAddr: []byte{8, 8, 8, 8}, ServerPort: 53,
			Responses: []*ingestv1.DnsRcodeCount{{Rcode: 0, Count: 2}}, DurationsUs: []uint32{100}}},
		DnsAnswers: []*ingestv1.DnsAnswer{{Name: "example.org", TtlSeconds: 30, Addrs: [][]byte{{1, 1, 1, 1}}}},
	}
	full.Stats.Retransmits = []uint64{0, 3}
	full.Stats.SrttUs = []uint32{10, 20}
	return []*ingestv1.StreamRequest{
		hello("node-a", 1),
		batch(&ingestv1.Batch{Sequence: 1}),
		batch(full),
		batch(&ingestv1.Batch{Sockets: []*ingestv1.Socket{{Handle: 1, LocalAddr: []byte{1, 2, 3}, RemoteAddr: []byte{1, 2, 3, 4}}}}),
		batch(&ingestv1.Batch{Sockets: []*ingestv1.Socket{{Handle: 1, LocalAddr: []byte{1, 2, 3, 4}, RemoteAddr: []byte{1, 2, 3, 4}, Role: 7}}}),
		batch(&ingestv1.Batch{Stats: &ingestv1.SocketStats{HandleGaps: []uint32{1, 2}, BytesSent: []uint64{1}}}),
		{},
	}
}

// FuzzWireRequest holds the wire decoding of requests (readRequest,
// decodeWire) to proto.Unmarshal and DecodeBatch: the same bytes are
// refused by both or by neither, the same batches are refused with the
// same error, and accepted ones decode to the same batch and loss report.
func FuzzWireRequest(f *testing.F) {
	for _, req := range wireSeeds() {
		wire, err := proto.Marshal(req)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire)
	}
	// A batch in two parts (merged), unpacked columns, a field of the
	// wrong wire type, a truncated batch, a bad tag.
	two := protowire.AppendTag(nil, fieldRequestBatch, protowire.BytesType)
	part, _ := proto.Marshal(&ingestv1.Batch{Sequence: 3, ClosedSockets: []uint32{5}})
	two = protowire.AppendBytes(two, part)
	two = protowire.AppendTag(two, fieldRequestBatch, protowire.BytesType)
	part = protowire.AppendTag(nil, fieldBatchClosed, protowire.VarintType)
	part = protowire.AppendVarint(part, 1<<33+6)
	part = protowire.AppendTag(part, fieldBatchSequence, protowire.BytesType)
	part = protowire.AppendBytes(part, []byte{1})
	two = protowire.AppendBytes(two, part)
	f.Add(two)
	f.Add([]byte{0x12, 0x05, 0x08})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})

	// w is reused from input to input, as a pooled request is.
	var w wireBatch
	var got match.Batch
	f.Fuzz(func(t *testing.T, wire []byte) {
		var req ingestv1.StreamRequest
		errProto := proto.Unmarshal(wire, &req)
		errWire := readRequest(&w, wire)
		if (errProto == nil) != (errWire == nil) {
			t.Fatalf("proto.Unmarshal: %v; readRequest: %v", errProto, errWire)
		}
		if errProto != nil {
			return
		}
		if w.batch != (req.GetBatch() != nil) || w.hello != (req.GetHello() != nil) {
			t.Fatalf("read batch %v hello %v; proto has %T", w.batch, w.hello, req.GetKind())
		}
		in := req.GetBatch()
		if in == nil {
			return
		}
		if w.seq != in.GetSequence() || len(w.sockets) != len(in.GetSockets()) || len(w.processes) != len(in.GetProcesses()) ||
			len(w.closed) != len(in.GetClosedSockets()) || len(w.forgotten) != len(in.GetForgottenProcesses()) {
			t.Fatalf("read sequence %d, %d sockets, %d processes, %d closed, %d forgotten; proto has %d, %d, %d, %d, %d",
				w.seq, len(w.sockets), len(w.processes), len(w.closed), len(w.forgotten), in.GetSequence(),
				len(in.GetSockets()), len(in.GetProcesses()), len(in.GetClosedSockets()), len(in.GetForgottenProcesses()))
		}
		if !proto.Equal(w.lossReport(), in.GetLoss()) {
			t.Fatalf("loss %v, want %v", w.lossReport(), in.GetLoss())
		}
		var want match.Batch
		errWant := DecodeBatch(&want, in)
		errGot := decodeWire(&got, &w)
		if fmt.Sprint(errWant) != fmt.Sprint(errGot) {
			t.Fatalf("decodeWire: %v; DecodeBatch: %v", errGot, errWant)
		}
		if errWant != nil {
			return
		}
		if a, b := normal(&got), normal(&want); !reflect.DeepEqual(a, b) {
			t.Fatalf("decodeWire:\n%+v\nDecodeBatch:\n%+v", a, b)
		}
	})
}

// normal returns a copy of b with its empty slices nil.
func normal(b *match.Batch) match.Batch {
	c := *b
	nz := func(v reflect.Value) {
		for i := range v.NumField() {
			f := v.Field(i)
			switch f.Kind() {
			case reflect.Slice:
				if f.Len() == 0 {
					f.Set(reflect.Zero(f.Type()))
				}
			}
		}
	}
	nz(reflect.ValueOf(&c).Elem())
	nz(reflect.ValueOf(&c.Stats).Elem())
	for i := range c.DNSFlows {
		nz(reflect.ValueOf(&c.DNSFlows[i]).Elem())
	}
	for i := range c.DNSAnswers {
		nz(reflect.ValueOf(&c.DNSAnswers[i]).Elem())
	}
	return c
}

// BenchmarkWireDecode reads and decodes a steady-state batch as the stream
// does: 100 stats entries, 10 new sockets, 10 closes.
func BenchmarkWireDecode(b *testing.B) {
	in := &ingestv1.Batch{Sequence: 1, Time: timestamppb.Now(), Loss: &ingestv1.Loss{RingFull: 1}}
	var handles []uint32
	cols := make([][]uint64, 4)
	for i := range 100 {
		handles = append(handles, uint32(1+i*3))
		for c := range cols {
			cols[c] = append(cols[c], uint64(1000+i*13+c))
		}
	}
	in.Stats = encodeStats(handles, cols[0], cols[1], cols[2], cols[3])
	for i := range 10 {
		in.Sockets = append(in.Sockets, &ingestv1.Socket{Handle: uint32(1000 + i), Process: 1, Role: ingestv1.Role_ROLE_CLIENT,
			LocalAddr: []byte{10, 0, 0, 1}, LocalPort: uint32(40000 + i), RemoteAddr: []byte{10, 0, 1, 2}, RemotePort: 80, NewConnection: true, Cookie: uint64(i)})
		in.ClosedSockets = append(in.ClosedSockets, uint32(500+i))
	}
	wire, err := proto.Marshal(batch(in))
	if err != nil {
		b.Fatal(err)
	}
	b.Run("unmarshal", func(b *testing.B) {
		var dst match.Batch
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
	})
	b.Run("wire", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r := getRequest(0)
			r.data = append(r.data[:0], wire...)
			if err := readRequest(&r.wire, r.data); err != nil {
				b.Fatal(err)
			}
			if err := decodeWire(&r.batch, &r.wire); err != nil {
				b.Fatal(err)
			}
			putRequest(r)
		}
	})
}

// emptyPools takes every request out of spareRequests and largeRequests.
func emptyPools() {
	for len(spareRequests) > 0 {
		<-spareRequests
	}
	for len(largeRequests) > 0 {
		<-largeRequests
	}
}

// TestPutRequestBuffers: a request that a large message used is kept whole
// for the next large one, also when a smaller large one came between (a
// churning node's tick after an early report), while there is room; one
// that a small message used keeps the buffers it used well and lets go of
// those that it used little of (a snapshot's, reused by a small batch).
func TestPutRequestBuffers(t *testing.T) {
	emptyPools()
	t.Cleanup(emptyPools)
	grown := func() *request {
		r := new(request)
		r.data = make([]byte, 1<<20)
		r.wire.sockets = make([]wireSocket, 5000)
		r.wire.stats.sent = make([]uint64, 5000)
		r.batch.Sockets = make([]match.Socket, 5000)
		return r
	}
	whole := func(r *request) bool {
		return cap(r.data) == 1<<20 && cap(r.wire.sockets) == 5000 && cap(r.wire.stats.sent) == 5000 && cap(r.batch.Sockets) == 5000
	}
	r := grown()
	putRequest(r)
	if got := getRequest(1 << 20); got != r || !whole(got) {
		t.Fatalf("a large message's request not kept whole: got %p (want %p), data %d, sockets %d, sent %d, batch sockets %d",
			got, r, cap(got.data), cap(got.wire.sockets), cap(got.wire.stats.sent), cap(got.batch.Sockets))
	}
	if len(r.wire.sockets) != 0 || len(r.batch.Sockets) != 0 {
		t.Fatal("a pooled request is not empty")
	}
	// A smaller large message: 100 KiB, 10 sockets.
	r.data = r.data[:100<<10]
	r.wire.sockets = r.wire.sockets[:10]
	r.batch.Sockets = r.batch.Sockets[:10]
	putRequest(r)
	if got := getRequest(1 << 20); got != r || !whole(got) {
		t.Fatal("a large request's buffers let go after a smaller large message")
	}
	// No room: two large requests kept, a third lets its large buffers go.
	r.data = r.data[:1<<20]
	putRequest(grown())
	putRequest(grown())
	putRequest(r)
	if r.data != nil || r.wire.sockets != nil || r.wire.stats.sent != nil || r.batch.Sockets != nil {
		t.Fatal("a third large request kept its buffers")
	}
	emptyPools()

	// Small messages.
	r = grown()
	r.data = make([]byte, bigBuffer)
	putRequest(r)
	if cap(r.data) != bigBuffer || cap(r.wire.sockets) != 5000 || cap(r.batch.Sockets) != 5000 {
		t.Fatal("well-used buffers of a small message let go")
	}
	r.data = make([]byte, 100, 1<<20)
	r.wire.sockets = r.wire.sockets[:10]
	r.wire.stats.sent = r.wire.stats.sent[:10]
	r.batch.Sockets = r.batch.Sockets[:10]
	putRequest(r)
	if r.data != nil || r.wire.sockets != nil || r.wire.stats.sent != nil || r.batch.Sockets != nil {
		t.Fatal("a snapshot's buffers kept by a small batch")
	}
	// Small buffers stay whatever their use.
	r.wire.sockets = make([]wireSocket, 0, bigBatch)
	putRequest(r)
	if cap(r.wire.sockets) != bigBatch {
		t.Fatal("a small buffer let go")
	}
}

// TestSpareRequestsOutliveGC: a request put back keeps its grown buffers
// for the next get even when a garbage collection empties the pool between,
// among the spare requests or, for a large message, the large ones.
func TestSpareRequestsOutliveGC(t *testing.T) {
	emptyPools()
	t.Cleanup(emptyPools)
	small := getRequest(0)
	small.data = make([]byte, bigBuffer)
	putRequest(small)
	large := new(request)
	large.data = make([]byte, 1<<20)
	putRequest(large)
	runtime.GC()
	runtime.GC()
	if got := getRequest(bigBuffer); got != small || cap(got.data) != bigBuffer {
		t.Fatalf("after two collections got %p with a %d-byte buffer, want %p with %d bytes", got, cap(got.data), small, bigBuffer)
	}
	if got := getRequest(1 << 20); got != large || cap(got.data) != 1<<20 {
		t.Fatalf("after two collections got %p with a %d-byte buffer, want %p with 1 MiB", got, cap(got.data), large)
	}
}
