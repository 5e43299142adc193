package stream

import (
	"slices"

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
// Each piece refers only to handles announced in it or before it, in the
// order in which the reducer applies a batch's parts (processes, sockets,
// owners, stats, failed connects, UDP and DNS, closed sockets, forgotten
// processes):
//   - the processes come first;
//   - then what names only sockets announced in an earlier report: their
//     stats and owners, and the failed connects, UDP and DNS;
//   - then each socket this report announces, with its owners, its stats
//     and, if it closed, its close, in one piece: the reducer never holds
//     more of the report's sockets at once than one piece announces (its
//     --max-session-sockets would refuse a report of more closed sockets
//     than that, announced before their closes);
//   - then the closes of sockets announced earlier, and the forgotten
//     processes, after everything that names them.
//
// Handles are reused only in a later report, after all the pieces. Every
// piece has the report's time and its loss counters (cumulative, so
// repeating them counts nothing), and all but the last say that more
// follow (continued); the caller numbers them.
func split(b *ingestv1.Batch, maxBytes int) []*ingestv1.Batch {
	if batchSizeBound(b) <= maxBytes || batchSize(b) <= maxBytes {
		return []*ingestv1.Batch{b}
	}
	s := splitter{src: b, limit: max(maxBytes-batchSlack, 1), stats: map[*ingestv1.Batch][]int{}}
	// The handle of each stats entry, from the report's gaps.
	var handle uint32
	for _, g := range b.GetStats().GetHandleGaps() {
		handle += g
		s.handles = append(s.handles, handle)
	}
	for _, p := range b.GetProcesses() {
		s.piece(msgSize(p)).Processes = append(s.cur.Processes, p)
	}
	announced := make(map[uint32]bool, len(b.GetSockets()))
	for _, k := range b.GetSockets() {
		announced[k.GetHandle()] = true
	}
	owners := make(map[uint32][]*ingestv1.SocketOwner)
	for _, o := range b.GetOwners() {
		if announced[o.GetSocket()] {
			owners[o.GetSocket()] = append(owners[o.GetSocket()], o)
		} else {
			s.piece(msgSize(o)).Owners = append(s.cur.Owners, o)
		}
	}
	statOf := make(map[uint32]int, len(b.GetSockets()))
	for i, handle := range s.handles {
		if announced[handle] {
			statOf[handle] = i
		} else {
			s.stat(s.piece(s.statSize(handle, i)), i)
		}
	}
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
	closedHere := make(map[uint32]bool)
	for _, h := range b.GetClosedSockets() {
		if announced[h] {
			closedHere[h] = true
		}
	}
	for _, k := range b.GetSockets() {
		h := k.GetHandle()
		n := msgSize(k)
		for _, o := range owners[h] {
			n += msgSize(o)
		}
		i, counted := statOf[h]
		if counted {
			n += s.statSize(h, i)
		}
		if closedHere[h] {
			n += protowire.SizeVarint(uint64(h))
		}
		p := s.piece(n)
		p.Sockets = append(p.Sockets, k)
		p.Owners = append(p.Owners, owners[h]...)
		if counted {
			s.stat(p, i)
		}
		if closedHere[h] {
			p.ClosedSockets = append(p.ClosedSockets, h)
		}
	}
	for _, h := range b.GetClosedSockets() {
		if !announced[h] {
			s.piece(protowire.SizeVarint(uint64(h))).ClosedSockets = append(s.cur.ClosedSockets, h)
		}
	}
	for _, h := range b.GetForgottenProcesses() {
		s.piece(protowire.SizeVarint(uint64(h))).ForgottenProcesses = append(s.cur.ForgottenProcesses, h)
	}
	for _, p := range s.out {
		s.columns(p)
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
	// stats are the indexes of the report's stats entries that each piece
	// takes, made into its columns at the end, in handle order.
	stats map[*ingestv1.Batch][]int
	// handles are the handles of the report's stats entries.
	handles []uint32
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

// stat gives stats entry i of the report to piece p.
func (s *splitter) stat(p *ingestv1.Batch, i int) { s.stats[p] = append(s.stats[p], i) }

// statSize bounds the encoded size of stats entry i, of the socket of
// handle h, in any piece: its gap there is at most h.
func (s *splitter) statSize(h uint32, i int) int {
	st := s.src.GetStats()
	n := protowire.SizeVarint(uint64(h)) + protowire.SizeVarint(st.BytesSent[i]) + protowire.SizeVarint(st.BytesReceived[i]) +
		protowire.SizeVarint(st.SegmentsSent[i]) + protowire.SizeVarint(st.SegmentsReceived[i])
	for _, col := range [][]uint64{st.Retransmits, st.ResetsSent, st.ResetsReceived} {
		if len(col) > 0 {
			n += protowire.SizeVarint(col[i])
		}
	}
	if len(st.SrttUs) > 0 {
		n += protowire.SizeVarint(uint64(st.SrttUs[i]))
	}
	return n
}

// columns makes the stats columns of piece p from the entries it took, in
// the report's order (ascending handles), with p's first handle gap based
// on zero.
func (s *splitter) columns(p *ingestv1.Batch) {
	idx := s.stats[p]
	if len(idx) == 0 {
		return
	}
	slices.Sort(idx)
	st := s.src.GetStats()
	handles := s.handles
	dst := &ingestv1.SocketStats{}
	var last uint32
	for _, i := range idx {
		dst.HandleGaps = append(dst.HandleGaps, handles[i]-last)
		last = handles[i]
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
	p.Stats = dst
}

// msgSize is the encoded size of m as a repeated field's entry: its tag,
// its length and its bytes.
func msgSize(m proto.Message) int { return msgLen(proto.Size(m)) }
