package promexport

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// TestNativeHistogram: a histogram the store observed goes out with its
// classic buckets and its native ones (schema 3) in one sample.
func TestNativeHistogram(t *testing.T) {
	metrics := []aggregate.Metric{rtt}
	store, err := aggregate.NewStore(aggregate.Config{TTL: time.Hour, Metrics: metrics}, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1700000000, 0)
	e := store.Edge(now, aggregate.Key{Src: curl, Dst: nginx})
	for _, v := range []float64{0.00015, 0.00015, 0.002, 0.05} {
		e.Observe(now, 0, v)
	}
	c := New(SourceFunc(store.Snapshot), metrics, aggregate.LevelWorkload)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	// The reducer serves the families built directly: the same samples.
	for _, mfs := range [][]*dto.MetricFamily{mfs, c.Families()} {
		if len(mfs) != 1 || len(mfs[0].GetMetric()) != 1 {
			t.Fatalf("gathered %v", mfs)
		}
		checkBothKinds(t, mfs[0].GetMetric()[0].GetHistogram())
	}
}

func checkBothKinds(t *testing.T, h *dto.Histogram) {
	t.Helper()
	if h.GetSampleCount() != 4 || len(h.GetBucket()) != 2 || h.GetBucket()[1].GetCumulativeCount() != 3 {
		t.Errorf("classic part: %v", h)
	}
	if h.GetSchema() != aggregate.NativeSchema || len(h.GetPositiveSpan()) == 0 {
		t.Fatalf("native part: %v", h)
	}
	// 0.00015 s is in native bucket -101: (2^(-102/8), 2^(-101/8)].
	var total int64
	idx := h.GetPositiveSpan()[0].GetOffset()
	var count, first int64
	for i, d := range h.GetPositiveDelta() {
		count += d
		total += count
		if i == 0 {
			first = count
		}
	}
	if idx != -101 || first != 2 || total != 4 {
		t.Errorf("native buckets: first index %d holds %d, %d in all; want -101, 2 and 4", idx, first, total)
	}
}
