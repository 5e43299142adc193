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
	m := Metrics{Percent: g, Forced: newForced()}
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
		m := Metrics{Percent: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pct"}), Forced: newForced()}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		before := cycles()
		// A percent of -1 keeps the runtime's own collections off.
		go func() { Pacer{Percent: -1, IdleCollect: idle}.Run(ctx, 10*time.Millisecond, m); close(done) }()
		time.Sleep(500 * time.Millisecond)
		cancel()
		<-done
		if n := testutil.ToFloat64(m.Forced.WithLabelValues(ReasonFreeHeap)); n != 0 {
			t.Errorf("%v collections for free heap, want none: with no other collection, each is an idle one", n)
		}
		return testutil.ToFloat64(m.Forced.WithLabelValues(ReasonIdle)), cycles() - before
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
	m := Metrics{Percent: prometheus.NewGauge(prometheus.GaugeOpts{Name: "pct"}), Forced: newForced()}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		Pacer{Percent: -1, IdleCollect: 50 * time.Millisecond}.Run(ctx, 10*time.Millisecond, m)
		close(done)
	}()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(m.Forced.WithLabelValues(ReasonIdle)) < 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-done
	if n := testutil.ToFloat64(m.Forced.WithLabelValues(ReasonIdle)); n < 1 {
		t.Fatalf("no idle collection in 5 s")
	}
	s := []metrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	metrics.Read(s)
	if kept := s[0].Value.Uint64(); kept >= garbage/4 {
		t.Errorf("after an idle collection the runtime keeps %d bytes of free heap; the %d bytes freed should have been returned", kept, garbage)
	}
}

func newForced() *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: "forced"}, []string{"reason"})
}

// TestForceReason: a collection that returns the freed heap runs once
// none has run for IdleCollect, or once the runtime keeps more than
// MinHeadroom of free heap and none was forced for IdleCollect.
func TestForceReason(t *testing.T) {
	p := Pacer{MinHeadroom: 32 << 20, IdleCollect: 5 * time.Second}
	for _, c := range []struct {
		sinceGC, sinceForced time.Duration
		free                 uint64
		want                 string
	}{
		{time.Second, time.Second, 0, ""},
		{5 * time.Second, 5 * time.Second, 0, ReasonIdle},
		{5 * time.Second, time.Second, 0, ReasonIdle},             // no collection for 5 s, whatever was forced
		{time.Second, 5 * time.Second, 100 << 20, ReasonFreeHeap}, // collections come, and leave 100 MiB kept
		{time.Second, 4 * time.Second, 100 << 20, ""},             // at most one forced per IdleCollect
		{time.Second, time.Minute, 32 << 20, ""},                  // not more than MinHeadroom
		{time.Second, time.Minute, 32<<20 + 1, ReasonFreeHeap},    // more
		{5 * time.Second, 5 * time.Second, 100 << 20, ReasonIdle}, // both: counted once, as idle
	} {
		if got := p.forceReason(c.sinceGC, c.sinceForced, c.free); got != c.want {
			t.Errorf("forceReason(%v since a collection, %v since a forced one, %d free) = %q, want %q",
				c.sinceGC, c.sinceForced, c.free, got, c.want)
		}
	}
	if got := (Pacer{MinHeadroom: 32 << 20}).forceReason(time.Hour, time.Hour, 1<<30); got != "" {
		t.Errorf("without IdleCollect: %q, want none", got)
	}
}
