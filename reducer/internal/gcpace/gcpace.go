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
// for the CPU of one collection per period. These collections give the
// pages they free back to the operating system, and so does one after a
// burst whose collections left much free heap kept by the runtime.
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
	// IdleCollect, when positive, runs a collection that gives the heap it
	// freed back to the operating system (debug.FreeOSMemory), at most
	// once per IdleCollect:
	//  - once no collection has run for this long (ReasonIdle): a heap
	//    that grows slowly would otherwise hold its garbage until it
	//    reaches its target;
	//  - once the runtime keeps more than MinHeadroom of free heap
	//    (ReasonFreeHeap): after a burst (the start-up snapshots, a fleet
	//    reconnecting) the runtime's own collections free the heap but keep
	//    its pages, for the heap to grow into again.
	IdleCollect time.Duration
}

// Reasons of a forced collection (Metrics.Forced).
const (
	ReasonIdle     = "idle"
	ReasonFreeHeap = "free_heap"
)

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
	// Forced counts the collections Run ran to return the freed heap, by
	// reason (label "reason": ReasonIdle, ReasonFreeHeap).
	Forced *prometheus.CounterVec
}

// forceReason tells whether to run a collection that returns the freed
// heap, and why, when the last collection ran sinceGC ago, the last one run
// here sinceForced ago, and the runtime keeps free bytes of free heap: ""
// for none.
func (p Pacer) forceReason(sinceGC, sinceForced time.Duration, free uint64) string {
	switch {
	case p.IdleCollect <= 0:
		return ""
	case sinceGC >= p.IdleCollect:
		return ReasonIdle
	case sinceForced >= p.IdleCollect && free > p.MinHeadroom:
		return ReasonFreeHeap
	}
	return ""
}

// Run sets the target now and then every interval until ctx is done, and
// runs the collections of IdleCollect.
func (p Pacer) Run(ctx context.Context, every time.Duration, m Metrics) {
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}, {Name: "/memory/classes/heap/free:bytes"}}
	value := func(i int) uint64 {
		if sample[i].Value.Kind() == metrics.KindUint64 {
			return sample[i].Value.Uint64()
		}
		return 0
	}
	for _, r := range []string{ReasonIdle, ReasonFreeHeap} {
		m.Forced.WithLabelValues(r) // shown at 0 from the start
	}
	cur := -1
	var cycles uint64
	last := time.Now()   // of the last collection seen
	forced := time.Now() // of the last one run here
	set := func() {
		metrics.Read(sample)
		now := time.Now()
		if c := value(1); c != cycles {
			cycles, last = c, now
		}
		if reason := p.forceReason(now.Sub(last), now.Sub(forced), value(2)); reason != "" {
			debug.FreeOSMemory()
			m.Forced.WithLabelValues(reason).Inc()
			last = time.Now()
			forced = last
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
