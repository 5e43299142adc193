// Package gcpace sets the garbage collector's target (GOGC) from the live
// heap: a percent of it, with a floor on the headroom in bytes.
//
// The reducer's heap at fleet scale is mostly long-lived records that hold
// no pointer, so a collection costs little and a low percent keeps memory
// per socket low. A small heap under connection churn allocates fast,
// though, and a low percent of a small heap means a collection every few
// megabytes. With a floor the headroom is max(percent × live, floor): a
// large heap grows by its percent, a small one by the floor.
//
// A heap at fleet scale that changes slowly (sockets mostly updated in
// place) takes long to grow by its percent, and holds its garbage until
// then: a collection after some quiet time keeps it near the live heap,
// for the CPU of one collection per period.
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
	// IdleCollect, when positive, runs a collection once none has run for
	// this long, and gives the heap it freed back to the operating system
	// (debug.FreeOSMemory): a heap that grows slowly would otherwise hold
	// its garbage until it reaches its target, and the runtime would keep
	// the freed pages for it to grow into.
	IdleCollect time.Duration
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

// Metrics are what Run shows.
type Metrics struct {
	// Percent is the current target.
	Percent prometheus.Gauge
	// IdleCollections counts the collections Run ran because none had
	// run for IdleCollect (each returning the freed heap).
	IdleCollections prometheus.Counter
}

// Run sets the target now and then every interval until ctx is done, and
// runs a collection that returns the freed heap when none ran for
// IdleCollect.
func (p Pacer) Run(ctx context.Context, every time.Duration, m Metrics) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
	value := func(i int) uint64 {
		if sample[i].Value.Kind() == metrics.KindUint64 {
			return sample[i].Value.Uint64()
		}
		return 0
	}
	cur := -1
	var cycles uint64
	last := time.Now() // of the last collection seen
	set := func() {
		metrics.Read(sample)
		now := time.Now()
		if c := value(1); c != cycles {
			cycles, last = c, now
		} else if p.IdleCollect > 0 && now.Sub(last) >= p.IdleCollect {
			debug.FreeOSMemory()
			m.IdleCollections.Inc()
			last = time.Now()
			metrics.Read(sample)
			cycles = value(1)
		}
		if pct := p.PercentFor(value(0)); pct != cur {
			debug.SetGCPercent(pct)
			cur = pct
			m.Percent.Set(float64(pct))
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
