package stream

import (
	"fmt"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// wireCodec is the stream's gRPC codec: protobuf, with the batches written
// by appendRequest instead of the generic marshaller. Under connection
// churn a report announces and closes thousands of sockets, and the
// generic marshaller's two reflective passes over them (size, then bytes)
// were about a seventh of the collector's CPU. The bytes are the same as
// proto.Marshal's (TestWireMatchesProto), so the reducer reads them as
// any protobuf; other messages (the hello) and the reducer's answers go
// through the generic code.
type wireCodec struct{}

var _ encoding.CodecV2 = wireCodec{}

// Name is protobuf's: the content-subtype stays the one the reducer
// serves.
func (wireCodec) Name() string { return "proto" }

func (wireCodec) Marshal(v any) (mem.BufferSlice, error) {
	req, ok := v.(*ingestv1.StreamRequest)
	if !ok {
		return nil, fmt.Errorf("stream codec: cannot marshal %T", v)
	}
	var plan batchPlan
	n := requestSize(req, &plan)
	if mem.IsBelowBufferPoolingThreshold(n) {
		out, err := appendRequest(make([]byte, 0, n), req, &plan)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(out)}, nil
	}
	pool := mem.DefaultBufferPool()
	buf := pool.Get(n)
	out, err := appendRequest((*buf)[:0], req, &plan)
	if err != nil {
		pool.Put(buf)
		return nil, err
	}
	*buf = out
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

func (wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("stream codec: cannot unmarshal into %T", v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}

// requestSize is the encoded size of r; for a batch it fills plan.
func requestSize(r *ingestv1.StreamRequest, plan *batchPlan) int {
	if b := r.GetBatch(); b != nil {
		*plan = planBatch(b)
		return msgLen(plan.size)
	}
	return proto.Size(r)
}

// appendRequest appends r's protobuf encoding to buf, whose capacity should
// be requestSize(r, plan), with the plan that filled. It fails only where
// proto.Marshal would: a string that is not UTF-8.
func appendRequest(buf []byte, r *ingestv1.StreamRequest, plan *batchPlan) ([]byte, error) {
	b := r.GetBatch()
	if b == nil {
		return proto.MarshalOptions{}.MarshalAppend(buf, r)
	}
	return appendBatch(appendHeader(buf, 2, plan.size), b, plan)
}

// batchPlan holds what sizing a batch found that writing it needs again:
// the body sizes of its packed columns, each summed once.
type batchPlan struct {
	size      int
	stats     [9]int // SocketStats' columns, by field number - 1
	statsSize int
	closed    int
	forgotten int
}

// msgLen is the size of a length-delimited field of tag number below 16
// and body size n.
func msgLen(n int) int { return 1 + protowire.SizeVarint(uint64(n)) + n }

// varLen is the size of a varint field of tag number below 16, or 0 when v
// is zero (proto3 leaves zero scalars out).
func varLen(v uint64) int {
	if v == 0 {
		return 0
	}
	return 1 + protowire.SizeVarint(v)
}

func bytesLen(b []byte) int {
	if len(b) == 0 {
		return 0
	}
	return msgLen(len(b))
}

func boolLen(v bool) int {
	if v {
		return 2
	}
	return 0
}

// packedLen is the size of a packed repeated field's body.
func packedLen[T uint32 | uint64](xs []T) int {
	n := 0
	for _, x := range xs {
		n += protowire.SizeVarint(uint64(x))
	}
	return n
}

// packedFieldLen is the size of a packed field of n values whose body
// takes body bytes.
func packedFieldLen(n, body int) int {
	if n == 0 {
		return 0
	}
	return msgLen(body)
}

// appendVarint is protowire.AppendVarint, inlined for the one- and
// two-byte values that most fields of a batch hold.
func appendVarint(buf []byte, v uint64) []byte {
	if v < 1<<7 {
		return append(buf, byte(v))
	}
	if v < 1<<14 {
		return append(buf, byte(v)|0x80, byte(v>>7))
	}
	return protowire.AppendVarint(buf, v)
}

// tag is the one-byte key of field num (below 16) of wire type typ.
func tag(num protowire.Number, typ protowire.Type) byte { return byte(num)<<3 | byte(typ) }

func appendVar(buf []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return buf
	}
	return appendVarint(append(buf, tag(num, protowire.VarintType)), v)
}

func appendBytes(buf []byte, num protowire.Number, b []byte) []byte {
	if len(b) == 0 {
		return buf
	}
	buf = appendVarint(append(buf, tag(num, protowire.BytesType)), uint64(len(b)))
	return append(buf, b...)
}

func appendBool(buf []byte, num protowire.Number, v bool) []byte {
	if !v {
		return buf
	}
	return append(buf, tag(num, protowire.VarintType), 1)
}

// appendPacked appends the packed field of xs, whose body takes body
// bytes (packedLen).
func appendPacked[T uint32 | uint64](buf []byte, num protowire.Number, xs []T, body int) []byte {
	if len(xs) == 0 {
		return buf
	}
	buf = appendVarint(append(buf, tag(num, protowire.BytesType)), uint64(body))
	for _, x := range xs {
		buf = appendVarint(buf, uint64(x))
	}
	return buf
}

// appendHeader opens a length-delimited field of size n.
func appendHeader(buf []byte, num protowire.Number, n int) []byte {
	return appendVarint(append(buf, tag(num, protowire.BytesType)), uint64(n))
}

// The rare parts of a batch (processes, DNS, failed connects, UDP) go
// through the generic marshaller, one entry at a time.

func genericSize[M proto.Message](ms []M) int {
	n := 0
	for _, m := range ms {
		n += msgSize(m)
	}
	return n
}

func appendGeneric[M proto.Message](buf []byte, num protowire.Number, ms []M) ([]byte, error) {
	for _, m := range ms {
		buf = appendHeader(buf, num, proto.Size(m))
		var err error
		if buf, err = (proto.MarshalOptions{UseCachedSize: true}).MarshalAppend(buf, m); err != nil {
			return buf, fmt.Errorf("marshal %T: %w", m, err)
		}
	}
	return buf, nil
}

// batchSizeBound is at least batchSize(b), from the parts' counts and
// lengths alone (every number at its widest): split takes a report that
// fits by this bound without sizing each of its numbers, which the codec
// does again when it writes the batch.
func batchSizeBound(b *ingestv1.Batch) int {
	const (
		header = 1 + 5 // a length-delimited field's key and length
		varint = 1 + 10
		u32    = 1 + 5
	)
	n := varint + header + 2*varint // sequence, time
	for _, s := range b.Sockets {
		n += header + 5*u32 + 2*varint + 2 + 2*header + len(s.LocalAddr) + len(s.RemoteAddr) + 1 // + role, cookie, new_connection, addresses, netns
		if t := s.Nat; t != nil {
			n += header + 2*header + len(t.LocalAddr) + len(t.RemoteAddr) + 2*u32
		}
	}
	n += len(b.Owners) * (header + 2*u32)
	if st := b.Stats; st != nil {
		n += header + 9*header + 5*(len(st.HandleGaps)+len(st.SrttUs)) +
			10*(len(st.BytesSent)+len(st.BytesReceived)+len(st.SegmentsSent)+len(st.SegmentsReceived)+
				len(st.Retransmits)+len(st.ResetsSent)+len(st.ResetsReceived))
	}
	n += 2*header + 5*(len(b.ClosedSockets)+len(b.ForgottenProcesses))
	if b.Loss != nil {
		n += header + 13*varint
	}
	n += genericSize(b.Processes) + genericSize(b.DnsFlows) + genericSize(b.DnsAnswers) +
		genericSize(b.FailedConnects) + genericSize(b.UdpFlows)
	return n + 4 // continued, ack_wanted
}

// batchSize is the encoded size of b.
func batchSize(b *ingestv1.Batch) int { return planBatch(b).size }

func planBatch(b *ingestv1.Batch) batchPlan {
	var p batchPlan
	n := varLen(b.Sequence)
	if b.Time != nil {
		n += msgLen(timeSize(b.Time))
	}
	n += genericSize(b.Processes)
	for _, s := range b.Sockets {
		n += msgLen(socketSize(s))
	}
	for _, o := range b.Owners {
		n += msgLen(ownerSize(o))
	}
	if b.Stats != nil {
		for i, col := range statsColumns(b.Stats) {
			p.stats[i] = col.len()
			p.statsSize += col.fieldLen(p.stats[i])
		}
		n += msgLen(p.statsSize)
	}
	p.closed, p.forgotten = packedLen(b.ClosedSockets), packedLen(b.ForgottenProcesses)
	n += packedFieldLen(len(b.ClosedSockets), p.closed) + packedFieldLen(len(b.ForgottenProcesses), p.forgotten)
	if b.Loss != nil {
		n += msgLen(lossSize(b.Loss))
	}
	n += genericSize(b.DnsFlows)
	n += genericSize(b.DnsAnswers)
	n += genericSize(b.FailedConnects)
	n += genericSize(b.UdpFlows)
	n += boolLen(b.Continued)
	n += boolLen(b.AckWanted)
	p.size = n
	return p
}

func appendBatch(buf []byte, b *ingestv1.Batch, p *batchPlan) ([]byte, error) {
	buf = appendVar(buf, 1, b.Sequence)
	if b.Time != nil {
		buf = appendHeader(buf, 2, timeSize(b.Time))
		buf = appendTime(buf, b.Time)
	}
	buf, err := appendGeneric(buf, 3, b.Processes)
	if err != nil {
		return buf, err
	}
	for _, s := range b.Sockets {
		// A socket's body is almost always under 128 bytes: its length
		// takes the one byte kept for it, without sizing it first.
		buf = append(buf, tag(4, protowire.BytesType), 0)
		at := len(buf)
		buf = appendSocket(buf, s)
		buf = patchLength(buf, at)
	}
	for _, o := range b.Owners {
		buf = appendHeader(buf, 5, ownerSize(o))
		buf = appendVar(buf, 1, uint64(o.Socket))
		buf = appendVar(buf, 2, uint64(o.Process))
	}
	if b.Stats != nil {
		buf = appendHeader(buf, 6, p.statsSize)
		for i, col := range statsColumns(b.Stats) {
			buf = col.append(buf, protowire.Number(i+1), p.stats[i])
		}
	}
	buf = appendPacked(buf, 7, b.ClosedSockets, p.closed)
	buf = appendPacked(buf, 8, b.ForgottenProcesses, p.forgotten)
	if b.Loss != nil {
		buf = appendHeader(buf, 9, lossSize(b.Loss))
		buf = appendLoss(buf, b.Loss)
	}
	if buf, err = appendGeneric(buf, 10, b.DnsFlows); err != nil {
		return buf, err
	}
	if buf, err = appendGeneric(buf, 11, b.DnsAnswers); err != nil {
		return buf, err
	}
	if buf, err = appendGeneric(buf, 12, b.FailedConnects); err != nil {
		return buf, err
	}
	if buf, err = appendGeneric(buf, 13, b.UdpFlows); err != nil {
		return buf, err
	}
	buf = appendBool(buf, 14, b.Continued)
	return appendBool(buf, 15, b.AckWanted), nil
}

// patchLength writes the length of the body that starts at at into the
// byte before it, moving the body when the length needs more than one.
func patchLength(buf []byte, at int) []byte {
	n := len(buf) - at
	if n < 1<<7 {
		buf[at-1] = byte(n)
		return buf
	}
	extra := protowire.SizeVarint(uint64(n)) - 1
	buf = append(buf, make([]byte, extra)...)
	copy(buf[at+extra:], buf[at:at+n])
	protowire.AppendVarint(buf[:at-1], uint64(n))
	return buf
}

func timeSize(t *timestamppb.Timestamp) int {
	return varLen(uint64(t.Seconds)) + varLen(uint64(int64(t.Nanos)))
}

func appendTime(buf []byte, t *timestamppb.Timestamp) []byte {
	buf = appendVar(buf, 1, uint64(t.Seconds))
	return appendVar(buf, 2, uint64(int64(t.Nanos)))
}

func socketSize(s *ingestv1.Socket) int {
	n := varLen(uint64(s.Handle)) + varLen(uint64(s.Process)) + varLen(uint64(int64(s.Role))) +
		bytesLen(s.LocalAddr) + varLen(uint64(s.LocalPort)) + bytesLen(s.RemoteAddr) + varLen(uint64(s.RemotePort)) +
		varLen(uint64(s.Netns)) + boolLen(s.NewConnection) + varLen(s.Cookie)
	if s.Nat != nil {
		n += msgLen(translationSize(s.Nat))
	}
	return n
}

func appendSocket(buf []byte, s *ingestv1.Socket) []byte {
	buf = appendVar(buf, 1, uint64(s.Handle))
	buf = appendVar(buf, 2, uint64(s.Process))
	buf = appendVar(buf, 3, uint64(int64(s.Role)))
	buf = appendBytes(buf, 4, s.LocalAddr)
	buf = appendVar(buf, 5, uint64(s.LocalPort))
	buf = appendBytes(buf, 6, s.RemoteAddr)
	buf = appendVar(buf, 7, uint64(s.RemotePort))
	buf = appendVar(buf, 8, uint64(s.Netns))
	buf = appendBool(buf, 9, s.NewConnection)
	buf = appendVar(buf, 10, s.Cookie)
	if s.Nat != nil {
		buf = appendHeader(buf, 11, translationSize(s.Nat))
		buf = appendBytes(buf, 1, s.Nat.LocalAddr)
		buf = appendVar(buf, 2, uint64(s.Nat.LocalPort))
		buf = appendBytes(buf, 3, s.Nat.RemoteAddr)
		buf = appendVar(buf, 4, uint64(s.Nat.RemotePort))
	}
	return buf
}

func translationSize(t *ingestv1.Translation) int {
	return bytesLen(t.LocalAddr) + varLen(uint64(t.LocalPort)) + bytesLen(t.RemoteAddr) + varLen(uint64(t.RemotePort))
}

func ownerSize(o *ingestv1.SocketOwner) int {
	return varLen(uint64(o.Socket)) + varLen(uint64(o.Process))
}

// column is one packed column of SocketStats, of 32- or 64-bit values.
type column struct {
	u32 []uint32
	u64 []uint64
}

func statsColumns(s *ingestv1.SocketStats) [9]column {
	return [9]column{{u32: s.HandleGaps}, {u64: s.BytesSent}, {u64: s.BytesReceived}, {u64: s.SegmentsSent},
		{u64: s.SegmentsReceived}, {u64: s.Retransmits}, {u64: s.ResetsSent}, {u64: s.ResetsReceived}, {u32: s.SrttUs}}
}

// len is the size of the column's packed body.
func (c column) len() int { return packedLen(c.u32) + packedLen(c.u64) }

func (c column) fieldLen(body int) int { return packedFieldLen(len(c.u32)+len(c.u64), body) }

func (c column) append(buf []byte, num protowire.Number, body int) []byte {
	if c.u32 != nil {
		return appendPacked(buf, num, c.u32, body)
	}
	return appendPacked(buf, num, c.u64, body)
}

// lossFields are the Loss counters in field order (1 to 13).
func lossFields(l *ingestv1.Loss) [13]uint64 {
	return [13]uint64{l.RingFull, l.MapFull, l.BufferDropped, l.SocketCap, l.CounterRegressions, l.ConntrackOverrun,
		l.DnsParseErrors, l.DnsRingFull, l.ProcessRingFull, l.FailedConnectsDropped, l.ResetsUnreported,
		l.UdpPeerCap, l.UdpFlowsDropped}
}

func lossSize(l *ingestv1.Loss) int {
	n := 0
	for _, v := range lossFields(l) {
		n += varLen(v)
	}
	return n
}

func appendLoss(buf []byte, l *ingestv1.Loss) []byte {
	for i, v := range lossFields(l) {
		buf = appendVar(buf, protowire.Number(i+1), v)
	}
	return buf
}
