package promexport

import (
	"fmt"
	"io"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// BenchmarkScrape100k is one /metrics scrape of 100,000 edges through
// Gatherer and promhttp, as the reducer serves it. Target: at most 1 s.
func BenchmarkScrape100k(b *testing.B) {
	b.ReportAllocs()
	metrics := aggregate.FlowMetrics()
	series := make([]aggregate.Series, 100_000)
	for i := range series {
		v := make([]uint64, len(metrics))
		v[aggregate.TCPBytes], v[aggregate.TCPPackets], v[aggregate.TCPConnectionsOpened], v[aggregate.TCPActiveConnections] = uint64(i)*1000, uint64(i), 3, 1
		series[i] = aggregate.Series{Key: aggregate.Key{
			Src: aggregate.Workload{Name: fmt.Sprintf("client-%d", i%1000), Kind: "deployment", Namespace: "shop"},
			Dst: aggregate.Workload{Name: fmt.Sprintf("server-%d", i/1000), Kind: "deployment", Namespace: "shop"},
		}, Values: v}
	}
	reg := prometheus.NewRegistry()
	flows := New(SourceFunc(func(dst []aggregate.Series) []aggregate.Series { return append(dst, series...) }), metrics, aggregate.LevelWorkload)
	h := promhttp.HandlerFor(Gatherer{Base: reg, Flows: flows}, promhttp.HandlerOpts{})
	var size int
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
		size = rec.Body.Len()
		if _, err := io.Copy(io.Discard, rec.Body); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(size)/(1<<20), "MiB/scrape")
}
