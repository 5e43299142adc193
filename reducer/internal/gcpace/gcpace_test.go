package gcpace

import (
	"context"
	"runtime/debug"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestPercentFor(t *testing.T) {
	p := Pacer{Percent: 25, MinHeadroom: 32 << 20}
	for _, c := range []struct {
		live uint64
		want int
	}{
		{0, maxPercent},       // before the first collection
		{1 << 20, maxPercent}, // 1 MiB: the floor would be 3,200%
		{32 << 20, 100},       // the floor is the live heap
		{64 << 20, 50},        // half of it
		{128 << 20, 25},       // the floor and the percent agree
		{200 << 20, 25},       // fleet scale: the percent wins
		{100 << 20, 32},       // 32 MiB of 100
		{96 << 20, 34},        // 33.3% rounds up: never under the floor
	} {
		if got := p.PercentFor(c.live); got != c.want {
			t.Errorf("PercentFor(%d) = %d, want %d", c.live, got, c.want)
		}
		if got := p.PercentFor(c.live); c.live > 0 && got < maxPercent && uint64(got)*c.live < 100*p.MinHeadroom {
			t.Errorf("PercentFor(%d) = %d leaves %d bytes, under the floor", c.live, got, uint64(got)*c.live/100)
		}
	}
	if got := (Pacer{Percent: 40}).PercentFor(1 << 20); got != 40 {
		t.Errorf("without a floor PercentFor = %d, want the percent", got)
	}
}

// TestRunSetsTarget: Run sets the runtime's target at once and shows it.
func TestRunSetsTarget(t *testing.T) {
	old := debug.SetGCPercent(100)
	defer debug.SetGCPercent(old)
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "gc_percent"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	// A floor of 0 makes the target the percent whatever the heap.
	go func() { Pacer{Percent: 37}.Run(ctx, time.Hour, g); close(done) }()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(g) != 37 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if got := debug.SetGCPercent(100); got != 37 {
		t.Fatalf("the runtime's target is %d, want 37", got)
	}
}
