package gcpace

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
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
	m := Metrics{Percent: g, IdleCollections: prometheus.NewCounter(prometheus.CounterOpts{Name: "idle"})}
	go func() { Pacer{Percent: 37}.Run(ctx, time.Hour, m); close(done) }()
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

// TestRunCollectsWhenIdle: with IdleCollect, Run runs collections while
// none comes by itself, and counts them; without, it runs none.
func TestRunCollectsWhenIdle(t *testing.T) {
	old := debug.SetGCPercent(-1) // no collection but Run's
	defer debug.SetGCPercent(old)
	cycles := func() uint64 {
		s := []metrics.Sample{{Name: "/gc/cycles/total:gc-cycles"}}
		metrics.Read(s)
		return s[0].Value.Uint64()
	}
	run := func(idle time.Duration) (runs float64, gcs uint64) {
		m := Metrics{Percent: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pct"}),
			IdleCollections: prometheus.NewCounter(prometheus.CounterOpts{Name: "idle"})}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		before := cycles()
		// A percent of -1 keeps the runtime's own collections off.
		go func() { Pacer{Percent: -1, IdleCollect: idle}.Run(ctx, 10*time.Millisecond, m); close(done) }()
		time.Sleep(500 * time.Millisecond)
		cancel()
		<-done
		return testutil.ToFloat64(m.IdleCollections), cycles() - before
	}
	runs, gcs := run(50 * time.Millisecond)
	// With the runtime's own collections off, every collection is Run's.
	if runs < 3 || gcs != uint64(runs) {
		t.Errorf("idle 50ms over 500ms: %v collections counted, %d run; want at least 3, each counted once", runs, gcs)
	}
	if runs, gcs := run(0); runs != 0 || gcs != 0 {
		t.Errorf("without IdleCollect: %v collections counted, %d run; want none", runs, gcs)
	}
}

// sink keeps an allocation from being optimized away.
var sink []byte

// TestIdleCollectReturnsMemory: an idle collection gives the heap it freed
// back to the operating system, instead of keeping it for the heap to grow
// into (a plain runtime.GC leaves it all free but kept).
func TestIdleCollectReturnsMemory(t *testing.T) {
	old := debug.SetGCPercent(-1) // no collection but Run's
	defer debug.SetGCPercent(old)
	const garbage = 64 << 20
	sink = make([]byte, garbage)
	for i := range sink {
		sink[i] = 1 // resident
	}
	sink = nil
	m := Metrics{Percent: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pct"}),
		IdleCollections: prometheus.NewCounter(prometheus.CounterOpts{Name: "idle"})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Pacer{Percent: -1, IdleCollect: 50 * time.Millisecond}.Run(ctx, 10*time.Millisecond, m)
		close(done)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.IdleCollections) < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if n := testutil.ToFloat64(m.IdleCollections); n < 1 {
		t.Fatalf("no idle collection in 5 s")
	}
	s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	if kept := s[0].Value.Uint64(); kept >= garbage/4 {
		t.Errorf("after an idle collection the runtime keeps %d bytes of free heap; the %d bytes freed should have been returned", kept, garbage)
	}
}
