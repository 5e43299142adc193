package sockets

import (
	"bytes"
	"compress/gzip"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/weir-project/weir/collector/internal/probe"
)

// BenchmarkReport measures Report in steady state: the same 10k sockets,
// each with a small new delta every interval. It reports the encoded size
// per socket update, raw and gzip-compressed as the stream sends it.
func BenchmarkReport(b *testing.B) {
	const n = 10000
	tab, _ := newTable(b, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	smp := make(samples, n)
	for i := range smp {
		sock := uint64(i + 1)
		tab.Apply(open(sock, probe.RoleClient, uint16(i+1), curl, probe.Counters{}))
		smp[i] = probe.Sample{Sock: sock, Owner: curl}
	}
	tab.Report(now)
	advance := func() {
		// Small request/response traffic: a few hundred bytes and a
		// segment or two each way per interval.
		for i := range smp {
			c := &smp[i].Counters
			c.BytesAcked += 100 + rng.Uint64N(400)
			c.BytesReceived += 100 + rng.Uint64N(1500)
			c.SegsDelivered += 1 + rng.Uint64N(2)
			c.DataSegsIn += 1 + rng.Uint64N(2)
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
		batch := tab.Report(now)
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
	if updates != b.N*n {
		b.Fatalf("%d updates, want %d", updates, b.N*n)
	}
	b.ReportMetric(float64(raw)/float64(updates), "B/update")
	b.ReportMetric(float64(compressed)/float64(updates), "gzB/update")
}
