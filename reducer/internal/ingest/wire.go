package ingest

import (
	"fmt"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
	"github.com/weir-project/weir/reducer/internal/match"
)

// The wire decoding of a stream's requests after its hello: a batch is read
// from the message's bytes into buffers that are reused from message to
// message, instead of being unmarshalled into new messages, so that the
// sockets, owners, stats columns and closes of a batch cost no allocation.
// It reads what proto.Unmarshal reads and refuses what it refuses (the
// differential fuzz test FuzzWireRequest holds the two together): unknown
// fields and known fields of another wire type are skipped, a message
// field that appears twice is merged, and a scalar one keeps its last
// value. The rare parts of a batch (processes, failed connects, UDP flows,
// DNS) are unmarshalled one by one with proto.Unmarshal.

// Field numbers of the messages read here (ingest.proto).
const (
	fieldRequestHello = 1
	fieldRequestBatch = 2

	fieldBatchSequence  = 1
	fieldBatchTime      = 2
	fieldBatchProcesses = 3
	fieldBatchSockets   = 4
	fieldBatchOwners    = 5
	fieldBatchStats     = 6
	fieldBatchClosed    = 7
	fieldBatchForgotten = 8
	fieldBatchLoss      = 9
	fieldBatchDNSFlows  = 10
	fieldBatchDNSAns    = 11
	fieldBatchFailed    = 12
	fieldBatchUDP       = 13
	fieldBatchContinued = 14
	fieldBatchAckWanted = 15
)

// wireSocket is a Socket message as read, before its checks.
type wireSocket struct {
	handle, process     uint32
	role                int32
	localAddr           []byte // shares the message's bytes
	localPort           uint32
	remoteAddr          []byte
	remotePort          uint32
	netns               uint32
	newConnection       bool
	cookie              uint64
	nat                 bool // a Translation is present
	natLocal, natRemote []byte
	natLocalPort        uint32
	natRemotePort       uint32
}

// wireStats are the columns of a SocketStats message.
type wireStats struct {
	gaps                                []uint32
	sent, recv, segsSent, segsRecv      []uint64
	retransmits, resetsSent, resetsRecv []uint64
	srtt                                []uint32
}

func (s *wireStats) reset() {
	*s = wireStats{
		gaps: s.gaps[:0], sent: s.sent[:0], recv: s.recv[:0], segsSent: s.segsSent[:0], segsRecv: s.segsRecv[:0],
		retransmits: s.retransmits[:0], resetsSent: s.resetsSent[:0], resetsRecv: s.resetsRecv[:0], srtt: s.srtt[:0],
	}
}

// wireBatch is a request as read from its bytes. Its buffers are reused.
type wireBatch struct {
	hello     bool // the request is a hello (or holds one last)
	batch     bool // the request is a batch
	seq       uint64
	continued bool
	ackWanted bool
	hasTime   bool
	sec       int64
	nanos     int32

	processes  []*ingestv1.Process
	sockets    []wireSocket
	owners     []match.Owner
	stats      wireStats
	closed     []uint32
	forgotten  []uint32
	hasLoss    bool
	loss       *ingestv1.Loss // kept across batches
	dnsFlows   []*ingestv1.DnsFlow
	dnsAnswers []*ingestv1.DnsAnswer
	failed     []*ingestv1.FailedConnect
	udp        []*ingestv1.UdpFlow
}

// resetBatch empties the batch part, keeping its buffers.
func (w *wireBatch) resetBatch() {
	clear(w.processes)
	clear(w.dnsFlows)
	clear(w.dnsAnswers)
	clear(w.failed)
	clear(w.udp)
	w.stats.reset()
	*w = wireBatch{
		processes: w.processes[:0], sockets: w.sockets[:0], owners: w.owners[:0], stats: w.stats, loss: w.loss,
		closed: w.closed[:0], forgotten: w.forgotten[:0],
		dnsFlows: w.dnsFlows[:0], dnsAnswers: w.dnsAnswers[:0], failed: w.failed[:0], udp: w.udp[:0],
	}
}

// shrink lets go of the buffers that grew beyond n entries and more than
// four times what this batch used (match.Oversized).
func (w *wireBatch) shrink(n int) {
	if match.Oversized(cap(w.sockets), len(w.sockets), n) {
		w.sockets = nil
	}
	if match.Oversized(cap(w.owners), len(w.owners), n) {
		w.owners = nil
	}
	if match.Oversized(cap(w.closed), len(w.closed), n) {
		w.closed = nil
	}
	st := &w.stats
	for _, c := range []*[]uint64{&st.sent, &st.recv, &st.segsSent, &st.segsRecv, &st.retransmits, &st.resetsSent, &st.resetsRecv} {
		if match.Oversized(cap(*c), len(*c), n) {
			*c = nil
		}
	}
	if match.Oversized(cap(st.gaps), len(st.gaps), n) {
		st.gaps = nil
	}
	if match.Oversized(cap(st.srtt), len(st.srtt), n) {
		st.srtt = nil
	}
	if match.Oversized(cap(w.processes), len(w.processes), n) {
		w.processes = nil
	}
}

// lossReport returns the batch's loss report, nil when it has none.
func (w *wireBatch) lossReport() *ingestv1.Loss {
	if !w.hasLoss {
		return nil
	}
	return w.loss
}

// consumeTag is protowire.ConsumeTag with proto.Unmarshal's bounds of a
// field number.
func consumeTag(b []byte) (protowire.Number, protowire.Type, int) {
	num, typ, n := protowire.ConsumeTag(b)
	if n >= 0 && num > protowire.MaxValidNumber {
		return 0, 0, -2 // protowire's code of an invalid field number
	}
	return num, typ, n
}

// readRequest reads a StreamRequest from b into w. An error is a message
// that proto.Unmarshal refuses too.
func readRequest(w *wireBatch, b []byte) error {
	w.resetBatch()
	for len(b) > 0 {
		num, typ, n := consumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ == protowire.BytesType && (num == fieldRequestHello || num == fieldRequestBatch) {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			if num == fieldRequestHello {
				// Checked as proto.Unmarshal would; a hello after the
				// first message is refused whatever it holds.
				var h ingestv1.Hello
				if err := proto.Unmarshal(v, &h); err != nil {
					return err
				}
				w.resetBatch()
				w.hello = true
				continue
			}
			if !w.batch {
				w.resetBatch() // the oneof switches to the batch: a new one
			}
			w.batch = true
			if err := readBatch(w, v); err != nil {
				return err
			}
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
	}
	return nil
}

// wireField is one field as read: its number, its wire type and its value,
// a varint (v) or bytes (p); values of other wire types are skipped.
type wireField struct {
	num protowire.Number
	typ protowire.Type
	v   uint64
	p   []byte
}

// nextField reads the next field of b into f and returns the rest of b.
func nextField(b []byte, f *wireField) ([]byte, error) {
	num, typ, n := consumeTag(b)
	if n < 0 {
		return nil, protowire.ParseError(n)
	}
	b = b[n:]
	f.num, f.typ, f.p = num, typ, nil
	switch typ {
	case protowire.VarintType:
		f.v, n = protowire.ConsumeVarint(b)
	case protowire.BytesType:
		f.p, n = protowire.ConsumeBytes(b)
	default:
		n = protowire.ConsumeFieldValue(num, typ, b)
	}
	if n < 0 {
		return nil, protowire.ParseError(n)
	}
	return b[n:], nil
}

func readBatch(w *wireBatch, b []byte) error {
	var f wireField
	var err error
	for len(b) > 0 {
		if b, err = nextField(b, &f); err != nil {
			return err
		}
		switch f.num {
		case fieldBatchSequence:
			if f.typ == protowire.VarintType {
				w.seq = f.v
			}
		case fieldBatchTime:
			if f.typ == protowire.BytesType {
				w.hasTime = true
				if err := readTimestamp(w, f.p); err != nil {
					return err
				}
			}
		case fieldBatchSockets:
			if f.typ == protowire.BytesType {
				w.sockets = append(w.sockets, wireSocket{})
				if err := readSocket(&w.sockets[len(w.sockets)-1], f.p); err != nil {
					return err
				}
			}
		case fieldBatchOwners:
			if f.typ == protowire.BytesType {
				o, err := readOwner(f.p)
				if err != nil {
					return err
				}
				w.owners = append(w.owners, o)
			}
		case fieldBatchStats:
			if f.typ == protowire.BytesType {
				if err := readStats(&w.stats, f.p); err != nil {
					return err
				}
			}
		case fieldBatchClosed:
			if w.closed, err = appendUint32s(w.closed, &f); err != nil {
				return err
			}
		case fieldBatchForgotten:
			if w.forgotten, err = appendUint32s(w.forgotten, &f); err != nil {
				return err
			}
		case fieldBatchLoss:
			if f.typ == protowire.BytesType {
				if w.loss == nil {
					w.loss = new(ingestv1.Loss)
				}
				if !w.hasLoss {
					w.loss.Reset()
				}
				w.hasLoss = true
				if err := (proto.UnmarshalOptions{Merge: true}).Unmarshal(f.p, w.loss); err != nil {
					return err
				}
			}
		case fieldBatchProcesses:
			if f.typ == protowire.BytesType {
				if err := appendMessage(&w.processes, f.p); err != nil {
					return err
				}
			}
		case fieldBatchDNSFlows:
			if f.typ == protowire.BytesType {
				if err := appendMessage(&w.dnsFlows, f.p); err != nil {
					return err
				}
			}
		case fieldBatchDNSAns:
			if f.typ == protowire.BytesType {
				if err := appendMessage(&w.dnsAnswers, f.p); err != nil {
					return err
				}
			}
		case fieldBatchFailed:
			if f.typ == protowire.BytesType {
				if err := appendMessage(&w.failed, f.p); err != nil {
					return err
				}
			}
		case fieldBatchUDP:
			if f.typ == protowire.BytesType {
				if err := appendMessage(&w.udp, f.p); err != nil {
					return err
				}
			}
		case fieldBatchContinued:
			if f.typ == protowire.VarintType {
				w.continued = f.v != 0
			}
		case fieldBatchAckWanted:
			if f.typ == protowire.VarintType {
				w.ackWanted = f.v != 0
			}
		}
	}
	return nil
}

func readTimestamp(w *wireBatch, b []byte) error {
	var f wireField
	var err error
	for len(b) > 0 {
		if b, err = nextField(b, &f); err != nil {
			return err
		}
		if f.typ != protowire.VarintType {
			continue
		}
		switch f.num {
		case 1:
			w.sec = int64(f.v)
		case 2:
			w.nanos = int32(f.v)
		}
	}
	return nil
}

func readSocket(s *wireSocket, b []byte) error {
	var f wireField
	var err error
	for len(b) > 0 {
		if b, err = nextField(b, &f); err != nil {
			return err
		}
		if f.num == 11 { // nat: a Translation, merged when repeated
			if f.typ == protowire.BytesType {
				s.nat = true
				if err := readTranslation(s, f.p); err != nil {
					return err
				}
			}
			continue
		}
		switch f.typ {
		case protowire.VarintType:
			switch f.num {
			case 1:
				s.handle = uint32(f.v)
			case 2:
				s.process = uint32(f.v)
			case 3:
				s.role = int32(f.v)
			case 5:
				s.localPort = uint32(f.v)
			case 7:
				s.remotePort = uint32(f.v)
			case 8:
				s.netns = uint32(f.v)
			case 9:
				s.newConnection = f.v != 0
			case 10:
				s.cookie = f.v
			}
		case protowire.BytesType:
			switch f.num {
			case 4:
				s.localAddr = f.p
			case 6:
				s.remoteAddr = f.p
			}
		}
	}
	return nil
}

func readTranslation(s *wireSocket, b []byte) error {
	var f wireField
	var err error
	for len(b) > 0 {
		if b, err = nextField(b, &f); err != nil {
			return err
		}
		switch f.typ {
		case protowire.VarintType:
			switch f.num {
			case 2:
				s.natLocalPort = uint32(f.v)
			case 4:
				s.natRemotePort = uint32(f.v)
			}
		case protowire.BytesType:
			switch f.num {
			case 1:
				s.natLocal = f.p
			case 3:
				s.natRemote = f.p
			}
		}
	}
	return nil
}

func readOwner(b []byte) (match.Owner, error) {
	var o match.Owner
	var f wireField
	var err error
	for len(b) > 0 {
		if b, err = nextField(b, &f); err != nil {
			return o, err
		}
		if f.typ != protowire.VarintType {
			continue
		}
		switch f.num {
		case 1:
			o.Socket = uint32(f.v)
		case 2:
			o.Process = uint32(f.v)
		}
	}
	return o, nil
}

func readStats(s *wireStats, b []byte) error {
	var f wireField
	var err error
	for len(b) > 0 {
		if b, err = nextField(b, &f); err != nil {
			return err
		}
		switch f.num {
		case 1:
			s.gaps, err = appendUint32s(s.gaps, &f)
		case 2:
			s.sent, err = appendUint64s(s.sent, &f)
		case 3:
			s.recv, err = appendUint64s(s.recv, &f)
		case 4:
			s.segsSent, err = appendUint64s(s.segsSent, &f)
		case 5:
			s.segsRecv, err = appendUint64s(s.segsRecv, &f)
		case 6:
			s.retransmits, err = appendUint64s(s.retransmits, &f)
		case 7:
			s.resetsSent, err = appendUint64s(s.resetsSent, &f)
		case 8:
			s.resetsRecv, err = appendUint64s(s.resetsRecv, &f)
		case 9:
			s.srtt, err = appendUint32s(s.srtt, &f)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// appendUint64s appends the values of a repeated uint64 field, packed or
// not; a field of another wire type is skipped.
func appendUint64s(dst []uint64, f *wireField) ([]uint64, error) {
	switch f.typ {
	case protowire.VarintType:
		return append(dst, f.v), nil
	case protowire.BytesType:
		b := f.p
		for len(b) > 0 {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return dst, protowire.ParseError(n)
			}
			dst = append(dst, v)
			b = b[n:]
		}
	}
	return dst, nil
}

// appendUint32s is appendUint64s for uint32 fields: each value keeps its
// low 32 bits, as proto.Unmarshal does.
func appendUint32s(dst []uint32, f *wireField) ([]uint32, error) {
	switch f.typ {
	case protowire.VarintType:
		return append(dst, uint32(f.v)), nil
	case protowire.BytesType:
		b := f.p
		for len(b) > 0 {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return dst, protowire.ParseError(n)
			}
			dst = append(dst, uint32(v))
			b = b[n:]
		}
	}
	return dst, nil
}

// decodeWire checks a batch read by readRequest and decodes it into dst,
// as DecodeBatch does with an unmarshalled one. dst's stats columns share
// w's buffers.
func decodeWire(dst *match.Batch, w *wireBatch) error {
	dst.Reset()
	seq := w.seq
	dst.Sequence, dst.Continued = seq, w.continued
	if w.hasTime {
		dst.Time = time.Unix(w.sec, int64(w.nanos)).UTC()
	}
	for _, p := range w.processes {
		dst.Processes = append(dst.Processes, decodeProcess(p))
	}
	for i := range w.sockets {
		s := &w.sockets[i]
		k, err := decodeSocket(s)
		if err != nil {
			return fmt.Errorf("batch %d: socket %d: %w", seq, i, err)
		}
		dst.Sockets = append(dst.Sockets, k)
	}
	dst.Owners = append(dst.Owners, w.owners...)
	st := &w.stats
	if err := decodeStatsColumns(&dst.Stats, st.gaps, st.sent, st.recv, st.segsSent, st.segsRecv,
		st.retransmits, st.resetsSent, st.resetsRecv, st.srtt); err != nil {
		return fmt.Errorf("batch %d: %w", seq, err)
	}
	if err := decodeFailed(dst, seq, w.failed); err != nil {
		return err
	}
	if err := decodeUDP(dst, seq, w.udp); err != nil {
		return err
	}
	dst.Closed = append(dst.Closed, w.closed...)
	dst.Forgotten = append(dst.Forgotten, w.forgotten...)
	if err := decodeDNSParts(dst, w.dnsFlows, w.dnsAnswers); err != nil {
		return fmt.Errorf("batch %d: %w", seq, err)
	}
	return nil
}

// request is what a stream needs to read and decode one request: its
// bytes, the request as read and the decoded batch. Requests are pooled,
// so that a thousand streams share the few in use at a time instead of
// keeping one each.
type request struct {
	data  []byte
	wire  wireBatch
	batch match.Batch
}

var requests = sync.Pool{New: func() any { return new(request) }}

// spareRequests keep a few requests, with the buffers they grew, across
// garbage collections, which empty the pool: a node under connection churn
// sends large batches, and one stream's requests were grown again after
// every collection (page faults, about a tenth of the reducer's CPU).
// Buffers a later small batch used little of are let go at its putRequest.
var spareRequests = make(chan *request, 4)

// largeRequests keep, whole, the requests that messages larger than
// bigBuffer used, for the next large ones only. A node under connection
// churn alternates large reports (its buffer of closed sockets full) with
// smaller ones (the tick that follows), or a split report's large pieces
// with its tail: in the shared pool a smaller one let the large buffers
// go, and each large one grew them again by doubling, a fifth of the
// reducer's CPU under churn. Two, so that what they keep is bounded (by
// two of the largest messages' decodings).
var largeRequests = make(chan *request, 2)

// getRequest returns a request for a message of size bytes.
func getRequest(size int) *request {
	if size > bigBuffer {
		select {
		case r := <-largeRequests:
			return r
		default:
		}
	}
	select {
	case r := <-spareRequests:
		return r
	default:
		return requests.Get().(*request)
	}
}

// putRequest returns r to the pool: whole among the large requests if its
// message was large and there is room, or else without the buffers that a
// snapshot made large and this request used little of (match.Oversized).
func putRequest(r *request) {
	large := len(r.data) > bigBuffer
	if !large {
		r.shrink()
	}
	r.wire.resetBatch()
	r.batch.Reset()
	if large {
		select {
		case largeRequests <- r:
			return
		default: // no room: every large buffer goes
			r.data = r.data[:0]
			r.shrink()
		}
	}
	select {
	case spareRequests <- r:
	default:
		requests.Put(r)
	}
}

// shrink lets go of r's buffers that grew beyond the sizes of a small
// message and more than four times what it used (match.Oversized).
func (r *request) shrink() {
	if match.Oversized(cap(r.data), len(r.data), bigBuffer) {
		r.data = nil
	}
	r.wire.shrink(bigBatch)
	r.batch.Shrink(bigBatch)
}

// appendMessage decodes one embedded message of a batch's rarer parts
// (processes, DNS, failed connects, UDP) and appends it to dst.
func appendMessage[T any, PT interface {
	*T
	proto.Message
}](dst *[]PT, b []byte) error {
	m := PT(new(T))
	if err := proto.Unmarshal(b, m); err != nil {
		return err
	}
	*dst = append(*dst, m)
	return nil
}
