// Package gcpace sets the garbage collector's target (GOGC) from the live
// heap: a percent of it, with a floor on the headroom in bytes.
//
// The reducer's heap at fleet scale is mostly long-lived records that hold
// no pointer, so a collection costs little and a low percent keeps memory
// per socket low. A small heap under connection churn allocates fast,
// though, and a low percent of a small heap means a collection every few
// megabytes. With a floor the headroom is max(percent × live, floor): a
// large heap grows by its percent, a small one by the floor.
package gcpace

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// maxPercent bounds the target of a tiny heap (at start, before the first
// collection measured the live heap).
const maxPercent = 800

// Pacer keeps the collector's target at Percent of the live heap, or
// higher when that leaves less headroom than MinHeadroom bytes.
type Pacer struct {
	Percent     int
	MinHeadroom uint64
}

// PercentFor returns the target for a live heap of live bytes.
func (p Pacer) PercentFor(live uint64) int {
	if p.MinHeadroom == 0 {
		return p.Percent
	}
	if live == 0 {
		return maxPercent
	}
	need := (p.MinHeadroom*100 + live - 1) / live
	if need > maxPercent {
		return maxPercent
	}
	return max(p.Percent, int(need))
}

// Run sets the target now and then every interval until ctx is done, and
// shows it in gauge.
func (p Pacer) Run(ctx context.Context, every time.Duration, gauge prometheus.Gauge) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	cur := -1
	set := func() {
		metrics.Read(sample)
		var live uint64
		if sample[0].Value.Kind() == metrics.KindUint64 {
			live = sample[0].Value.Uint64()
		}
		if pct := p.PercentFor(live); pct != cur {
			debug.SetGCPercent(pct)
			cur = pct
			gauge.Set(float64(pct))
		}
	}
	set()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			set()
		}
	}
}
