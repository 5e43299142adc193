package dns

import (
	"encoding/binary"
	"time"

	"github.com/weir-project/weir/collector/internal/probe"
)

// DNS over TCP (RFC 1035 4.2.2, RFC 7766) sends each message with a
// two-byte length before it, and a message may span segments, or a segment
// hold several messages. The kernel sends each segment's payload (its first
// 512 bytes) with its sequence number and its length; the stream of each
// socket and direction is reassembled here:
//
//   - a retransmitted segment (or the part of one already seen) is skipped
//     by its sequence number;
//   - a segment cut by the capture leaves a hole: the message it falls in
//     is parsed from the bytes before the hole (a message cut in its
//     answers still gives its id, rcode, question and first addresses),
//     and the stream goes on at the next message by the length prefix;
//   - a segment missing (lost to a full ring, or a hole in a length
//     prefix) loses the stream's place: the rest of that direction is
//     dropped and counted;
//   - at most MaxStreams streams are followed, each keeping at most
//     maxKeep bytes of the message in progress; a stream quiet for twice
//     the query timeout is forgotten.

// maxKeep is how much of one message a stream keeps: enough for the
// header, the question and dozens of addresses.
const maxKeep = 4096

// streamKey is one direction of one TCP socket.
type streamKey struct {
	cookie uint64
	egress bool
}

// stream is the reassembly state of one direction of a TCP socket.
type stream struct {
	next     uint32        // sequence number of the next byte expected
	last     time.Duration // monotonic time of its last segment
	lost     bool          // lost its place: the rest is dropped
	lenBuf   [2]byte       // the length prefix in progress
	lenHave  int           // bytes of lenBuf filled
	msgLen   int           // length of the message in progress; 0: reading a prefix
	msgSeen  int           // bytes of the message consumed
	msg      []byte        // its first bytes, up to the first hole or maxKeep
	msgBroke bool          // a hole in the message: msg is its prefix
}

// tcpSegment reassembles a TCP segment's payload into messages and applies
// each.
func (t *Tracker) tcpSegment(ev probe.DNSEvent) {
	k := streamKey{cookie: ev.Cookie, egress: ev.Egress}
	t.mu.Lock()
	st := t.streams[k]
	if st == nil {
		if len(t.streams) >= t.cfg.MaxStreams {
			t.mu.Unlock()
			t.m.tcpDropped.WithLabelValues("stream_cap").Inc()
			return
		}
		// The first payload of a direction starts a message.
		st = &stream{next: ev.Seq}
		t.streams[k] = st
	}
	st.last = ev.Time
	if st.lost {
		t.mu.Unlock()
		t.m.tcpDropped.WithLabelValues("gap").Inc()
		return
	}
	data, total := ev.Payload, ev.Total
	// Skip what was seen already: a retransmission, in whole or in part.
	if d := st.next - ev.Seq; d != 0 {
		if d >= 1<<31 {
			// A segment after a gap: its predecessor never came.
			st.lost, st.msg = true, nil
			t.mu.Unlock()
			t.m.tcpDropped.WithLabelValues("gap").Inc()
			return
		}
		if int(d) >= total {
			t.mu.Unlock()
			return // all seen
		}
		total -= int(d)
		data = data[min(int(d), len(data)):]
	}
	st.next = ev.Seq + uint32(ev.Total)
	var done [][]byte
	done, ok := st.feed(data, total, done)
	if !ok {
		st.lost, st.msg = true, nil
		t.m.tcpDropped.WithLabelValues("gap").Inc()
	}
	t.mu.Unlock()
	for _, msg := range done {
		t.m.tcpMessages.Inc()
		ev.Payload = msg
		t.message(ev)
	}
}

// feed consumes a payload of total bytes of which data are the first,
// appending the messages it completes to done. It returns false when a hole
// falls in a length prefix: the stream's place is lost.
func (st *stream) feed(data []byte, total int, done [][]byte) ([][]byte, bool) {
	for total > 0 {
		if st.msgLen == 0 {
			if len(data) == 0 {
				return done, false // a hole in the length prefix
			}
			st.lenBuf[st.lenHave] = data[0]
			st.lenHave++
			data, total = data[1:], total-1
			if st.lenHave < 2 {
				continue
			}
			st.lenHave = 0
			st.msgLen = int(binary.BigEndian.Uint16(st.lenBuf[:]))
			st.msgSeen, st.msg, st.msgBroke = 0, st.msg[:0], false
			if st.msgLen == 0 {
				continue // an empty message: nothing to parse
			}
			continue
		}
		n := min(st.msgLen-st.msgSeen, total)
		have := min(n, len(data))
		if !st.msgBroke {
			keep := min(have, maxKeep-len(st.msg))
			st.msg = append(st.msg, data[:max(keep, 0)]...)
			if have < n {
				st.msgBroke = true // the capture was cut
			}
		}
		data, total = data[have:], total-n
		st.msgSeen += n
		if st.msgSeen == st.msgLen {
			done = append(done, append([]byte(nil), st.msg...))
			st.msgLen, st.msgSeen = 0, 0
			st.msg = st.msg[:0]
		}
	}
	return done, true
}

// expireStreams forgets the streams quiet for twice the query timeout. t.mu
// is held.
func (t *Tracker) expireStreams(now time.Duration) {
	for k, st := range t.streams {
		if now-st.last > 2*t.cfg.Timeout {
			delete(t.streams, k)
		}
	}
	t.m.tcpStreams.Set(float64(len(t.streams)))
}
