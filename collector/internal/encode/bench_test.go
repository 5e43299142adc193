package encode

import (
	"bytes"
	"compress/gzip"
	"math"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/weir-project/weir/collector/internal/probe"
)

// BenchmarkReport measures Report in steady state: the same 10k sockets,
// most of them with new traffic every interval. It reports the encoded size
// per socket update, raw and gzip-compressed as the stream sends it. The
// traffic is varied so that the figure is not flattered by repeated values:
// each socket has its own rate, message sizes and MSS; request/response
// sockets move bytes both ways, bulk ones only send or only receive, and
// keepalive ones move a few bytes now and then.
func BenchmarkReport(b *testing.B) {
	const n = 10000
	enc, tab, _ := newEncoder(b, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	smp := make(samples, n)
	flows := make([]flow, n)
	for i := range smp {
		cookie := uint64(i + 1)
		role := probe.RoleClient
		if rng.IntN(2) == 0 {
			role = probe.RoleServer
		}
		apply(b, tab, open(cookie, role, uint16(i+1), curl, probe.Counters{}))
		smp[i] = sample(cookie, curl, probe.Counters{})
		flows[i] = newFlow(rng, role)
	}
	enc.Report(now)
	var wantUpdates int
	advance := func() {
		for i := range smp {
			if flows[i].advance(rng, &smp[i].Counters) {
				wantUpdates++
			}
		}
		if err := tab.Poll(smp); err != nil {
			b.Fatal(err)
		}
	}
	var raw, compressed, updates int
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		advance()
		b.StartTimer()
		batch := enc.Report(now)
		// The reducer acks it: the stream confirms it before the next.
		tab.Confirm(tab.Drains())
		b.StopTimer()
		updates += len(batch.Stats.HandleGaps)
		data, err := proto.Marshal(batch)
		if err != nil {
			b.Fatal(err)
		}
		raw += len(data)
		buf.Reset()
		zw.Reset(&buf)
		if _, err := zw.Write(data); err != nil {
			b.Fatal(err)
		}
		if err := zw.Close(); err != nil {
			b.Fatal(err)
		}
		compressed += buf.Len()
		b.StartTimer()
	}
	if updates != wantUpdates {
		b.Fatalf("%d updates, want %d", updates, wantUpdates)
	}
	b.ReportMetric(float64(updates)/float64(b.N), "updates/op")
	b.ReportMetric(float64(raw)/float64(updates), "B/update")
	b.ReportMetric(float64(compressed)/float64(updates), "gzB/update")
}

type flowKind uint8

const (
	flowRequestResponse flowKind = iota // bytes both ways, small one way, larger the other
	flowSendOnly                        // bulk upload, log shipping: nothing received but ACKs
	flowReceiveOnly                     // bulk download, subscriptions
	flowKeepalive                       // a few bytes now and then
)

// flow is the traffic pattern of one benchmark socket.
type flow struct {
	kind   flowKind
	server bool    // the larger messages are sent, not received
	mss    uint64  // segment size of this path
	rate   float64 // mean messages per interval
	size   float64 // median size of the larger messages, bytes
}

func newFlow(rng *rand.Rand, role probe.Role) flow {
	f := flow{server: role == probe.RoleServer}
	switch r := rng.IntN(100); {
	case r < 55:
		f.kind = flowRequestResponse
	case r < 70:
		f.kind = flowSendOnly
	case r < 85:
		f.kind = flowReceiveOnly
	default:
		f.kind = flowKeepalive
	}
	// Most paths are Ethernet with TCP timestamps; some plain, some jumbo
	// frames, some loopback.
	switch r := rng.IntN(100); {
	case r < 60:
		f.mss = 1448
	case r < 75:
		f.mss = 1460
	case r < 90:
		f.mss = 8948
	default:
		f.mss = 65483
	}
	f.rate = min(lognormal(rng, 1.0, 1.0), 100) // median e ≈ 2.7 messages per interval
	f.size = lognormal(rng, 8.3, 1.5)           // median ≈ 4 KB, with a long tail
	return f
}

// poisson draws from a Poisson distribution of mean lambda (Knuth's method,
// fine for small means).
func poisson(rng *rand.Rand, lambda float64) int {
	limit, k, p := math.Exp(-lambda), 0, rng.Float64()
	for p > limit {
		k++
		p *= rng.Float64()
	}
	return k
}

func lognormal(rng *rand.Rand, mu, sigma float64) float64 {
	return math.Exp(mu + sigma*rng.NormFloat64())
}

// segments is how many segments carry a message of size bytes: full
// segments, the remainder, and now and then an extra one where a write
// boundary split a segment.
func (f flow) segments(rng *rand.Rand, size uint64) uint32 {
	segs := (size + f.mss - 1) / f.mss
	if rng.IntN(4) == 0 {
		segs++
	}
	return uint32(segs)
}

// advance adds one interval of traffic to c and says whether any counter
// moved.
func (f flow) advance(rng *rand.Rand, c *probe.Counters) bool {
	before := *c
	msgs := poisson(rng, f.rate)
	for range msgs {
		big := uint64(lognormal(rng, math.Log(f.size), 0.8)) + 1
		small := 80 + rng.Uint64N(1200)
		var sent, recv uint64
		switch f.kind {
		case flowRequestResponse:
			sent, recv = small, big
			if f.server {
				sent, recv = big, small
			}
		case flowSendOnly:
			sent = big * 4
		case flowReceiveOnly:
			recv = big * 4
		case flowKeepalive:
			if rng.IntN(3) != 0 {
				continue
			}
			sent, recv = 8+rng.Uint64N(64), 8+rng.Uint64N(64)
		}
		if sent > 0 {
			c.BytesAcked += sent
			c.SegsDelivered += f.segments(rng, sent)
		}
		if recv > 0 {
			c.BytesReceived += recv
			c.DataSegsIn += f.segments(rng, recv)
		}
	}
	return *c != before
}

// BenchmarkChurnClose measures what one short connection costs the table
// and the encoder: its close event (established and closed between two
// polls, so the close is all there is of it) applied to the table, and its
// share of a report every 2,000 connections (announcement, final delta,
// close) with the batch marshalled as the stream sends it. 1,000 other
// sockets stay open.
func BenchmarkChurnClose(b *testing.B) {
	const perReport = 2000
	enc, tab, _ := newEncoder(b, nil)
	for i := range 1000 {
		apply(b, tab, open(uint64(1_000_000+i), probe.RoleServer, 80, nginx, probe.Counters{}))
	}
	enc.Report(now)
	cookie := uint64(1)
	var wire int
	b.ReportAllocs()
	for b.Loop() {
		ev := probe.Event{Kind: probe.EventClose, Endpoint: endpoint(cookie, probe.RoleClient, uint16(cookie)), Owner: curl,
			Counters: ctr(200, 1000, 2, 2)}
		tab.Apply(ev)
		if cookie++; cookie%perReport == 0 {
			data, err := proto.Marshal(enc.Report(now))
			if err != nil {
				b.Fatal(err)
			}
			tab.Confirm(tab.Drains()) // acked, as by a reducer
			wire += len(data)
		}
	}
	b.ReportMetric(float64(wire)/float64(cookie), "B/conn")
}
