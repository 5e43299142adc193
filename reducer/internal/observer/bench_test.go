package observer

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"syscall"
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

// apply applies the next batch; every one counts new traffic on every
// connection, so that each read of the observer finds all of them changed.
func (l *ingestLoad) apply(b *testing.B) {
	side := l.i & 1
	l.i++
	l.seq[side]++
	l.batches[side].Sequence = l.seq[side]
	if err := l.engine.Apply(l.nodes[side], &l.batches[side]); err != nil {
		b.Fatal(err)
	}
}

// streamsEnv, set to "addr n stall", makes the test binary a consumer
// process of BenchmarkIngestObservers (see TestMain): it follows n
// WatchFlows streams on addr, the first one stalled when stall is 1, until
// its stdin closes.
const streamsEnv = "WEIR_BENCH_OBSERVER_STREAMS"

// runStreams is the consumer process.
func runStreams(spec string) int {
	var addr string
	var n, stall int
	if _, err := fmt.Sscan(spec, &addr, &n, &stall); err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: %v\n", streamsEnv, spec, err)
		return 2
	}
	stop, err := openStreams(addr, n, stall == 1)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	stop()
	return 0
}

// openStreams opens n follow streams on addr that read everything, but
// the first one when stall is set: it never reads (a fixed 64 KiB window,
// so that it stalls at once).
func openStreams(addr string, n int, stall bool) (func(), error) {
	ctx, cancel := context.WithCancel(context.Background())
	var conns []*grpc.ClientConn
	done := make(chan struct{}, n)
	stop := func() {
		cancel()
		for range len(conns) {
			<-done
		}
		for _, c := range conns {
			_ = c.Close()
		}
	}
	for i := range n {
		stalled := stall && i == 0
		opts := []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
		if stalled {
			opts = append(opts, grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
		}
		conn, err := grpc.NewClient(addr, opts...)
		if err != nil {
			stop()
			return nil, err
		}
		s, err := observerv1.NewObserverServiceClient(conn).WatchFlows(ctx, &observerv1.WatchFlowsRequest{Follow: true})
		if err != nil {
			_ = conn.Close()
			stop()
			return nil, err
		}
		conns = append(conns, conn)
		go func() {
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
		}()
	}
	return stop, nil
}

// consumers runs n streams in a process of their own, as the API's
// consumers (weirctl) are, so that their decoding is not counted as the
// reducer's; stop ends it.
func consumers(b *testing.B, addr string, n int, stall bool) (stop func()) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	st := 0
	if stall {
		st = 1
	}
	cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d", streamsEnv, addr, n, st))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	if line, err := bufio.NewReader(stdout).ReadString('\n'); err != nil || line != "ready\n" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		b.Fatalf("consumer process: %q %v", line, err)
	}
	return func() {
		_ = stdin.Close()
		if err := cmd.Wait(); err != nil {
			b.Errorf("consumer process: %v", err)
		}
	}
}

// BenchmarkIngestObservers measures the engine's ingest rate (socket
// updates applied per second, 2,000 connections, every one counting traffic
// in every batch) with the observer and 0, 1 or 10 WatchFlows streams (of
// the ten, one is stalled; their consumers run in a process of their own),
// in interleaved windows, and reports the medians and their ratios. With no
// stream the observer does not follow the engine (Linger 0), so ratio-10/0
// is the whole cost of following: the engine's note of each flow with
// traffic, the observer's read of their counts (one per window: a window is
// the default update interval) and the sending of their updates (4,000 a
// second) to the streams; ratio-10/1 is the cost of nine more streams, one
// of them stalled. cpu-ratio-10/0 is the same ratio per CPU second of the
// ingest thread, which other processes of a busy machine do not skew.
func BenchmarkIngestObservers(b *testing.B) {
	const conns, rounds = 2000, 3
	reg := prometheus.NewRegistry()
	l := newIngestLoad(b, reg, conns)
	cfg := DefaultConfig()
	cfg.Linger = 0 // with no stream, the engine notes nothing
	window := cfg.UpdateInterval
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

	// The ingest loop runs on a thread of its own, whose CPU time tells
	// its cost per update apart from the time other processes of a busy
	// machine and the observer's goroutines take from it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	rate := func() window3 {
		start, cpu0, all0 := time.Now(), cpuTime(rusageThread), cpuTime(syscall.RUSAGE_SELF)
		n := 0
		for time.Since(start) < window {
			l.apply(b)
			n++
		}
		wall, cpu, all := time.Since(start), cpuTime(rusageThread)-cpu0, cpuTime(syscall.RUSAGE_SELF)-all0
		u := float64(n * conns)
		return window3{wall: u / wall.Seconds(), cpu: u / cpu.Seconds(), others: (all - cpu).Seconds() / wall.Seconds()}
	}
	// Each window follows a warm-up of the same length with the same
	// streams, so that it holds the sending of the updates of the read at
	// its start, spread over the interval, and the next read: the steady
	// state.
	with := func(n int) window3 {
		var stop func()
		if n > 0 {
			stop = consumers(b, lis.Addr().String(), n, n > 1) // of ten, the first one stalls
		}
		time.Sleep(50 * time.Millisecond) // the observer follows
		rate()
		r := rate()
		if stop != nil {
			stop()
			time.Sleep(20 * time.Millisecond) // the observer stops following
		}
		return r
	}
	var zero, one, ten windows
	b.ReportAllocs()
	for b.Loop() {
		for range rounds {
			zero.add(with(0))
			one.add(with(1))
			ten.add(with(10))
		}
	}
	b.ReportMetric(median(zero.wall), "updates/s-0-streams")
	b.ReportMetric(median(one.wall), "updates/s-1-stream")
	b.ReportMetric(median(ten.wall), "updates/s-10-streams")
	b.ReportMetric(median(ten.wall)/median(one.wall), "ratio-10/1")
	b.ReportMetric(median(ten.wall)/median(zero.wall), "ratio-10/0")
	// Per CPU second of the ingest thread, and the cores that the rest of
	// the process (the observer, its streams, GC) used.
	b.ReportMetric(median(ten.cpu)/median(zero.cpu), "cpu-ratio-10/0")
	b.ReportMetric(median(zero.others), "other-cores-0-streams")
	b.ReportMetric(median(ten.others), "other-cores-10-streams")
	b.ReportMetric(testutilValue(obs.metrics.events), "flow-events")
	b.ReportMetric(testutilValue(obs.metrics.lost), "events-lost")
}

// window3 is one window's ingest rate per wall second and per CPU second
// of the ingest thread, and the cores used by the rest of the process.
type window3 struct{ wall, cpu, others float64 }

type windows struct{ wall, cpu, others []float64 }

func (w *windows) add(x window3) {
	w.wall = append(w.wall, x.wall)
	w.cpu = append(w.cpu, x.cpu)
	w.others = append(w.others, x.others)
}

// rusageThread is Linux's RUSAGE_THREAD: the calling thread.
const rusageThread = 1

// cpuTime returns the user and system CPU time of who.
func cpuTime(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
