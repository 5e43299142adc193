package e2e

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weir-project/weir/test/internal/harness"
)

// fullBench is true under make bench, which sets WEIR_BENCH_FULL=1: the
// overhead benchmark then runs its full set of interleaved pairs with
// multi-second windows. Otherwise (make test runs every benchmark once with
// -benchtime=1x so that it keeps compiling) it runs two short pairs.
func fullBench() bool { return os.Getenv("WEIR_BENCH_FULL") == "1" }

// benchCollectorArgs are extra flags of the collector in the overhead
// benchmark, from WEIR_BENCH_COLLECTOR_ARGS (space-separated): e.g. "--udp"
// measures what the UDP programs cost the same TCP load.
func benchCollectorArgs() []string { return strings.Fields(os.Getenv("WEIR_BENCH_COLLECTOR_ARGS")) }

// loadResult is one flowcli --load window.
type loadResult struct {
	requests, errors   int64
	seconds, rate, cpu float64
	firstErr           string
}

func parseLoad(tb testing.TB, line string) loadResult {
	tb.Helper()
	// requests N seconds S rate R errors E cpu C [first-error …]
	f := strings.Fields(line)
	if len(f) < 10 || f[0] != "requests" || f[2] != "seconds" || f[4] != "rate" || f[6] != "errors" || f[8] != "cpu" {
		tb.Fatalf("flowcli: unexpected result line %q", line)
	}
	var r loadResult
	var err error
	if r.requests, err = strconv.ParseInt(f[1], 10, 64); err != nil {
		tb.Fatal(err)
	}
	if r.seconds, err = strconv.ParseFloat(f[3], 64); err != nil {
		tb.Fatal(err)
	}
	if r.rate, err = strconv.ParseFloat(f[5], 64); err != nil {
		tb.Fatal(err)
	}
	if r.errors, err = strconv.ParseInt(f[7], 10, 64); err != nil {
		tb.Fatal(err)
	}
	if r.cpu, err = strconv.ParseFloat(f[9], 64); err != nil {
		tb.Fatal(err)
	}
	if i := strings.Index(line, " first-error "); i >= 0 {
		r.firstErr = line[i+len(" first-error "):]
	}
	return r
}

// overheadRig is the fixed part of the overhead benchmark: a client and a
// server namespace on a bridge, a load server for each kind of load, and a
// reducer that runs for the whole benchmark (in both arms of every pair, so
// that only the collector differs between them).
type overheadRig struct {
	client, server harness.Host
	bin            string
	red            *harness.Weir
	keepAlive      string // flowsrv --forever, 64-byte requests and responses
	churn          string // flowsrv --forever, churnRequest and churnResponse bytes
	servers        map[string]*harness.Process
}

const (
	keepAliveConns = 64
	keepAliveBytes = 64
	churnDialers   = 32
	churnRequest   = 200
	churnResponse  = 1_000
)

// arm is what one measured window gave.
type arm struct {
	load   loadResult
	colCPU float64 // collector process CPU seconds in the window (utime+stime)
	// loadCPU is the CPU seconds of the load's own processes (flowcli and
	// flowsrv) in the window, softirq work done in their context included.
	loadCPU float64
	// redCPU is the reducer's CPU seconds in the window: not the
	// collector's cost (a reducer serves a cluster from its own node), yet
	// taken from the same two cores here; reported so that the share of a
	// lost request that is the reducer's can be told.
	redCPU float64
	wall   float64 // seconds between the two snapshots
	progs  map[string]harness.ProgDelta
	// kernelRun and metricRun are the in-kernel run time of the
	// collector's programs since they were loaded, from the kernel and from
	// the collector's weir_collector_bpf_run_seconds_total (-1 without it):
	// a cross-check of that metric, not used in the figures.
	kernelRun, metricRun float64
	// dropped are the closed sockets the collector dropped unreported
	// (buffer cap) and the events lost to a full ring, since it started:
	// a collector that dropped work would look cheaper than it is.
	dropped float64
	// bufferDropped is the part of dropped lost at the buffer's cap: the
	// stream to the reducer did not keep up (on a machine saturated by
	// other work, a reducer under SCHED_IDLE gets no CPU).
	bufferDropped float64
	// early are the collector's reports sent before the interval because
	// its buffer of closed sockets passed half its cap.
	early float64
	// events are the events floorsink read in the window (the
	// collector's arms leave it 0).
	events float64
}

// watcher is what watches the load in a window.
type watcher int

const (
	nobody    watcher = iota
	collector         // weir-collector, with WEIR_BENCH_COLLECTOR_ARGS
	// floorSink is the collector's programs with floorsink reading and
	// discarding their output (see BenchmarkPrivilegedOverheadFloor).
	floorSink
	// floorMinimal is floorsink with cost_floor.c's floor_minimal instead.
	floorMinimal
)

// run measures one window of the given load, watched by w, which is
// started fresh for it.
func (r *overheadRig) run(tb testing.TB, mode string, w watcher, window time.Duration) arm {
	tb.Helper()
	var col *harness.Process
	colPort := harness.FreePort(tb)
	schedIdle(tb, r.red.Reducer.PID()) // threads started since the last window too
	switch w {
	case collector:
		col = harness.StartCollector(tb, r.red.GRPCAddr, colPort, 5*time.Second, benchCollectorArgs()...)
	case floorSink, floorMinimal:
		programs := "weir"
		if w == floorMinimal {
			programs = "minimal"
		}
		col = harness.Start(tb, "floorsink", filepath.Join(r.bin, "floorsink"), "--programs", programs, "--interval", "5s")
		col.WaitLine(tb, "ready", 30*time.Second)
	}
	if col != nil {
		time.Sleep(time.Second) // the programs are attached; let start-up work finish
		defer col.Stop(10 * time.Second)
	}
	args := []string{filepath.Join(r.bin, "flowcli"), "-load", mode, "-duration", window.String(), "-warmup", "500ms"}
	switch mode {
	case "keepalive":
		args = append(args, "-connect", r.keepAlive, "-conns", strconv.Itoa(keepAliveConns),
			"-request-bytes", strconv.Itoa(keepAliveBytes), "-response-bytes", strconv.Itoa(keepAliveBytes))
	case "churn":
		args = append(args, "-connect", r.churn, "-dialers", strconv.Itoa(churnDialers),
			"-request-bytes", strconv.Itoa(churnRequest), "-response-bytes", strconv.Itoa(churnResponse))
	}
	cli := harness.Start(tb, "flowcli", r.client.Exec(args...)...)
	cli.WaitLine(tb, "measuring", 30*time.Second)
	var a arm
	var cpu0 float64
	var progs0 []harness.ProgStats
	srv := r.servers[mode]
	srv0 := cpuOrFatal(tb, srv)
	red0 := cpuOrFatal(tb, r.red.Reducer)
	t0 := time.Now()
	var events0 float64
	sink := w == floorSink || w == floorMinimal
	if col != nil {
		cpu0 = cpuOrFatal(tb, col)
		progs0 = progsOrFatal(tb, col)
		if sink {
			events0, _ = sinkStats(tb, col)
		}
	}
	a.load = parseLoad(tb, cli.WaitLine(tb, "requests", window+30*time.Second))
	a.loadCPU = a.load.cpu + cpuOrFatal(tb, srv) - srv0
	a.redCPU = cpuOrFatal(tb, r.red.Reducer) - red0
	if col != nil {
		a.colCPU = cpuOrFatal(tb, col) - cpu0
		progs1 := progsOrFatal(tb, col)
		a.progs = harness.Sub(progs1, progs0)
		a.wall = time.Since(t0).Seconds()
		if len(a.progs) == 0 {
			tb.Fatal("the collector holds no BPF programs")
		}
		// For comparison only: the collector's own account of the same
		// programs (cumulative since it loaded them), when it has one.
		for _, p := range progs1 {
			a.kernelRun += p.RunTime.Seconds()
		}
		a.metricRun = -1
		if sink {
			var events float64
			events, a.dropped = sinkStats(tb, col)
			a.events = events - events0
		} else {
			m, err := harness.Scrape(fmt.Sprintf("http://127.0.0.1:%d/metrics", colPort))
			if err != nil {
				tb.Fatalf("collector metrics: %v", err)
			}
			if _, ok := m["weir_collector_bpf_run_seconds_total"]; ok {
				a.metricRun = m.Sum("weir_collector_bpf_run_seconds_total", nil)
			}
			a.bufferDropped = m.Sum("weir_collector_buffer_dropped_total", nil)
			a.dropped = a.bufferDropped + m.Sum("weir_collector_ring_full_total", nil)
			a.early = m.Sum("weir_collector_early_reports_total", nil)
		}
	}
	if err := cli.Wait(10 * time.Second); err != nil {
		tb.Fatalf("flowcli: %v\n%s", err, cli.Stderr())
	}
	if a.load.requests == 0 || float64(a.load.errors) > 0.01*float64(a.load.requests) {
		tb.Fatalf("%s load: %d requests, %d errors (first: %s)", mode, a.load.requests, a.load.errors, a.load.firstErr)
	}
	return a
}

func progsOrFatal(tb testing.TB, p *harness.Process) []harness.ProgStats {
	tb.Helper()
	s, err := harness.ProgramsOf(p.PID())
	if err != nil {
		tb.Fatalf("BPF programs of the collector: %v", err)
	}
	return s
}

// pairs runs n interleaved pairs of windows, without and with the
// collector, in ABBA order (without-with, then with-without, …) so that a
// drift of the machine's speed during the run falls on both arms alike. It
// returns the ratio with ÷ without of each pair and the arms.
//
// cpuRatios are a second view of each pair, less disturbed by other work
// on the machine: the load's CPU per request without the collector ÷ with
// it (the programs run in the load's context, so their cost is in it).
func (r *overheadRig) pairs(tb testing.TB, mode string, n int, window time.Duration) (ratios, cpuRatios []float64, without, with []arm) {
	tb.Helper()
	for i := range n {
		var wo, wi arm
		if i%2 == 0 {
			wo = r.run(tb, mode, nobody, window)
			wi = r.run(tb, mode, collector, window)
		} else {
			wi = r.run(tb, mode, collector, window)
			wo = r.run(tb, mode, nobody, window)
		}
		ratios = append(ratios, wi.load.rate/wo.load.rate)
		cpuRatios = append(cpuRatios, wo.cpuPerRequest()/wi.cpuPerRequest())
		without, with = append(without, wo), append(with, wi)
	}
	// One log line per load: go test keeps only the first lines of a
	// benchmark's log.
	var sb strings.Builder
	for i := range without {
		fmt.Fprintf(&sb, "; %.0f/%.0f=%.3f (CPU %.0f/%.0f ns=%.3f, reducer %.0f/%.0f mc)", with[i].load.rate, without[i].load.rate, ratios[i],
			1e9*without[i].cpuPerRequest(), 1e9*with[i].cpuPerRequest(), cpuRatios[i],
			1000*with[i].redCPU/with[i].load.seconds, 1000*without[i].redCPU/without[i].load.seconds)
	}
	tb.Logf("%s pairs, req/s with/without=ratio (load CPU per request without/with=ratio, reducer CPU with/without)%s", mode, sb.String())
	return ratios, cpuRatios, without, with
}

func (a arm) cpuPerRequest() float64 { return a.loadCPU / float64(a.load.requests) }

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkPrivilegedOverhead measures what the collector costs the traffic
// it watches, between a client namespace and a server namespace joined by
// two veth pairs and a bridge (as two pods on one node):
//
//   - P1: requests per second of 64 kept-alive connections doing 64-byte
//     request/response round trips, with the collector ÷ without; the median
//     of at least 5 interleaved pairs (make bench), with the spread (the
//     smallest and largest pair ratio). Target ≥ 0.98.
//   - P1-churn: the same with a new connection per request (32 concurrent
//     dial loops: connect, send 200 B, read 1,000 B, close). Target ≥ 0.95.
//     The client closes first, so its end holds TIME_WAIT; to sustain the
//     rate without running out of ephemeral ports, the client's namespace
//     (only it) gets ip_local_port_range 1024–65535 and tcp_tw_reuse=1.
//     Connections end with a normal FIN handshake (no SO_LINGER 0 resets,
//     which would be cheaper and less realistic).
//   - P2: the collector's CPU during the P1 windows with it: its process's
//     utime+stime plus the in-kernel run time of its programs
//     (run_time_ns), in millicores, and per request. Iterator programs are
//     left out of the in-kernel sum: they run inside the collector's own
//     read(), so their time is already in its stime. Target ≤ 20.
//   - bpf-ns: run_time_ns ÷ run_cnt of each of the collector's programs
//     over the P1 and P1-churn windows with it. Target ≤ 100 ns.
//   - cpu-ratio and churn-cpu-ratio (not targets; a cross-check on a machine
//     where other work competes for the cores and makes the throughput
//     noisy): the CPU time of the load's own processes per request, without
//     ÷ with the collector, median over the same pairs. The programs run in
//     the load's context, so their cost is in it; the collector process's
//     own CPU is not (that is P2).
//
// Both loads are closed-loop and saturating (see flowcli --load): the
// two cores are fully used, so the collector's cost shows as lost requests.
// The loads run as separate processes (flowcli, flowsrv) in their
// namespaces; the reducer runs throughout, in both arms, under SCHED_IDLE
// (see schedIdle: it stands for a reducer on another node, so its decoding
// of the collector's reports is not counted as the collector's cost; its
// CPU is logged per pair); the collector is started fresh for each window
// with it (5 s report interval).
//
// Every process of the benchmark (load, server, collector, reducer) runs at
// niceness -10: among themselves their shares of the CPU are as at 0, and
// other work on the machine (a build, another test) takes less from them.
//
// The kernel's BPF run-time statistics are on for the whole benchmark, in
// both arms: P2 and bpf-ns need them, and the figures must describe the same
// runs as P1. They add two clock reads to every run of every program, so P1
// here is slightly pessimistic; any other BPF program on the machine pays
// the same in both arms. Programs are found through the collector's file
// descriptors (/proc/PID/fdinfo → program id → the kernel's stats), not
// through its own metrics.
func BenchmarkPrivilegedOverhead(b *testing.B) {
	harness.RequireRoot(b)
	b.ReportAllocs()
	n, window := 2, time.Second
	if fullBench() {
		n, window = max(5, b.N), 5*time.Second
	}
	if args := benchCollectorArgs(); len(args) > 0 {
		b.Logf("collector flags from WEIR_BENCH_COLLECTOR_ARGS: %q", args)
	}
	r := newOverheadRig(b)

	b.ResetTimer()
	kaRatios, kaCPU, kaWithout, kaWith := r.pairs(b, "keepalive", n, window)
	chRatios, chCPU, chWithout, chWith := r.pairs(b, "churn", n, window)
	b.StopTimer()

	b.ReportMetric(median(kaRatios), "ratio")
	b.ReportMetric(slices.Min(kaRatios), "ratio-min")
	b.ReportMetric(slices.Max(kaRatios), "ratio-max")
	b.ReportMetric(median(rates(kaWithout)), "req/s-without")
	b.ReportMetric(median(rates(kaWith)), "req/s-with")
	b.ReportMetric(median(chRatios), "churn-ratio")
	b.ReportMetric(slices.Min(chRatios), "churn-ratio-min")
	b.ReportMetric(slices.Max(chRatios), "churn-ratio-max")
	b.ReportMetric(median(rates(chWithout)), "conn/s-without")
	b.ReportMetric(redMcores(chWith), "churn-reducer-mcores")
	var dropped, bufferDropped, early float64
	for _, a := range slices.Concat(kaWith, chWith) {
		dropped += a.dropped
		bufferDropped += a.bufferDropped
		early += a.early
	}
	// Must be 0: a collector that dropped sockets did less than its work,
	// and the run's figures flatter it.
	b.ReportMetric(dropped, "collector-dropped")
	b.Logf("collector: %.0f sockets or events dropped (%.0f at the buffer's cap, the rest to a full ring), %.0f early reports, over every window with it",
		dropped, bufferDropped, early)
	if dropped > 0 {
		b.Logf("the collector dropped work in this run: its figures are not valid (machine saturated by other work, or the reducer starved under SCHED_IDLE)")
	}
	b.ReportMetric(median(kaCPU), "cpu-ratio")
	b.ReportMetric(median(chCPU), "churn-cpu-ratio")

	// P2 over the keep-alive windows with the collector; the same over the
	// churn windows for comparison (not a target).
	cpu, inKernel, wall, requests := collectorCost(kaWith)
	b.ReportMetric(1000*(cpu+inKernel)/wall, "collector-mcores")
	b.ReportMetric(1000*cpu/wall, "process-mcores")
	b.ReportMetric(1000*inKernel/wall, "bpf-mcores")
	b.ReportMetric(1e9*(cpu+inKernel)/float64(requests), "collector-ns/request")
	b.Logf("P2: collector process %.3f s + in-kernel %.3f s over %.1f s with %d requests", cpu, inKernel, wall, requests)
	cpu, inKernel, wall, requests = collectorCost(chWith)
	b.ReportMetric(1000*(cpu+inKernel)/wall, "churn-collector-mcores")
	b.ReportMetric(1e9*(cpu+inKernel)/float64(requests), "churn-collector-ns/conn")
	b.Logf("churn: collector process %.3f s + in-kernel %.3f s over %.1f s with %d connections", cpu, inKernel, wall, requests)

	// bpf-ns over every window with the collector, both loads.
	total := progTotals(slices.Concat(kaWith, chWith))
	var sb strings.Builder
	for _, name := range slices.Sorted(maps.Keys(total)) {
		p := total[name]
		if p.RunCount == 0 {
			fmt.Fprintf(&sb, "; %s did not run", name)
			continue
		}
		ns := float64(p.RunTime.Nanoseconds()) / float64(p.RunCount)
		b.ReportMetric(ns, "bpf-ns/run:"+name)
		fmt.Fprintf(&sb, "; %s %d runs %s %.1f ns/run", name, p.RunCount, p.RunTime.Round(time.Microsecond), ns)
	}
	b.Logf("programs%s", sb.String())
	sb.Reset()
	for _, a := range slices.Concat(kaWith, chWith) {
		fmt.Fprintf(&sb, " %.4f/%.4f", a.kernelRun, a.metricRun)
	}
	b.Logf("in-kernel run time since load per window, kernel/collector metric (s):%s", sb.String())
}

// newOverheadRig sets up the overhead benchmarks' machine: BPF run-time
// statistics on, niceness -10, the two namespaces, a reducer under
// SCHED_IDLE, and a load server for each load, warmed up.
func newOverheadRig(b *testing.B) *overheadRig {
	b.Helper()
	harness.EnableBPFStats(b)
	harness.Nice(b, -10)
	client, server := harness.BridgedHosts(b, "p1")
	client.Sysctl(b, "net.ipv4.ip_local_port_range", "1024 65535")
	client.Sysctl(b, "net.ipv4.tcp_tw_reuse", "1")
	r := &overheadRig{client: client, server: server, bin: harness.Binaries(b), servers: map[string]*harness.Process{}}
	r.red = harness.StartWeir(b, harness.WeirOptions{NoCollector: true})
	r.keepAlive = net.JoinHostPort(server.IPv4, "8080")
	r.churn = net.JoinHostPort(server.IPv4, "8081")
	r.servers["keepalive"] = harness.Start(b, "flowsrv", server.Exec(filepath.Join(r.bin, "flowsrv"), "-forever", "-listen", r.keepAlive,
		"-request-bytes", strconv.Itoa(keepAliveBytes), "-response-bytes", strconv.Itoa(keepAliveBytes))...)
	r.servers["keepalive"].WaitLine(b, "listening", 10*time.Second)
	r.servers["churn"] = harness.Start(b, "flowsrv", server.Exec(filepath.Join(r.bin, "flowsrv"), "-forever", "-listen", r.churn,
		"-request-bytes", strconv.Itoa(churnRequest), "-response-bytes", strconv.Itoa(churnResponse))...)
	r.servers["churn"].WaitLine(b, "listening", 10*time.Second)
	// Warm up both paths (page cache, ARP/ND, the bridge's forwarding table).
	r.run(b, "keepalive", nobody, time.Second)
	r.run(b, "churn", nobody, time.Second)
	return r
}

// progTotals adds up each program's in-kernel run time and runs over arms.
func progTotals(arms []arm) map[string]harness.ProgDelta {
	total := map[string]harness.ProgDelta{}
	for _, a := range arms {
		for name, p := range a.progs {
			t := total[name]
			t.Name, t.Iter = name, p.Iter
			t.RunTime += p.RunTime
			t.RunCount += p.RunCount
			total[name] = t
		}
	}
	return total
}

// collectorCost adds up the collector's process CPU and the in-kernel run
// time of its programs (iterators left out: they run in its own read, so
// they are in its process CPU already) over the windows with it.
func collectorCost(arms []arm) (cpu, inKernel, wall float64, requests int64) {
	for _, a := range arms {
		cpu += a.colCPU
		wall += a.wall
		requests += a.load.requests
		for _, p := range a.progs {
			if !p.Iter {
				inKernel += p.RunTime.Seconds()
			}
		}
	}
	return cpu, inKernel, wall, requests
}

// schedIdle puts every thread of pid under SCHED_IDLE: it runs only on
// cycles that no other runnable task wants. The overhead benchmark does
// this to the reducer. P1 is what the collector costs the node it watches;
// a reducer serves a whole cluster from its own node, yet here it shares
// the two cores with the load, and in the windows with a collector it
// decodes and joins that collector's reports (about 100 millicores under
// churn, 5% of the two cores), which would be counted as the collector's
// cost. Under SCHED_IDLE it takes only what the load leaves idle (about 9%
// of the cores under churn), so it still keeps up with the stream: the
// collector does all of its work (every report sent and acknowledged, and
// collector-dropped shows that nothing was dropped), and the reducer's CPU
// stays reported per pair. On a machine saturated by other work the
// reducer can starve, the stream back up and the collector drop closed
// sockets at its buffer's cap: collector-dropped then says that the run is
// not valid. The collector, the load and its server keep
// their normal policy. New threads inherit the policy from the thread that
// creates them.
func schedIdle(tb testing.TB, pid int) {
	tb.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		tb.Fatalf("threads of %d: %v", pid, err)
	}
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_IDLE}
	for _, task := range tasks {
		tid, err := strconv.Atoi(task.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetAttr(tid, &attr, 0); err != nil && !errors.Is(err, unix.ESRCH) {
			tb.Fatalf("SCHED_IDLE for thread %d of %d: %v", tid, pid, err)
		}
	}
}

// redMcores is the reducer's CPU over arms, in millicores.
func redMcores(arms []arm) float64 {
	var cpu, s float64
	for _, a := range arms {
		cpu += a.redCPU
		s += a.load.seconds
	}
	return 1000 * cpu / s
}

func rates(arms []arm) []float64 {
	var out []float64
	for _, a := range arms {
		out = append(out, a.load.rate)
	}
	return out
}
