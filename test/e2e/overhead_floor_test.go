package e2e

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weir-project/weir/test/internal/harness"
)

// BenchmarkPrivilegedOverheadFloor measures how much of P1-churn's loss no
// collector built on weir's programs can avoid. In
// BenchmarkPrivilegedOverhead's rig and churn load it runs windows in
// fours, each watched differently:
//
//   - nothing;
//   - minimal: floorsink --programs minimal (cost_floor.c's floor_minimal:
//     only the socket storage and ring calls of a program that reports each
//     socket's end with its owner; no field read; its records thrown away);
//   - floor: floorsink --programs weir (the collector's programs loaded as
//     the collector loads them, every event read and thrown away, the
//     sockets walked every 5 s; no table, no encoding, nothing sent);
//   - collector: weir-collector.
//
// The order is ABCD, then DCBA, and so on, so that a drift of the
// machine's speed falls on all four alike. For each watcher it reports
// the connections per second with it ÷ without (X-churn-ratio, the median
// over the fours, and its spread; churn-ratio is the collector's, P1-churn),
// the process CPU plus the programs' in-kernel time per connection
// (X-ns/conn), and inet_sock_set_state's (or floor_minimal's) in-kernel time
// per run (X-bpf-ns/run).
//
// A floor-churn-ratio under P1-churn's target (0.95) means that no collector
// on these programs meets it on this machine, however little work of its own
// it does; minimal-churn-ratio is the same bound for any program that
// reports what weir reports in this design.
func BenchmarkPrivilegedOverheadFloor(b *testing.B) {
	harness.RequireRoot(b)
	n, window := 2, time.Second
	if fullBench() {
		n, window = max(5, b.N), 5*time.Second
	}
	r := newOverheadRig(b)

	b.ResetTimer()
	watchers := []struct {
		w    watcher
		name string
	}{{nobody, ""}, {floorMinimal, "minimal"}, {floorSink, "floor"}, {collector, "collector"}}
	ratios := map[watcher][]float64{}
	arms := map[watcher][]arm{}
	var sb strings.Builder
	for i := range n {
		got := map[watcher]arm{}
		for j := range watchers {
			k := j
			if i%2 == 1 {
				k = len(watchers) - 1 - j
			}
			got[watchers[k].w] = r.run(b, "churn", watchers[k].w, window)
		}
		without := got[nobody].load.rate
		sb.WriteString(";")
		for _, w := range watchers {
			a := got[w.w]
			fmt.Fprintf(&sb, " %.0f", a.load.rate)
			if w.w != nobody {
				ratios[w.w] = append(ratios[w.w], a.load.rate/without)
				arms[w.w] = append(arms[w.w], a)
			}
		}
	}
	b.StopTimer()
	b.Logf("churn fours, conn/s without, minimal, floor, collector%s", sb.String())

	for _, w := range watchers[1:] {
		prefix := w.name + "-"
		if w.w == collector {
			prefix = "" // churn-ratio, as in BenchmarkPrivilegedOverhead
		}
		b.ReportMetric(median(ratios[w.w]), prefix+"churn-ratio")
		b.ReportMetric(slices.Min(ratios[w.w]), prefix+"churn-ratio-min")
		b.ReportMetric(slices.Max(ratios[w.w]), prefix+"churn-ratio-max")
		cpu, inKernel, _, conns := collectorCost(arms[w.w])
		b.ReportMetric(1e9*(cpu+inKernel)/float64(conns), w.name+"-ns/conn")
		b.ReportMetric(stateNsPerRun(b, arms[w.w]), w.name+"-bpf-ns/run")
		var dropped, events float64
		for _, a := range arms[w.w] {
			dropped += a.dropped
			events += a.events
		}
		// Must be 0, as in BenchmarkPrivilegedOverhead: work dropped would
		// flatter the figures.
		b.ReportMetric(dropped, w.name+"-dropped")
		b.Logf("%s: process %.3f s + in-kernel %.3f s over %d connections; %.0f events or sockets dropped; %.2f events read per connection (floorsink only)",
			w.name, cpu, inKernel, conns, dropped, events/float64(conns))
	}
}

// stateNsPerRun is the in-kernel time per run, over arms, of the program on
// TCP state changes: inet_sock_set_state (the fentry path's
// fentry_inet_sk_state_store on a kernel without BTF tracepoints), or
// floor_minimal.
func stateNsPerRun(b *testing.B, arms []arm) float64 {
	b.Helper()
	var ns, runs float64
	for name, p := range progTotals(arms) {
		if name == "inet_sock_set_state" || name == "fentry_inet_sk_state_store" || name == "floor_minimal" {
			ns += float64(p.RunTime.Nanoseconds())
			runs += float64(p.RunCount)
		}
	}
	if runs == 0 {
		b.Fatal("no program on TCP state changes ran")
	}
	return ns / runs
}

// sinkStats asks floorsink for its counters since it started: the events
// (records) it read and those its programs lost to a full ring.
func sinkStats(tb testing.TB, sink *harness.Process) (events, ringFull float64) {
	tb.Helper()
	sink.Send(tb, "stats")
	line := sink.WaitLine(tb, "stats ", 10*time.Second)
	got := map[string]float64{}
	for _, f := range strings.Fields(line)[1:] {
		k, v, _ := strings.Cut(f, "=")
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			tb.Fatalf("floorsink: %q: %v", line, err)
		}
		got[k] = n
	}
	for _, k := range []string{"events", "ring_full"} {
		if _, ok := got[k]; !ok {
			tb.Fatalf("floorsink: no %s in %q", k, line)
		}
	}
	return got["events"], got["ring_full"]
}
