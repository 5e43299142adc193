package e2e

import (
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// BenchmarkPrivilegedWireBytesPerUpdate measures what the collector puts on
// the wire (gzip-compressed gRPC, framing included) per socket-stat update
// in steady state, under varied traffic: 64 loopback connections to flowsrv
// --sized, each following one profile of flowcli --mix (chatty RPC with
// small requests and medium answers, uploads that mostly send, downloads
// that mostly receive, sporadic ones idle across whole report intervals, and
// on/off ones alternating bursts and idle periods of a few seconds), with
// random sizes and exponential pauses, so counters change by amounts that
// differ from socket to socket and interval to interval, and not every
// socket changes in every report. The figure is the growth of
// weir_collector_sent_bytes_total divided by the growth of
// weir_collector_socket_updates_total over the measured reports (any other
// traffic on the machine is part of both). Target (P5): at most 8 B.
// It also reports the CPU the collector and the reducer used meanwhile, in
// millicores (thousandths of one core).
func BenchmarkPrivilegedWireBytesPerUpdate(b *testing.B) {
	harness.RequireRoot(b)
	b.ReportAllocs()
	const conns = 64
	reports := max(b.N, 5)
	if fullBench() {
		reports = max(b.N, 20)
	}
	w := harness.StartWeir(b, harness.WeirOptions{Interval: time.Second})

	run := 3*time.Second + time.Duration(reports)*time.Second + 3*time.Second
	bin := harness.Binaries(b)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(b)))
	srv := harness.Start(b, "flowsrv", filepath.Join(bin, "flowsrv"), "-listen", addr, "-forever", "-sized")
	srv.WaitLine(b, "listening", 10*time.Second)
	cli := harness.Start(b, "flowcli", filepath.Join(bin, "flowcli"), "-connect", addr,
		"-conns", strconv.Itoa(conns), "-mix", "-duration", run.String(), "-seed", strconv.FormatInt(time.Now().UnixNano(), 10))
	b.Log(cli.WaitLine(b, "profiles", 10*time.Second))

	time.Sleep(3 * time.Second) // the connections are announced; steady state from here
	b.ResetTimer()
	began := time.Now()
	colCPU, redCPU := cpuOrFatal(b, w.Collector), cpuOrFatal(b, w.Reducer)
	before := scrapeOrFatal(b, w.CollectorMetricsURL)
	time.Sleep(time.Duration(reports) * time.Second)
	after := scrapeOrFatal(b, w.CollectorMetricsURL)
	colCPU, redCPU = cpuOrFatal(b, w.Collector)-colCPU, cpuOrFatal(b, w.Reducer)-redCPU
	wall := time.Since(began).Seconds()
	b.StopTimer()

	bytes := after.Sum("weir_collector_sent_bytes_total", nil) - before.Sum("weir_collector_sent_bytes_total", nil)
	updates := after.Sum("weir_collector_socket_updates_total", nil) - before.Sum("weir_collector_socket_updates_total", nil)
	// About 40% of the connections are chatty and change in every report,
	// both ends: at least conns/2 updates per report on average.
	if updates < float64(conns/2*reports) {
		b.Fatalf("%v socket updates in %d reports, want at least %d", updates, reports, conns/2*reports)
	}
	b.ReportMetric(bytes/updates, "B/update")
	b.ReportMetric(updates/float64(reports), "updates/report")
	b.ReportMetric(1000*colCPU/wall, "collector-mcores")
	b.ReportMetric(1000*redCPU/wall, "reducer-mcores")
	if err := cli.Wait(run + 10*time.Second); err != nil {
		b.Fatalf("flowcli: %v\n%s", err, cli.Stderr())
	}
}

func cpuOrFatal(tb testing.TB, p *harness.Process) float64 {
	tb.Helper()
	s, err := p.CPUSeconds()
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// BenchmarkPrivilegedFirstByteToEdge measures the time from the start of a
// loopback transfer to the moment its bytes are on the reducer's /metrics,
// with the default 5 s report interval. Target (P6): at most interval + 1 s.
// Each iteration is one transfer, started at a random point of the report
// cycle; the metric s/edge-max is the worst one.
func BenchmarkPrivilegedFirstByteToEdge(b *testing.B) {
	harness.RequireRoot(b)
	const interval = 5 * time.Second
	const request, response = 10_000, 1_000
	w := harness.StartWeir(b, harness.WeirOptions{Interval: interval})

	var took []time.Duration
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		time.Sleep(rand.N(interval))
		b.StartTimer()
		before := readEdge(scrapeOrFatal(b, w.MetricsURL))
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(harness.FreePort(b)))
		srv := harness.Start(b, "flowsrv", peerBin(b, "flowsrv"), "-listen", addr,
			"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))
		srv.WaitLine(b, "listening", 10*time.Second)
		start := time.Now()
		harness.Start(b, "flowcli", peerBin(b, "flowcli"), "-connect", addr,
			"-request-bytes", strconv.Itoa(request), "-response-bytes", strconv.Itoa(response))
		harness.WaitFor(b, w.MetricsURL, interval+5*time.Second, "the transfer on /metrics", func(m harness.Metrics) bool {
			e := readEdge(m)
			return e.up-before.up >= request && e.down-before.down >= response
		})
		took = append(took, time.Since(start))
	}
	b.StopTimer()
	var sum time.Duration
	for _, d := range took {
		sum += d
	}
	b.ReportMetric(slices.Max(took).Seconds(), "s/edge-max")
	b.ReportMetric((sum / time.Duration(len(took))).Seconds(), "s/edge-mean")
}

func scrapeOrFatal(tb testing.TB, url string) harness.Metrics {
	tb.Helper()
	m, err := harness.Scrape(url)
	if err != nil {
		tb.Fatal(fmt.Errorf("scrape: %w", err))
	}
	return m
}
