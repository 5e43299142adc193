package fleet

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/golang/snappy"
	"github.com/klauspost/compress/zstd"
	"google.golang.org/protobuf/proto"

	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

// steadyBatches returns the wire messages of one node with 1,000 sockets
// over 20 intervals: each interval 10% of its sockets change and 1% of its
// connections close and reopen, as in the fleet scenario; and the number of
// stats entries (updates) they carry.
func steadyBatches(tb testing.TB) (msgs [][]byte, updates int) {
	tb.Helper()
	rng := rand.New(rand.NewPCG(1, 2))
	res := &Result{Edges: make(map[Edge]*Want)}
	cfg := Config{}
	n := &node{id: 1, name: "fleet-0001", addr: netip.MustParseAddr("198.18.0.2"), live: make(map[uint32]*sock), b: newBuilder()}
	peer := &node{id: 2, name: "fleet-0002", addr: netip.MustParseAddr("198.18.0.3"), live: make(map[uint32]*sock), b: newBuilder()}
	var conns []*conn
	for i := range 1000 {
		c := newConn(cfg, n, peer, netip.AddrPortFrom(n.addr, uint16(10000+i)), netip.AddrPortFrom(peer.addr, 8080))
		c.open(res)
		c.traffic(res, rng)
		conns = append(conns, c)
	}
	end := time.Now()
	for t := range 21 {
		if t > 0 {
			for range 10 {
				c := conns[rng.IntN(len(conns))]
				c.close()
				c.reopen()
				c.open(res)
				c.traffic(res, rng)
			}
			for range 100 {
				conns[rng.IntN(len(conns))].traffic(res, rng)
			}
		}
		b := n.flush(end.Add(time.Duration(t)*time.Second), t == 0)
		peer.flush(end, false)
		if t == 0 {
			continue // the snapshot is not the steady state
		}
		b.Sequence = uint64(t + 1)
		wire, err := proto.Marshal(&ingestv1.StreamRequest{Kind: &ingestv1.StreamRequest_Batch{Batch: b}})
		if err != nil {
			tb.Fatal(err)
		}
		msgs = append(msgs, wire)
		updates += len(b.GetStats().GetHandleGaps())
	}
	return msgs, updates
}

type codec struct {
	name       string
	compress   func([]byte) []byte
	decompress func([]byte) []byte
}

func codecs(tb testing.TB) []codec {
	zenc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
	zdec, _ := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1))
	var gbuf bytes.Buffer
	gw := gzip.NewWriter(&gbuf)
	return []codec{
		{"none", func(b []byte) []byte { return b }, func(b []byte) []byte { return b }},
		{"gzip", func(b []byte) []byte {
			gbuf.Reset()
			gw.Reset(&gbuf)
			if _, err := gw.Write(b); err != nil {
				tb.Fatal(err)
			}
			if err := gw.Close(); err != nil {
				tb.Fatal(err)
			}
			return bytes.Clone(gbuf.Bytes())
		}, func(b []byte) []byte {
			r, err := gzip.NewReader(bytes.NewReader(b))
			if err != nil {
				tb.Fatal(err)
			}
			out, err := io.ReadAll(r)
			if err != nil {
				tb.Fatal(err)
			}
			return out
		}},
		{"zstd", func(b []byte) []byte { return zenc.EncodeAll(b, nil) }, func(b []byte) []byte {
			out, err := zdec.DecodeAll(b, nil)
			if err != nil {
				tb.Fatal(err)
			}
			return out
		}},
		{"snappy", func(b []byte) []byte { return snappy.Encode(nil, b) }, func(b []byte) []byte {
			out, err := snappy.Decode(nil, b)
			if err != nil {
				tb.Fatal(err)
			}
			return out
		}},
	}
}

// BenchmarkCodec compares the compressors on steady-state batches of the
// fleet scenario: wire bytes per update, and the reducer's cost to
// decompress (ns per update), which is what P3 pays.
func BenchmarkCodec(b *testing.B) {
	msgs, updates := steadyBatches(b)
	raw := 0
	for _, m := range msgs {
		raw += len(m)
	}
	for _, c := range codecs(b) {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			wire := 0
			packed := make([][]byte, len(msgs))
			for i, m := range msgs {
				packed[i] = c.compress(m)
				wire += len(packed[i])
			}
			start := time.Now()
			for range b.N {
				for _, m := range msgs {
					c.compress(m)
				}
			}
			compress := time.Since(start)
			start = time.Now()
			for range b.N {
				for _, p := range packed {
					c.decompress(p)
				}
			}
			decompress := time.Since(start)
			per := float64(b.N * updates)
			b.ReportMetric(float64(wire)/float64(updates), "wire-B/update")
			b.ReportMetric(float64(raw)/float64(updates), "raw-B/update")
			b.ReportMetric(float64(compress.Nanoseconds())/per, "compress-ns/update")
			b.ReportMetric(float64(decompress.Nanoseconds())/per, "decompress-ns/update")
			if testing.Verbose() {
				fmt.Printf("codec %s: %.2f wire B/update, compress %.1f ns/update, decompress %.1f ns/update\n",
					c.name, float64(wire)/float64(updates), float64(compress.Nanoseconds())/per, float64(decompress.Nanoseconds())/per)
			}
		})
	}
}
