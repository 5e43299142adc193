package promexport

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"go.uber.org/goleak"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	curl     = aggregate.Workload{Name: "curl", Kind: "process"}
	nginx    = aggregate.Workload{Name: "nginx", Kind: "process"}
	external = aggregate.Workload{Name: "203.0.113.9", Kind: "external"}
	curlOnA  = aggregate.Workload{Name: "curl", Kind: "process", Node: "node-a"}
	// Two binaries of one Deployment and the one of another, at the
	// process level.
	shopCurl   = aggregate.Workload{Name: "shop", Kind: "deployment", Namespace: "prod", Process: "curl"}
	shopPython = aggregate.Workload{Name: "shop", Kind: "deployment", Namespace: "prod", Process: "python3"}
	apiNginx   = aggregate.Workload{Name: "api", Kind: "deployment", Namespace: "prod", Process: "nginx"}
	rtt        = aggregate.Metric{Name: "weir_tcp_rtt_seconds", Help: "Smoothed RTT measured by src on connections with dst.",
		Type: aggregate.MetricHistogram, Buckets: []float64{0.001, 0.01}}
)

func TestCollector(t *testing.T) {
	tests := []struct {
		name    string
		golden  string // testdata/<golden>.prom; name when empty
		metrics []aggregate.Metric
		level   aggregate.Level
		series  []aggregate.Series
	}{
		{name: "empty"},
		{
			name: "edges",
			series: []aggregate.Series{
				{Key: aggregate.Key{Src: curl, Dst: nginx}, Values: pad(1<<20, 800, 3, 1)},
				{Key: aggregate.Key{Src: nginx, Dst: curl}, Values: pad(52_428_800, 36_000, 0, 0)},
				{Key: aggregate.Key{Src: curl, Dst: external}, Values: pad(517, 2, 1, 0)},
			},
		},
		{
			// A new metric, a histogram and the node level need no change
			// to the collector.
			name:    "histogram at the node level",
			golden:  "histogram",
			metrics: append(aggregate.FlowMetrics()[:1], rtt),
			level:   aggregate.LevelNode,
			series: []aggregate.Series{
				{Key: aggregate.Key{Src: curlOnA, Dst: nginx}, Values: []uint64{100, 0},
					Hists: []aggregate.Histogram{{}, {Counts: []uint64{1, 2, 0}, Count: 3, Sum: 0.012}}},
				// Never observed: no histogram series.
				{Key: aggregate.Key{Src: nginx, Dst: curlOnA}, Values: []uint64{7, 0}, Hists: make([]aggregate.Histogram, 2)},
			},
		},
		{
			// An end with no process (external) has no process label.
			name:   "process level",
			golden: "process",
			level:  aggregate.LevelProcess,
			series: []aggregate.Series{
				{Key: aggregate.Key{Src: shopCurl, Dst: apiNginx}, Values: pad(100, 2, 1, 1)},
				{Key: aggregate.Key{Src: shopPython, Dst: apiNginx}, Values: pad(30, 1, 1, 1)},
				{Key: aggregate.Key{Src: apiNginx, Dst: shopCurl}, Values: pad(1000, 3, 0, 0)},
				{Key: aggregate.Key{Src: shopCurl, Dst: external}, Values: pad(5, 1, 1, 1)},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			metrics := tc.metrics
			if metrics == nil {
				metrics = aggregate.FlowMetrics()
			}
			c := New(SourceFunc(func(dst []aggregate.Series) []aggregate.Series {
				return append(dst, tc.series...)
			}), metrics, tc.level)
			problems, err := testutil.CollectAndLint(c)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("lint %s: %s", p.Metric, p.Text)
			}
			name := tc.golden
			if name == "" {
				name = tc.name
			}
			golden := filepath.Join("testdata", name+".prom")
			if *update {
				writeGolden(t, golden, c)
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if err := testutil.CollectAndCompare(c, strings.NewReader(string(want))); err != nil {
				t.Error(err)
			}
			// What the reducer serves: the Gatherer's families, the same
			// samples in the table's order, without empty labels.
			reg := prometheus.NewPedanticRegistry()
			reg.MustRegister(c)
			if got, want := gatherText(t, sorted{Gatherer{Base: prometheus.NewRegistry(), Flows: c}}), gatherText(t, sorted{reg}); got != want {
				t.Errorf("Gatherer:\n%s\nwant (the registry's, without empty labels):\n%s", got, want)
			}
		})
	}
}

// writeGolden writes what c collects to path in the text exposition format.
func writeGolden(t *testing.T, path string, c prometheus.Collector) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(c)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
}

// pad returns the values of the first flow metrics, the others zero.
func pad(v ...uint64) []uint64 {
	out := make([]uint64, len(aggregate.FlowMetrics()))
	copy(out, v)
	return out
}

// sorted orders a gatherer's families, samples and labels as a registry
// does.
type sorted struct{ g prometheus.Gatherer }

func (s sorted) Gather() ([]*dto.MetricFamily, error) {
	mfs, err := s.g.Gather()
	key := func(m *dto.Metric) string {
		var b strings.Builder
		for _, l := range m.GetLabel() {
			b.WriteString(l.GetName() + "=" + l.GetValue() + ",")
		}
		return b.String()
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			m.Label = slices.DeleteFunc(slices.Clone(m.Label), func(l *dto.LabelPair) bool { return l.GetValue() == "" })
			slices.SortFunc(m.Label, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
		}
		slices.SortFunc(mf.Metric, func(a, b *dto.Metric) int { return strings.Compare(key(a), key(b)) })
	}
	slices.SortFunc(mfs, func(a, b *dto.MetricFamily) int { return strings.Compare(a.GetName(), b.GetName()) })
	return mfs, err
}

// gatherText renders what g gathers in the text format.
func gatherText(t *testing.T, g prometheus.Gatherer) string {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, mf := range mfs {
		if _, err := expfmt.MetricFamilyToText(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.String()
}
