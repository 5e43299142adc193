package promexport

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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
)

func TestCollector(t *testing.T) {
	tests := []struct {
		name   string
		series []aggregate.Series
	}{
		{name: "empty"},
		{
			name: "edges",
			series: []aggregate.Series{
				{Key: aggregate.Key{Src: curl, Dst: nginx}, Bytes: 1 << 20, Packets: 800, Opened: 3, Active: 1},
				{Key: aggregate.Key{Src: nginx, Dst: curl}, Bytes: 52_428_800, Packets: 36_000},
				{Key: aggregate.Key{Src: curl, Dst: external}, Bytes: 517, Packets: 2, Opened: 1},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := New(SourceFunc(func(dst []aggregate.Series) []aggregate.Series {
				return append(dst, tc.series...)
			}))
			problems, err := testutil.CollectAndLint(c)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range problems {
				t.Errorf("lint %s: %s", p.Metric, p.Text)
			}
			golden := filepath.Join("testdata", tc.name+".prom")
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
