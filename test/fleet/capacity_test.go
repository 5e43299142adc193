package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/weir-project/weir/test/internal/harness"
)

// P3 in its two regimes. BenchmarkFleet offers the fleet's nominal load:
// each collector sends one batch per 1 s interval, of about a hundred
// updates (10% of 1,000 sockets), and the reducer, mostly idle, wakes for
// each. BenchmarkFleetCapacity replays the same batches as fast as the
// reducer takes them: updates per core-second at capacity.
//
// The floor: what the reducer spends per batch whatever the batch holds,
// which bounds P3 at the nominal load at (updates per batch) ÷ (CPU per
// empty batch). BenchmarkFleetFloor measures it in the reducer;
// BenchmarkGRPCFloor measures a bare gRPC server under the same traffic,
// the part no code of the reducer's can remove.

// BenchmarkFleetCapacity replays the fleet scenario of BenchmarkFleet
// (with WEIR_BENCH_FULL=1, 1,000 collectors, 1,000,000 sockets, 10% of
// sockets changing and 1% of connections reopening per interval, skewed
// collectors; no reconnects) as fast as the reducer takes it. Every batch
// is built before the sending starts. It prints P3-capacity,
// the socket updates per reducer core-second over 5 s of the steady
// state (1 s without WEIR_BENCH_FULL=1), and checks the edges exactly.
func BenchmarkFleetCapacity(b *testing.B) {
	cfg := Config{
		Collectors: 50, Sockets: 20000, Interval: time.Second, Intervals: 1000,
		MaxSkew: 2, Change: 0.10, Reopen: 0.01, Short: 100, Compressor: Zstd, Seed: 7, Replay: true,
	}
	window := time.Second
	if fullBench() {
		window = 5 * time.Second
		cfg = Config{
			Collectors: 1000, Sockets: 1_000_000, Interval: time.Second, Intervals: 100,
			MaxSkew: 3, Change: 0.10, Reopen: 0.01, Short: 1000, Compressor: Zstd, Seed: 7, Replay: true,
		}
	}
	if c := os.Getenv("WEIR_FLEET_COMPRESSOR"); c != "" {
		cfg.Compressor = strings.TrimPrefix(c, "none")
	}
	cpuProfile := os.Getenv("WEIR_BENCH_CPU_PROFILE")
	w := startBenchReducer(b, cpuProfile != "")
	end := runFleet(b, w, cfg)
	time.Sleep(window / 5)
	profiled := profileCPU(b, w, cpuProfile, window-time.Second)
	m0, cpu0, t0 := scrape(b, w.MetricsURL), cpuSeconds(b, w.Reducer), time.Now()
	time.Sleep(window - 250*time.Millisecond)
	mLast := scrape(b, w.MetricsURL)
	time.Sleep(250 * time.Millisecond)
	m1, cpu1, t1 := scrape(b, w.MetricsURL), cpuSeconds(b, w.Reducer), time.Now()
	profiled()
	res, err := end()
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	count := func(m harness.Metrics) float64 { return m.Sum("weir_reducer_socket_updates_total", nil) }
	if count(m1) == count(mLast) {
		b.Fatalf("the replay ended within the window (%.0f updates in all): give it more intervals", count(m1))
	}
	updates, batches := count(m1)-count(m0),
		m1.Sum("weir_reducer_messages_received_total", nil)-m0.Sum("weir_reducer_messages_received_total", nil)
	cpu, wall := cpu1-cpu0, t1.Sub(t0).Seconds()
	if updates == 0 || cpu == 0 {
		b.Fatalf("%v updates in %.1f reducer CPU seconds", updates, cpu)
	}
	b.ReportMetric(updates/cpu, "updates/core-s")
	b.ReportMetric(updates/wall, "updates/s")
	fmt.Printf("P3-capacity %.0f updates/core-s (%.0f updates/s, %.2f reducer cores, %.0f updates per batch, %.1f µs of reducer CPU per batch; %d collectors)\n",
		updates/cpu, updates/wall, cpu/wall, updates/batches, cpu/batches*1e6, cfg.Collectors)
	reportDiff(b, waitExact(b, []string{w.MetricsURL}, res.Edges, 60*time.Second))
}

// BenchmarkFleetFloor runs the fleet of BenchmarkFleet with no traffic
// after the first interval: every collector still sends its batch per
// interval, empty, and the reducer receives, decodes, applies and acks it.
// It prints the reducer's CPU per batch; WEIR_BENCH_CPU_PROFILE=<file>
// writes the reducer's CPU profile of the window there.
func BenchmarkFleetFloor(b *testing.B) {
	cfg := Config{Collectors: 50, Sockets: 20000, Interval: 200 * time.Millisecond, Intervals: 20, Compressor: Zstd, Seed: 7}
	if fullBench() {
		cfg = Config{Collectors: 1000, Sockets: 1_000_000, Interval: time.Second, Intervals: 30, Compressor: Zstd, Seed: 7}
	}
	cpuProfile := os.Getenv("WEIR_BENCH_CPU_PROFILE")
	w := startBenchReducer(b, cpuProfile != "")
	end := runFleet(b, w, cfg)
	time.Sleep(3 * cfg.Interval)
	window := time.Duration(cfg.Intervals/2) * cfg.Interval
	profiled := profileCPU(b, w, cpuProfile, window-time.Second)
	m0, cpu0, t0 := scrape(b, w.MetricsURL), cpuSeconds(b, w.Reducer), time.Now()
	time.Sleep(window)
	m1, cpu1, t1 := scrape(b, w.MetricsURL), cpuSeconds(b, w.Reducer), time.Now()
	profiled()
	if _, err := end(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	batches := m1.Sum("weir_reducer_messages_received_total", nil) - m0.Sum("weir_reducer_messages_received_total", nil)
	updates := m1.Sum("weir_reducer_socket_updates_total", nil) - m0.Sum("weir_reducer_socket_updates_total", nil)
	cpu := cpu1 - cpu0
	if batches == 0 || cpu == 0 {
		b.Fatalf("%v batches in %.2f reducer CPU seconds", batches, cpu)
	}
	if updates != 0 {
		b.Fatalf("%v socket updates in the window, want none", updates)
	}
	per := cpu / batches
	b.ReportMetric(per*1e6, "µs/batch")
	fmt.Printf("P3-floor %.1f µs of reducer CPU per empty batch (%.0f batches/s from %d collectors, %.3f reducer cores); at 100 updates per batch P3 is at most %.0f\n",
		per*1e6, batches/t1.Sub(t0).Seconds(), cfg.Collectors, cpu/t1.Sub(t0).Seconds(), 100/per)
}

// floorCodec passes messages through as bytes: the bare server decodes
// nothing.
type floorCodec struct{}

func (floorCodec) Name() string { return "floor" }

func (floorCodec) Marshal(v any) ([]byte, error) {
	p, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("floor codec: %T", v)
	}
	return *p, nil
}

func (floorCodec) Unmarshal(data []byte, v any) error {
	p, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("floor codec: %T", v)
	}
	*p = append((*p)[:0], data...)
	return nil
}

var floorService = grpc.ServiceDesc{
	ServiceName: "weir.floor.Floor",
	HandlerType: (*any)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName: "Stream", ClientStreams: true, ServerStreams: true,
		Handler: func(_ any, s grpc.ServerStream) error {
			var msg []byte
			ack := make([]byte, 4) // the size of the reducer's ack message
			for {
				if err := s.RecvMsg(&msg); err != nil {
					if errors.Is(err, io.EOF) {
						return nil
					}
					return err
				}
				if err := s.SendMsg(&ack); err != nil {
					return err
				}
			}
		},
	}},
}

// floorServer is the bare server's role: a gRPC server with the reducer's
// transport options (read and write buffers, fixed windows) whose one
// stream method acks every message. It prints its address.
func floorServer() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(floorCodec{}),
		grpc.ReadBufferSize(8<<10), grpc.WriteBufferSize(8<<10),
		grpc.StaticStreamWindowSize(256<<10), grpc.StaticConnWindowSize(256<<10))
	srv.RegisterService(&floorService, nil)
	fmt.Println("listening", ln.Addr())
	return srv.Serve(ln)
}

// BenchmarkGRPCFloor: 1,000 clients (50 without WEIR_BENCH_FULL=1), each on
// a connection of its own as collectors are, send a message per interval
// of the fleet's batch size (WEIR_FLOOR_BYTES, default 800: about 100
// updates at P5's 8 wire bytes each) to a bare gRPC server in a process of
// its own, which acks each with 4 bytes. It prints the server's CPU per
// message: the transport's share of P3's floor.
func BenchmarkGRPCFloor(b *testing.B) {
	clients, interval, intervals := 50, 200*time.Millisecond, 20
	if fullBench() {
		clients, interval, intervals = 1000, time.Second, 20
	}
	size := 800
	if v := os.Getenv("WEIR_FLOOR_BYTES"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			b.Fatalf("WEIR_FLOOR_BYTES=%q", v)
		}
		size = n
	}
	self, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	srv := harness.Start(b, "grpc-floor", "env", roleEnv+"=grpcfloor", self)
	addr := strings.TrimPrefix(srv.WaitLine(b, "listening ", 10*time.Second), "listening ")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, clients)
	start := time.Now().Add(time.Second)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := floorClient(ctx, addr, start.Add(time.Duration(i)*interval/time.Duration(clients)), interval, intervals, size); err != nil {
				errc <- err
			}
		}()
	}
	b.ResetTimer()
	// The window: the middle half of the intervals.
	time.Sleep(time.Until(start) + time.Duration(intervals/4)*interval)
	cpu0, t0 := cpuSeconds(b, srv), time.Now()
	time.Sleep(time.Duration(intervals/2) * interval)
	cpu1, t1 := cpuSeconds(b, srv), time.Now()
	wg.Wait()
	b.StopTimer()
	close(errc)
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	msgs := float64(clients) * t1.Sub(t0).Seconds() / interval.Seconds()
	per := (cpu1 - cpu0) / msgs
	b.ReportMetric(per*1e6, "µs/msg")
	fmt.Printf("P3-grpc-floor %.1f µs of a bare gRPC server's CPU per %d B message and its ack (%d connections, %.0f messages/s)\n",
		per*1e6, size, clients, msgs/t1.Sub(t0).Seconds())
}

// floorClient sends a message of size bytes at each interval from first
// and waits for its ack.
func floorClient(ctx context.Context, addr string, first time.Time, interval time.Duration, n, size int) error {
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(floorCodec{})))
	if err != nil {
		return err
	}
	defer cc.Close()
	s, err := cc.NewStream(ctx, &floorService.Streams[0], "/weir.floor.Floor/Stream")
	if err != nil {
		return err
	}
	msg, ack := make([]byte, size), []byte(nil)
	for i := range msg {
		msg[i] = byte(i * 7) // not all zeros, though nothing compresses here
	}
	for i := range n {
		time.Sleep(time.Until(first.Add(time.Duration(i) * interval)))
		if err := s.SendMsg(&msg); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		if err := s.RecvMsg(&ack); err != nil {
			return fmt.Errorf("ack: %w", err)
		}
	}
	return s.CloseSend()
}
