package fleet

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/weir-project/weir/test/internal/harness"
)

func TestMain(m *testing.M) {
	if runRole() {
		return
	}
	goleak.VerifyTestMain(m)
}

// metricsEdges reads the flow metrics of a scrape by edge.
func metricsEdges(m harness.Metrics) map[Edge]*Want {
	out := make(map[Edge]*Want)
	for name, field := range map[string]func(*Want) *uint64{
		"weir_tcp_bytes_total":              func(w *Want) *uint64 { return &w.Bytes },
		"weir_tcp_packets_total":            func(w *Want) *uint64 { return &w.Packets },
		"weir_tcp_connections_opened_total": func(w *Want) *uint64 { return &w.Opened },
		"weir_tcp_active_connections":       func(w *Want) *uint64 { return &w.Active },
	} {
		mf := m[name]
		if mf == nil {
			continue
		}
		for _, s := range mf.GetMetric() {
			var e Edge
			for _, l := range s.GetLabel() {
				switch l.GetName() {
				case "src_workload":
					e.Src = l.GetValue()
				case "dst_workload":
					e.Dst = l.GetValue()
				}
			}
			w := out[e]
			if w == nil {
				w = &Want{}
				out[e] = w
			}
			v := s.GetCounter().GetValue() + s.GetGauge().GetValue() + s.GetUntyped().GetValue()
			*field(w) += uint64(v)
		}
	}
	return out
}

// diff lists the edges whose figures differ, and the edges on one side only.
func diff(got, want map[Edge]*Want) []string {
	var out []string
	keys := slices.Collect(maps.Keys(got))
	for k := range want {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.SortFunc(keys, func(a, b Edge) int { return strings.Compare(a.Src+" "+a.Dst, b.Src+" "+b.Dst) })
	for _, k := range keys {
		g, w := got[k], want[k]
		switch {
		case w == nil:
			out = append(out, fmt.Sprintf("%s -> %s: unexpected series %+v", k.Src, k.Dst, *g))
		case g == nil:
			out = append(out, fmt.Sprintf("%s -> %s: missing, want %+v", k.Src, k.Dst, *w))
		case *g != *w:
			out = append(out, fmt.Sprintf("%s -> %s: got %+v, want %+v", k.Src, k.Dst, *g, *w))
		}
	}
	return out
}

// waitExact scrapes urls until the sum of their edges equals want, or the
// timeout passes, and returns the differences left.
func waitExact(t testing.TB, urls []string, want map[Edge]*Want, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		sum := make(map[Edge]*Want)
		for _, u := range urls {
			m, err := harness.Scrape(u)
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range metricsEdges(m) {
				w := sum[k]
				if w == nil {
					w = &Want{}
					sum[k] = w
				}
				w.Bytes += v.Bytes
				w.Packets += v.Packets
				w.Opened += v.Opened
				w.Active += v.Active
			}
		}
		d := diff(sum, want)
		if len(d) == 0 || time.Now().After(deadline) {
			return d
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func reportDiff(t testing.TB, d []string) {
	t.Helper()
	if len(d) == 0 {
		return
	}
	if len(d) > 30 {
		d = append(d[:30], fmt.Sprintf("… and %d more", len(d)-30))
	}
	t.Errorf("edges differ from what the collectors sent:\n  %s", strings.Join(d, "\n  "))
}

// TestFleetExact: 50 simulated collectors, 20,000 sockets, cross-node pairs
// and one-sided flows, reused 4-tuples, short connections, collectors up to
// 30 intervals apart, reconnects with new epochs; every edge on /metrics is
// exactly what they sent, and there is no other series.
func TestFleetExact(t *testing.T) {
	w := harness.StartWeir(t, harness.WeirOptions{NoCollector: true, ReducerArgs: []string{"--max-series", "100000"}})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := Run(ctx, Config{
		Collectors: 50,
		Sockets:    20000,
		Interval:   200 * time.Millisecond,
		Intervals:  40,
		MaxSkew:    30,
		Change:     0.10,
		Reopen:     0.01,
		Short:      200,
		Reconnects: 5,
		Reducers:   []string{w.GRPCAddr},
		Compressor: "gzip",
		Seed:       1,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d batches, %d updates, %d edges; longest reconnect %s", res.Batches, res.Updates, len(res.Edges), res.Reconnect)
	reportDiff(t, waitExact(t, []string{w.MetricsURL}, res.Edges, 30*time.Second))
}
