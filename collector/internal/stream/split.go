package stream

import (
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// DefaultMaxBatchBytes is the largest encoded batch the collector sends by
// default: half of the reducer's default --max-message-bytes (4 MiB), which
// it applies after decompression.
const DefaultMaxBatchBytes = 2 << 20

// minBatchBytes is the smallest --max-batch-bytes: room for the largest
// single entry (a process with its cgroup path) many times over.
const minBatchBytes = 64 << 10

// batchSlack is what a piece keeps free for the fields whose size split
// does not add up entry by entry: tags and length prefixes of the packed
// columns, the sequence, the time and the loss counters.
const batchSlack = 512

// split cuts b into batches of at most maxBytes encoded bytes each, or
// returns b alone when it fits. A report after an outage carries every
// socket closed meanwhile (up to --buffer-bytes), more than a reducer
// takes in one message; sent whole it would be refused, and refused again
// after every reconnect.
//
// The pieces keep the order in which the reducer applies a batch's parts
// (processes, sockets, owners, stats, failed connects, UDP and DNS, closed
// sockets, forgotten processes), so each piece refers only to handles
// announced in it or before it, and a handle is freed only in the last
// pieces, after everything that names it. Handles are reused only in a
// later report, after all the pieces. Every piece has the report's time
// and its loss counters (cumulative, so repeating them counts nothing),
// and all but the last say that more follow (continued); the caller
// numbers them.
func split(b *ingestv1.Batch, maxBytes int) []*ingestv1.Batch {
	if proto.Size(b) <= maxBytes {
		return []*ingestv1.Batch{b}
	}
	s := splitter{src: b, limit: max(maxBytes-batchSlack, 1)}
	for _, p := range b.GetProcesses() {
		s.piece(msgSize(p)).Processes = append(s.cur.Processes, p)
	}
	for _, k := range b.GetSockets() {
		s.piece(msgSize(k)).Sockets = append(s.cur.Sockets, k)
	}
	for _, o := range b.GetOwners() {
		s.piece(msgSize(o)).Owners = append(s.cur.Owners, o)
	}
	s.stats(b.GetStats())
	for _, f := range b.GetFailedConnects() {
		s.piece(msgSize(f)).FailedConnects = append(s.cur.FailedConnects, f)
	}
	for _, f := range b.GetUdpFlows() {
		s.piece(msgSize(f)).UdpFlows = append(s.cur.UdpFlows, f)
	}
	for _, f := range b.GetDnsFlows() {
		s.piece(msgSize(f)).DnsFlows = append(s.cur.DnsFlows, f)
	}
	for _, a := range b.GetDnsAnswers() {
		s.piece(msgSize(a)).DnsAnswers = append(s.cur.DnsAnswers, a)
	}
	for _, h := range b.GetClosedSockets() {
		s.piece(protowire.SizeVarint(uint64(h))).ClosedSockets = append(s.cur.ClosedSockets, h)
	}
	for _, h := range b.GetForgottenProcesses() {
		s.piece(protowire.SizeVarint(uint64(h))).ForgottenProcesses = append(s.cur.ForgottenProcesses, h)
	}
	for _, p := range s.out[:len(s.out)-1] {
		p.Continued = true
	}
	return s.out
}

// splitter fills pieces in order, starting a new one when the next entry
// would not fit.
type splitter struct {
	src   *ingestv1.Batch
	limit int
	out   []*ingestv1.Batch
	cur   *ingestv1.Batch
	size  int
}

// piece returns the batch that takes the next entry of n bytes.
func (s *splitter) piece(n int) *ingestv1.Batch {
	if s.cur == nil || (s.size > 0 && s.size+n > s.limit) {
		s.cur = &ingestv1.Batch{Time: s.src.GetTime(), Loss: s.src.GetLoss()}
		s.out = append(s.out, s.cur)
		s.size = 0
	}
	s.size += n
	return s.cur
}

// stats spreads the stats columns over pieces, re-basing each piece's first
// handle gap on zero.
func (s *splitter) stats(st *ingestv1.SocketStats) {
	gaps := st.GetHandleGaps()
	var handle, last uint32
	var dst *ingestv1.SocketStats
	for i, g := range gaps {
		handle += g
		n := protowire.SizeVarint(uint64(g)) + protowire.SizeVarint(st.BytesSent[i]) + protowire.SizeVarint(st.BytesReceived[i]) +
			protowire.SizeVarint(st.SegmentsSent[i]) + protowire.SizeVarint(st.SegmentsReceived[i])
		for _, col := range [][]uint64{st.Retransmits, st.ResetsSent, st.ResetsReceived} {
			if len(col) > 0 {
				n += protowire.SizeVarint(col[i])
			}
		}
		if len(st.SrttUs) > 0 {
			n += protowire.SizeVarint(uint64(st.SrttUs[i]))
		}
		b := s.piece(n)
		if b.Stats == nil {
			b.Stats = &ingestv1.SocketStats{}
			dst, last = b.Stats, 0
		}
		dst.HandleGaps = append(dst.HandleGaps, handle-last)
		last = handle
		dst.BytesSent = append(dst.BytesSent, st.BytesSent[i])
		dst.BytesReceived = append(dst.BytesReceived, st.BytesReceived[i])
		dst.SegmentsSent = append(dst.SegmentsSent, st.SegmentsSent[i])
		dst.SegmentsReceived = append(dst.SegmentsReceived, st.SegmentsReceived[i])
		if len(st.Retransmits) > 0 {
			dst.Retransmits = append(dst.Retransmits, st.Retransmits[i])
		}
		if len(st.ResetsSent) > 0 {
			dst.ResetsSent = append(dst.ResetsSent, st.ResetsSent[i])
		}
		if len(st.ResetsReceived) > 0 {
			dst.ResetsReceived = append(dst.ResetsReceived, st.ResetsReceived[i])
		}
		if len(st.SrttUs) > 0 {
			dst.SrttUs = append(dst.SrttUs, st.SrttUs[i])
		}
	}
}

// msgSize is the encoded size of m as a repeated field's entry: its tag,
// its length and its bytes.
func msgSize(m proto.Message) int {
	n := proto.Size(m)
	return 1 + protowire.SizeVarint(uint64(n)) + n
}
