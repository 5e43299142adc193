package fleet

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

func fullBench() bool { return os.Getenv("WEIR_BENCH_FULL") == "1" }

// rssBytes returns the resident set (VmRSS) and its peak (VmHWM) of pid.
func rssBytes(tb testing.TB, pid int) (rss, peak float64) {
	tb.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		v, _ := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case "VmRSS:":
			rss = v * 1024
		case "VmHWM:":
			peak = v * 1024
		}
	}
	return rss, peak
}

func cpuSeconds(tb testing.TB, p *harness.Process) float64 {
	tb.Helper()
	s, err := p.CPUSeconds()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func scrape(tb testing.TB, url string) harness.Metrics {
	tb.Helper()
	m, err := harness.Scrape(url)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// BenchmarkFleet runs the fleet scenario against a real reducer: with
// WEIR_BENCH_FULL=1, 1,000 collectors, 1,000,000 sockets, 10% of sockets
// changing and 1% of connections closing and reopening per 1 s interval.
// It prints the P3 (socket updates per reducer core-second), P3-total
// (updates per second), P4 (reducer RSS per tracked socket) and P5 (wire
// bytes per update) lines, and checks the edges exactly. The simulated
// collectors compress with zstd, as weir-collector does once the reducer's
// welcome offers it; WEIR_FLEET_COMPRESSOR=gzip (or none) measures the
// others. P4 is the mean of RSS samples taken every 250 ms over the steady
// state.
//
// With WEIR_BENCH_HEAP_PROFILE=<file> it also writes the reducer's heap
// profile (after a collection) there, and one from the start of the steady
// state to <file>.base, for the window's allocations (pprof -base). With
// WEIR_BENCH_CPU_PROFILE=<file> it writes its CPU profile of the steady
// state.
func BenchmarkFleet(b *testing.B) {
	b.ReportAllocs()
	cfg := Config{
		Collectors: 50, Sockets: 20000, Interval: 200 * time.Millisecond, Intervals: 20,
		MaxSkew: 2, Change: 0.10, Reopen: 0.01, Short: 100, Reconnects: 2, Compressor: Zstd, Seed: 7,
	}
	if fullBench() {
		cfg = Config{
			Collectors: 1000, Sockets: 1_000_000, Interval: time.Second, Intervals: 30,
			MaxSkew: 3, Change: 0.10, Reopen: 0.01, Short: 1000, Reconnects: 10, Compressor: Zstd, Seed: 7,
		}
	}
	if c := os.Getenv("WEIR_FLEET_COMPRESSOR"); c != "" {
		cfg.Compressor = strings.TrimPrefix(c, "none")
	}
	heapProfile := os.Getenv("WEIR_BENCH_HEAP_PROFILE") // where to write the reducer's heap profile at the steady state
	cpuProfile := os.Getenv("WEIR_BENCH_CPU_PROFILE")   // where to write its CPU profile of the steady state
	w := startBenchReducer(b, heapProfile != "" || cpuProfile != "")
	// The steady state: from three intervals after every socket is
	// announced, for half the run.
	end := runFleet(b, w, cfg)
	time.Sleep(time.Duration(cfg.MaxSkew+3) * cfg.Interval)
	m0, cpu0, t0 := scrape(b, w.MetricsURL), cpuSeconds(b, w.Reducer), time.Now()
	window := time.Duration(cfg.Intervals/2) * cfg.Interval
	if heapProfile != "" {
		// The base for the window's allocations: pprof -base <file>.base.
		saveURL(b, strings.TrimSuffix(w.MetricsURL, "/metrics")+"/debug/pprof/heap", heapProfile+".base")
	}
	profiled := profileCPU(b, w, cpuProfile, window-time.Second)
	// RSS swings with the garbage collector's cycle (the heap grows to its
	// goal, then a collection frees it): sample it through the window.
	var rssSum, rssMin, rssMax float64
	var rssN int
	for end := t0.Add(window); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		v, _ := rssBytes(b, w.Reducer.PID())
		if rssN == 0 || v < rssMin {
			rssMin = v
		}
		rssMax = max(rssMax, v)
		rssSum += v
		rssN++
	}
	m1, cpu1, t1 := scrape(b, w.MetricsURL), cpuSeconds(b, w.Reducer), time.Now()
	rss := rssSum / float64(rssN)
	profiled()
	if heapProfile != "" {
		saveURL(b, strings.TrimSuffix(w.MetricsURL, "/metrics")+"/debug/pprof/heap?gc=1", heapProfile)
	}
	sockets, _ := m1.Value("weir_reducer_sockets", nil)
	res, err := end()
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	_, peak := rssBytes(b, w.Reducer.PID())
	updates := m1.Sum("weir_reducer_socket_updates_total", nil) - m0.Sum("weir_reducer_socket_updates_total", nil)
	wire := m1.Sum("weir_reducer_received_bytes_total", nil) - m0.Sum("weir_reducer_received_bytes_total", nil)
	cpu, wall := cpu1-cpu0, t1.Sub(t0).Seconds()
	if updates == 0 || cpu == 0 {
		b.Fatalf("%v updates in %.1f reducer CPU seconds", updates, cpu)
	}
	b.ReportMetric(updates/cpu, "updates/core-s")
	b.ReportMetric(updates/wall, "updates/s")
	b.ReportMetric(rss/sockets, "B/socket")
	b.ReportMetric(wire/updates, "wire-B/update")
	b.ReportMetric(peak/(1<<20), "peak-MiB")
	fmt.Printf("P3 %.0f updates/core-s (%d collectors, %d sockets, %.2f reducer cores)\n", updates/cpu, cfg.Collectors, int(sockets), cpu/wall)
	fmt.Printf("P3-total %.0f updates/s\n", updates/wall)
	fmt.Printf("P4 %.0f B/socket (RSS mean %.0f MiB of %d samples, %.0f-%.0f MiB; peak %.0f MiB; %d sockets)\n",
		rss/sockets, rss/(1<<20), rssN, rssMin/(1<<20), rssMax/(1<<20), peak/(1<<20), int(sockets))
	fmt.Printf("P5 %.2f wire-B/update (%s)\n", wire/updates, cfg.Compressor)
	// Where P4's RSS goes, as the reducer's runtime saw it at m1.
	mem := func(name string) float64 { v, _ := m1.Value(name, nil); return v / (1 << 20) }
	goroutines, _ := m1.Value("go_goroutines", nil)
	gcs := func(m harness.Metrics) (n uint64) {
		for _, x := range m["go_gc_duration_seconds"].GetMetric() {
			n += x.GetSummary().GetSampleCount()
		}
		return n
	}
	forced := m1.Sum("weir_reducer_gc_forced_collections_total", nil) - m0.Sum("weir_reducer_gc_forced_collections_total", nil)
	fmt.Printf("P4 parts: heap in use %.0f MiB, idle heap kept %.0f MiB, stacks %.0f MiB (%.0f goroutines), heap goal %.0f MiB; %d collections in the window (%.0f of them --gc-idle-collect's)\n",
		mem("go_memstats_heap_inuse_bytes"), mem("go_memstats_heap_idle_bytes")-mem("go_memstats_heap_released_bytes"),
		mem("go_memstats_stack_inuse_bytes"), goroutines, mem("go_memstats_next_gc_bytes"), gcs(m1)-gcs(m0), forced)
	reportDiff(b, waitExact(b, []string{w.MetricsURL}, res.Edges, 60*time.Second))
	last := scrape(b, w.MetricsURL)
	flows, _ := last.Value("weir_reducer_flows", nil)
	held, _ := last.Value("weir_reducer_flows_held", nil)
	b.Logf("at the end: %v flows (%v held) for %d sockets", flows, held, int(sockets))
}

// BenchmarkScrape100k: a real reducer with 100,000 edges (collectors whose
// connections each have a peer of its own outside the fleet), and the time
// of one /metrics scrape as Prometheus makes it (gzip accepted) and plain.
// Target: at most 1 s.
func BenchmarkScrape100k(b *testing.B) {
	b.ReportAllocs()
	w := harness.StartWeir(b, harness.WeirOptions{NoCollector: true, ReducerArgs: []string{"--max-series", "300000"}})
	cfg := Config{Collectors: 100, Sockets: 50_000, CrossShare: -1, DistinctPeers: true,
		Interval: time.Second, Intervals: 2, Change: 0.1, Reducers: []string{w.GRPCAddr}, Seed: 9}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := Run(ctx, cfg); err != nil {
		b.Fatal(err)
	}
	harness.WaitFor(b, w.MetricsURL, 60*time.Second, "100,000 edges", func(m harness.Metrics) bool {
		v, _ := m.Value("weir_reducer_edges", nil)
		return v >= 100_000
	})
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: time.Minute}
	var gz, plain time.Duration
	var size, gzSize int64
	b.ResetTimer()
	for range b.N {
		for _, enc := range []string{"gzip", ""} {
			req, _ := http.NewRequest("GET", w.MetricsURL, nil)
			if enc != "" {
				req.Header.Set("Accept-Encoding", enc)
			}
			start := time.Now()
			resp, err := client.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			n, _ := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if enc == "" {
				plain, size = time.Since(start), n
			} else {
				gz, gzSize = time.Since(start), n
			}
		}
	}
	b.StopTimer()
	m := scrape(b, w.MetricsURL)
	edges, _ := m.Value("weir_reducer_edges", nil)
	b.ReportMetric(gz.Seconds(), "s/scrape-gzip")
	b.ReportMetric(plain.Seconds(), "s/scrape")
	fmt.Printf("scrape %.3f s gzip, %.3f s plain (%.0f edges, %.1f MiB, %.1f MiB gzipped)\n", gz.Seconds(), plain.Seconds(), edges,
		float64(size)/(1<<20), float64(gzSize)/(1<<20))
}

// BenchmarkReconnectHerd: collectors that hold sockets lose their reducer
// for 10 s; from its return, the time until every one of them has its
// snapshot acked again, and the new reducer's peak RSS. With
// WEIR_BENCH_FULL=1, 1,000 collectors of 1,000 sockets each.
func BenchmarkReconnectHerd(b *testing.B) {
	b.ReportAllocs()
	n, per := 100, 200
	if fullBench() {
		n, per = 1000, 1000
	}
	const interval = time.Second
	w := harness.StartWeir(b, harness.WeirOptions{NoCollector: true,
		ReducerArgs: []string{"--max-message-bytes", strconv.Itoa(64 << 20)}})
	h := NewHerd(w.GRPCAddr, n, per, interval)
	ctx, cancel := context.WithCancel(context.Background())
	defer func() { cancel(); h.Wait() }()
	h.Run(ctx)
	waitConnected := func(timeout time.Duration) time.Duration {
		start := time.Now()
		for h.Connected() < n {
			if time.Since(start) > timeout {
				b.Fatalf("%d of %d collectors connected after %s", h.Connected(), n, timeout)
			}
			time.Sleep(10 * time.Millisecond)
		}
		return time.Since(start)
	}
	first := waitConnected(5 * time.Minute)
	b.ResetTimer()
	w.Reducer.Stop(10 * time.Second)
	time.Sleep(10 * time.Second)
	w.RestartReducer(b)
	back := waitConnected(2 * time.Minute)
	b.StopTimer()
	_, peak := rssBytes(b, w.Reducer.PID())
	m := scrape(b, w.MetricsURL)
	sockets, _ := m.Value("weir_reducer_sockets", nil)
	b.ReportMetric(back.Seconds(), "s/all-back")
	b.ReportMetric(peak/(1<<20), "peak-MiB")
	fmt.Printf("reconnect %d collectors (%d sockets) all back %.2f s after the reducer's return (interval %s; first connect %.2f s); reducer peak RSS %.0f MiB\n",
		n, int(sockets), back.Seconds(), interval, first.Seconds(), peak/(1<<20))
}

// saveURL writes the body of a GET of url to path.
func saveURL(tb testing.TB, url, path string) {
	tb.Helper()
	if err := fetchTo(url, path); err != nil {
		tb.Fatal(err)
	}
}

// runFleet runs the fleet of cfg against w's reducer in the background,
// for at most 10 minutes, and waits until the reducer tracks 95% of its
// sockets; the function it returns waits for the run's end.
// WEIR_FLEET_ACK_EVERY sets Config.AckEvery (1: every batch acked).
func runFleet(b *testing.B, w *harness.Weir, cfg Config) (end func() (*Result, error)) {
	cfg.Reducers = []string{w.GRPCAddr}
	if v := os.Getenv("WEIR_FLEET_ACK_EVERY"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("WEIR_FLEET_ACK_EVERY=%q: want a count of at least 1", v)
		}
		cfg.AckEvery = n
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	b.Cleanup(cancel)
	type out struct {
		res *Result
		err error
	}
	done := make(chan out, 1)
	b.ResetTimer()
	go func() {
		res, err := Run(ctx, cfg)
		done <- out{res, err}
	}()
	harness.WaitFor(b, w.MetricsURL, 5*time.Minute, "every socket", func(m harness.Metrics) bool {
		v, _ := m.Value("weir_reducer_sockets", nil)
		return v >= 0.95*float64(cfg.Sockets)
	})
	return func() (*Result, error) {
		o := <-done
		return o.res, o.err
	}
}

// startBenchReducer starts the reducer of a fleet benchmark, without a
// collector, with room for 100,000 series and 64 MiB messages, and serving
// its profiles when pprof is set.
func startBenchReducer(b *testing.B, pprof bool) *harness.Weir {
	args := []string{"--max-series", "100000", "--max-message-bytes", strconv.Itoa(64 << 20)}
	if pprof {
		args = append(args, "--pprof")
	}
	return harness.StartWeir(b, harness.WeirOptions{NoCollector: true, ReducerArgs: args})
}

// profileCPU starts fetching the CPU profile of w's reducer over the next
// d (at least 1 s) into file, if file is set; the function it returns
// waits for the profile.
func profileCPU(b *testing.B, w *harness.Weir, file string, d time.Duration) (wait func()) {
	if file == "" {
		return func() {}
	}
	done := make(chan error, 1)
	url := fmt.Sprintf("%s/debug/pprof/profile?seconds=%d", strings.TrimSuffix(w.MetricsURL, "/metrics"), max(1, int(d.Seconds())))
	go func() { done <- fetchTo(url, file) }()
	return func() {
		if err := <-done; err != nil {
			b.Fatal(err)
		}
	}
}

// fetchTo writes the body of a GET of url to the file at path.
func fetchTo(url, path string) error {
	resp, err := http.Get(url)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
