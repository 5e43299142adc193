package stream

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/grpc/encoding"
	protoName "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// fillRandom sets each field of m (and of its messages, to depth 3) with
// probability 3/4 to a random value, zeros included, so that a field the
// stream's codec does not know comes out in the generic marshaller's bytes
// and not in the codec's.
func fillRandom(t *testing.T, rng *rand.Rand, m protoreflect.Message, depth int) {
	t.Helper()
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if fd.ContainingOneof() != nil || rng.IntN(4) == 0 {
			continue
		}
		switch {
		case fd.IsMap():
			t.Fatalf("%s: map fields are not filled", fd.FullName())
		case fd.IsList():
			l := m.Mutable(fd).List()
			for range rng.IntN(5) {
				if fd.Kind() == protoreflect.MessageKind {
					e := l.NewElement()
					if depth < 3 {
						fillRandom(t, rng, e.Message(), depth+1)
					}
					l.Append(e)
				} else {
					l.Append(randomScalar(rng, fd))
				}
			}
		case fd.Kind() == protoreflect.MessageKind:
			if depth < 3 {
				fillRandom(t, rng, m.Mutable(fd).Message(), depth+1)
			}
		default:
			m.Set(fd, randomScalar(rng, fd))
		}
	}
}

// randomNumber is 0, a small number or a large one.
func randomNumber(rng *rand.Rand) uint64 {
	switch rng.IntN(4) {
	case 0:
		return 0
	case 1:
		return uint64(rng.IntN(200))
	default:
		return rng.Uint64() >> rng.IntN(64)
	}
}

func randomScalar(rng *rand.Rand, fd protoreflect.FieldDescriptor) protoreflect.Value {
	n := randomNumber(rng)
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(n%2 == 1)
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(protoreflect.EnumNumber(int32(n%5) - 1))
	case protoreflect.Int32Kind:
		return protoreflect.ValueOfInt32(int32(n))
	case protoreflect.Int64Kind:
		return protoreflect.ValueOfInt64(int64(n))
	case protoreflect.Uint32Kind:
		return protoreflect.ValueOfUint32(uint32(n))
	case protoreflect.Uint64Kind:
		return protoreflect.ValueOfUint64(n)
	case protoreflect.BytesKind:
		b := make([]byte, n%20)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return protoreflect.ValueOfBytes(b)
	case protoreflect.StringKind:
		return protoreflect.ValueOfString([]string{"", "curl", "nginx-7d9f", "名前", "/kubepods/burstable/pod1"}[n%5])
	}
	panic("field kind " + fd.Kind().String() + " not filled: add it to randomScalar")
}

func marshalWire(t *testing.T, req *ingestv1.StreamRequest) []byte {
	t.Helper()
	data, err := wireCodec{}.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	defer data.Free()
	return data.Materialize()
}

// TestWireMatchesProto: the stream's codec writes exactly the bytes of
// proto.Marshal for batches with every field set at random (zeros, empty
// lists and large numbers included), for an empty batch, and for a hello,
// and the reducer's generic reading of them gives the message back.
func TestWireMatchesProto(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	reqs := []*ingestv1.StreamRequest{
		{Kind: &ingestv1.StreamRequest_Batch{Batch: &ingestv1.Batch{}}},
		{Kind: &ingestv1.StreamRequest_Batch{Batch: &ingestv1.Batch{Stats: &ingestv1.SocketStats{}, Loss: &ingestv1.Loss{}}}},
		// A socket whose body passes 127 bytes: its length takes two.
		{Kind: &ingestv1.StreamRequest_Batch{Batch: &ingestv1.Batch{Sockets: []*ingestv1.Socket{{
			Handle: 1 << 31, Process: 1 << 31, Role: -1, LocalAddr: bytes.Repeat([]byte{0xfd}, 16), LocalPort: 65535,
			RemoteAddr: bytes.Repeat([]byte{0xfe}, 16), RemotePort: 65535, Netns: 1 << 31, NewConnection: true, Cookie: 1 << 63,
			Nat: &ingestv1.Translation{LocalAddr: bytes.Repeat([]byte{1}, 16), LocalPort: 65535, RemoteAddr: bytes.Repeat([]byte{2}, 16), RemotePort: 65535},
		}, {Handle: 2}}}}},
		{Kind: &ingestv1.StreamRequest_Hello{Hello: &ingestv1.Hello{NodeName: "node-1", ProtocolVersion: 2, Capabilities: []string{capZstd, capSparseAcks}}}},
	}
	for range 500 {
		b := &ingestv1.Batch{}
		fillRandom(t, rng, b.ProtoReflect(), 0)
		reqs = append(reqs, &ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: b}})
	}
	for i, req := range reqs {
		want, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		got := marshalWire(t, req)
		if !bytes.Equal(got, want) {
			t.Fatalf("request %d: codec wrote %d bytes, proto.Marshal %d:\n%x\n%x", i, len(got), len(want), got, want)
		}
		if n := requestSize(req, new(batchPlan)); n != len(got) {
			t.Fatalf("request %d: size %d, wrote %d", i, n, len(got))
		}
		if b := req.GetBatch(); b != nil && batchSizeBound(b) < batchSize(b) {
			t.Fatalf("request %d: bound %d under the size %d", i, batchSizeBound(b), batchSize(b))
		}
		var back ingestv1.StreamRequest
		if err := (wireCodec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer(got)}, &back); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&back, req) {
			t.Fatalf("request %d does not read back", i)
		}
	}
}

// TestWireRefusesBadUTF8: a string that is not UTF-8 is an error, as with
// proto.Marshal, not a batch the reducer would refuse whole.
func TestWireRefusesBadUTF8(t *testing.T) {
	b := &ingestv1.Batch{Processes: []*ingestv1.Process{{Handle: 1, Comm: "\xff\xfe"}}}
	if _, err := (wireCodec{}).Marshal(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: b}}); err == nil {
		t.Fatal("a comm that is not UTF-8 marshalled")
	}
	if _, err := (wireCodec{}).Marshal(b); err == nil {
		t.Fatal("a message other than a StreamRequest marshalled")
	}
}

// BenchmarkWireMarshal: a churn report (2,000 sockets announced, counted
// and closed in it) marshalled by the stream's codec and by gRPC's proto
// codec, as the stream sends it, the two in turn in every iteration so
// that a drift of the machine falls on both (wire-ns/socket and
// proto-ns/socket).
func BenchmarkWireMarshal(b *testing.B) {
	const n = 2000
	batch := &ingestv1.Batch{Sequence: 7, Stats: &ingestv1.SocketStats{}, Loss: &ingestv1.Loss{RingFull: 3}}
	for i := range n {
		batch.Sockets = append(batch.Sockets, &ingestv1.Socket{Handle: uint32(i + 1), Process: 1, Role: ingestv1.Role_ROLE_CLIENT,
			LocalAddr: []byte{198, 18, 0, 1}, LocalPort: uint32(30000 + i), RemoteAddr: []byte{198, 18, 0, 2}, RemotePort: 8080,
			Netns: 4026531840, NewConnection: true, Cookie: uint64(1 << 20 * i)})
		st := batch.Stats
		st.HandleGaps = append(st.HandleGaps, 1)
		st.BytesSent = append(st.BytesSent, 200)
		st.BytesReceived = append(st.BytesReceived, 1000)
		st.SegmentsSent = append(st.SegmentsSent, 2)
		st.SegmentsReceived = append(st.SegmentsReceived, 2)
		batch.ClosedSockets = append(batch.ClosedSockets, uint32(i+1))
	}
	req := &ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: batch}}
	codecs := []encoding.CodecV2{wireCodec{}, encoding.GetCodecV2(protoName.Name)}
	var spent [2]time.Duration
	b.ReportAllocs()
	for b.Loop() {
		for i, c := range codecs {
			t0 := time.Now()
			data, err := c.Marshal(req)
			if err != nil {
				b.Fatal(err)
			}
			data.Free()
			spent[i] += time.Since(t0)
		}
	}
	b.ReportMetric(float64(spent[0].Nanoseconds())/float64(b.N*n), "wire-ns/socket")
	b.ReportMetric(float64(spent[1].Nanoseconds())/float64(b.N*n), "proto-ns/socket")
}
