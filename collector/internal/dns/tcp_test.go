package dns

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/weir-project/weir/collector/internal/probe"
)

// framed is msg with its two-byte length before it.
func framed(msg []byte) []byte {
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(msg))), msg...)
}

// segment is a TCP segment of a DNS stream, at seq, cut to 512 bytes as
// the kernel sends it.
func segment(at time.Duration, egress bool, seq uint32, payload []byte) probe.DNSEvent {
	ev := probe.DNSEvent{Time: at, Cookie: 5, CgroupID: 9, TCP: true, Seq: seq, Total: len(payload), Payload: payload[:min(len(payload), 512)]}
	if egress {
		ev.Egress, ev.PID, ev.NetNS, ev.Comm, ev.Src, ev.Dst = true, 7, 4026531840, "dig", client, server
	} else {
		ev.Src, ev.Dst = server, client
	}
	return ev
}

func rcodes(t *testing.T, tr *Tracker) (map[uint32]uint64, uint64, int) {
	t.Helper()
	flows, _, _ := tr.Drain()
	got := map[uint32]uint64{}
	var timeouts uint64
	n := 0
	for _, f := range flows {
		for _, r := range f.Responses {
			got[r.Rcode] += r.Count
		}
		timeouts += f.Timeouts
		n += len(f.DurationsUs)
	}
	return got, timeouts, n
}

// TestTCP: queries and answers over TCP, with the length prefix and the
// message in separate segments, two messages in one segment, a message
// split across three, a retransmission, an answer cut by the capture (its
// header and first addresses still count), and a stream that loses a
// segment (the rest of it dropped and counted).
func TestTCP(t *testing.T) {
	tr, now := newTracker(t, DefaultConfig())
	at := 90 * time.Second
	q1 := framed(message(t, 1, false, 0, "api.example.com.", dnsmessage.TypeA, 0))
	q2 := framed(message(t, 2, false, 0, "nothere.example.com.", dnsmessage.TypeA, 0))
	var addrs []netip.Addr
	for i := range 60 {
		addrs = append(addrs, netip.AddrFrom4([4]byte{198, 18, 7, byte(i)}))
	}
	a1 := framed(message(t, 1, true, dnsmessage.RCodeSuccess, "api.example.com.", dnsmessage.TypeA, 30, addrs...))
	if len(a1) <= 512 {
		t.Fatalf("answer of %d bytes: want one the capture cuts", len(a1))
	}
	a2 := framed(message(t, 2, true, dnsmessage.RCodeNameError, "nothere.example.com.", dnsmessage.TypeA, 0))

	// Queries: two in one segment, then its retransmission.
	both := append(append([]byte(nil), q1...), q2...)
	tr.Apply(segment(at, true, 1000, both))
	tr.Apply(segment(at, true, 1000, both))
	// Answers: the length prefix alone, then the first answer (cut at 512
	// bytes by the capture), then the second split in two.
	seq := uint32(5000)
	tr.Apply(segment(at+time.Millisecond, false, seq, a1[:2]))
	seq += 2
	tr.Apply(segment(at+time.Millisecond, false, seq, a1[2:]))
	seq += uint32(len(a1) - 2)
	tr.Apply(segment(at+2*time.Millisecond, false, seq, a2[:7]))
	tr.Apply(segment(at+2*time.Millisecond, false, seq+7, a2[7:]))

	got, timeouts, durations := rcodes(t, tr)
	if got[0] != 1 || got[3] != 1 || len(got) != 2 || timeouts != 0 || durations != 2 {
		t.Errorf("responses %v, timeouts %d, durations %d; want NOERROR 1, NXDOMAIN 1, 0, 2", got, timeouts, durations)
	}
	if n := testutil.ToFloat64(tr.m.tcpMessages); n != 4 {
		t.Errorf("%v messages reassembled, want 4", n)
	}
	if n := testutil.ToFloat64(tr.m.parseErrors); n != 0 {
		t.Errorf("%v parse errors", n)
	}

	// A stream that misses a segment: what follows is dropped, counted.
	tr.Apply(segment(at, true, 1000+uint32(len(both)), q1[:5]))
	tr.Apply(segment(at, true, 1000+uint32(len(both))+9, q1[9:]))
	tr.Apply(segment(at, true, 1000+uint32(len(both))+uint32(len(q1)), q2))
	if n := testutil.ToFloat64(tr.m.tcpDropped.WithLabelValues("gap")); n != 2 {
		t.Errorf("%v segments dropped after a gap, want 2", n)
	}
	if n := testutil.ToFloat64(tr.m.tcpMessages); n != 4 {
		t.Errorf("%v messages reassembled, want still 4", n)
	}

	// Quiet streams are forgotten.
	*now += time.Hour
	tr.Drain()
	if len(tr.streams) != 0 {
		t.Errorf("%d streams kept", len(tr.streams))
	}
}

// TestTCPStreamCap: streams beyond the cap are dropped and counted.
func TestTCPStreamCap(t *testing.T) {
	cfg := DefaultConfig()
	cfg.MaxStreams = 1
	tr, _ := newTracker(t, cfg)
	q1 := framed(message(t, 1, false, 0, "api.example.com.", dnsmessage.TypeA, 0))
	tr.Apply(segment(time.Second, true, 1, q1))
	ev := segment(time.Second, true, 1, q1)
	ev.Cookie = 6
	tr.Apply(ev)
	if n := testutil.ToFloat64(tr.m.tcpDropped.WithLabelValues("stream_cap")); n != 1 {
		t.Errorf("%v segments over the stream cap, want 1", n)
	}
}

func FuzzTCP(f *testing.F) {
	f.Add([]byte{0, 12, 0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0}, uint32(0), uint16(14), false)
	f.Fuzz(func(t *testing.T, payload []byte, seq uint32, total uint16, egress bool) {
		tr, _ := newTracker(t, DefaultConfig())
		ev := segment(time.Second, egress, seq, payload)
		ev.Total = max(int(total), len(ev.Payload))
		tr.Apply(ev)
		ev.Seq += uint32(ev.Total)
		tr.Apply(ev)
		tr.Drain()
	})
}
