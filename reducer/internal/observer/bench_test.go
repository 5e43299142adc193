package observer

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	observerv1 "github.com/weir-project/weir/proto/weir/observer/v1"
	"github.com/weir-project/weir/reducer/internal/match"
)

// ingestLoad is an engine with conns joined connections between two nodes
// and the stats batches that count traffic on all of them.
type ingestLoad struct {
	engine  *match.Engine
	nodes   [2]*match.Session
	batches [2]match.Batch
	seq     [2]uint64
	i       int
}

func newIngestLoad(b *testing.B, reg prometheus.Registerer, conns int) *ingestLoad {
	e, err := match.New(match.Config{SeriesTTL: time.Hour, SessionTTL: time.Hour}, reg, discard)
	if err != nil {
		b.Fatal(err)
	}
	l := &ingestLoad{engine: e}
	client, server := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	for side := range l.nodes {
		s, err := e.Open(match.Hello{Node: []string{"node-a", "node-b"}[side], BootID: "b", Epoch: 1}, nil)
		if err != nil {
			b.Fatal(err)
		}
		l.nodes[side] = s
		batch := match.Batch{Sequence: 1, Processes: []match.Process{{Handle: 1, Comm: []string{"client", "server"}[side]}}}
		for i := range conns {
			c, sv := netip.AddrPortFrom(client, uint16(10000+i)), netip.AddrPortFrom(server, 443)
			k := match.Socket{Handle: uint32(i + 1), Process: 1, Role: match.RoleClient, Local: c, Remote: sv, NewConnection: true}
			if side == 1 {
				k = match.Socket{Handle: uint32(i + 1), Process: 1, Role: match.RoleServer, Local: sv, Remote: c, NewConnection: true}
			}
			batch.Sockets = append(batch.Sockets, k)
		}
		if err := e.Apply(s, &batch); err != nil {
			b.Fatal(err)
		}
		l.seq[side] = 1
		st := &l.batches[side].Stats
		for i := range conns {
			st.Handles = append(st.Handles, uint32(i+1))
			st.BytesSent = append(st.BytesSent, uint64(100+side))
			st.BytesReceived = append(st.BytesReceived, uint64(101-side))
			st.SegmentsSent = append(st.SegmentsSent, 2)
			st.SegmentsReceived = append(st.SegmentsReceived, 2)
		}
	}
	return l
}

// apply applies the next batch; every one counts new traffic, so that the
// engine emits an update event per connection and direction.
func (l *ingestLoad) apply(b *testing.B) {
	side := l.i & 1
	l.i++
	l.seq[side]++
	l.batches[side].Sequence = l.seq[side]
	if err := l.engine.Apply(l.nodes[side], &l.batches[side]); err != nil {
		b.Fatal(err)
	}
}

// streams opens n follow streams on addr: all read but the first, which
// never reads (a fixed 64 KiB window, so that it stalls at once).
func streams(b *testing.B, addr string, n int) func() {
	ctx, cancel := context.WithCancel(context.Background())
	var conns []*grpc.ClientConn
	done := make(chan struct{}, n)
	for i := range n {
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if i == 0 {
			opts = append(opts, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
		}
		conn, err := grpc.NewClient(addr, opts...)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, conn)
		s, err := observerv1.NewObserverServiceClient(conn).WatchFlows(ctx, &observerv1.WatchFlowsRequest{Follow: true})
		if err != nil {
			b.Fatal(err)
		}
		go func(stalled bool) {
			defer func() { done <- struct{}{} }()
			if stalled {
				<-ctx.Done()
				return
			}
			for {
				if _, err := s.Recv(); err != nil {
					return
				}
			}
		}(i == 0)
	}
	return func() {
		cancel()
		for range n {
			<-done
		}
		for _, c := range conns {
			_ = c.Close()
		}
	}
}

// BenchmarkIngestObservers measures the engine's ingest rate (socket
// updates applied per second, 2,000 connections whose every update emits
// an event) with the observer and 0, 1 or 10 WatchFlows streams (of the
// ten, one is stalled), in interleaved rounds, and reports the medians and
// their ratios. With no stream the observer does not follow the engine
// (Linger 0), so ratio-10/0 is the cost of the engine's event publication
// plus the fan-out, and ratio-10/1 the cost of nine more streams, one of
// them stalled.
func BenchmarkIngestObservers(b *testing.B) {
	const conns, batches, rounds = 2000, 200, 5
	reg := prometheus.NewRegistry()
	l := newIngestLoad(b, reg, conns)
	cfg := DefaultConfig()
	cfg.Linger = 0 // with no stream, the engine publishes nothing
	obs, err := New(cfg, l.engine, reg, reg, discard)
	if err != nil {
		b.Fatal(err)
	}
	if err := obs.Start(context.Background()); err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer()
	obs.Register(srv)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	defer func() {
		_ = obs.Shutdown(context.Background())
		srv.Stop()
	}()

	rate := func() float64 {
		start := time.Now()
		for range batches {
			l.apply(b)
		}
		return float64(batches*conns) / time.Since(start).Seconds()
	}
	with := func(n int) float64 {
		if n == 0 {
			return rate()
		}
		// streams(n) stalls the first stream; with one stream, read it.
		var stop func()
		if n == 1 {
			stop = readingStream(b, lis.Addr().String())
		} else {
			stop = streams(b, lis.Addr().String(), n)
		}
		time.Sleep(50 * time.Millisecond)
		r := rate()
		stop()
		time.Sleep(20 * time.Millisecond) // the observer stops following
		return r
	}
	var zero, one, ten []float64
	b.ReportAllocs()
	for b.Loop() {
		for range rounds {
			zero = append(zero, with(0))
			one = append(one, with(1))
			ten = append(ten, with(10))
		}
	}
	b.ReportMetric(median(zero), "updates/s-0-streams")
	b.ReportMetric(median(one), "updates/s-1-stream")
	b.ReportMetric(median(ten), "updates/s-10-streams")
	b.ReportMetric(median(ten)/median(one), "ratio-10/1")
	b.ReportMetric(median(ten)/median(zero), "ratio-10/0")
	b.ReportMetric(testutilValue(obs.metrics.lost), "events-lost")
}

// readingStream opens one follow stream that reads everything.
func readingStream(b *testing.B, addr string) func() {
	ctx, cancel := context.WithCancel(context.Background())
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		b.Fatal(err)
	}
	s, err := observerv1.NewObserverServiceClient(conn).WatchFlows(ctx, &observerv1.WatchFlowsRequest{Follow: true})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			if _, err := s.Recv(); err != nil {
				return
			}
		}
	}()
	return func() {
		cancel()
		<-done
		_ = conn.Close()
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func testutilValue(c prometheus.Counter) float64 {
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	_ = (<-ch).Write(&m)
	return m.GetCounter().GetValue()
}
