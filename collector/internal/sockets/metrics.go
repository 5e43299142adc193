package sockets

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	opens, closes, listens, unknownEvents prometheus.Counter
	untrackedCloses                       prometheus.Counter
	replaced                              prometheus.Counter
	untrackedSamples                      prometheus.Counter
	counterResets                         prometheus.Counter
	bufferDropped                         prometheus.Counter
	bufferDroppedBytes                    prometheus.Counter
	listenersEvicted                      prometheus.Counter
	eventErrors                           prometheus.Counter
}

func newMetrics(reg prometheus.Registerer, t *Table) (*metrics, error) {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_collector_events_total",
		Help: "Lifecycle events read from the kernel, by kind.",
	}, []string{"kind"})
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &metrics{
		opens:         events.WithLabelValues("open"),
		closes:        events.WithLabelValues("close"),
		listens:       events.WithLabelValues("listen"),
		unknownEvents: events.WithLabelValues("unknown"),
		untrackedCloses: counter("weir_collector_untracked_closes_total",
			"Close events for sockets that were not tracked, ignored."),
		replaced: counter("weir_collector_replaced_sockets_total",
			"Open events for a socket still tracked as live (its close was missed); the old socket was closed first."),
		untrackedSamples: counter("weir_collector_untracked_samples_total",
			"Socket map entries polled whose open event had not been read, or was lost."),
		counterResets: counter("weir_collector_baseline_resets_total",
			"Sockets whose cumulative counters went backwards; the delta was clamped to 0 and the baseline reset."),
		bufferDropped: counter("weir_collector_buffer_dropped_total",
			"Closed sockets dropped unreported because the buffer was at its byte cap."),
		bufferDroppedBytes: counter("weir_collector_buffer_dropped_bytes_total",
			"Payload bytes (sent and received) of closed sockets dropped from the buffer, never reported."),
		listenersEvicted: counter("weir_collector_listeners_evicted_total",
			"Listening sockets forgotten because the listener table was full."),
		eventErrors: counter("weir_collector_event_errors_total",
			"Lifecycle events that could not be read or decoded, skipped."),
	}
	collectors := []prometheus.Collector{
		events, m.untrackedCloses, m.replaced, m.untrackedSamples, m.counterResets,
		m.bufferDropped, m.bufferDroppedBytes, m.listenersEvicted, m.eventErrors,
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "weir_collector_sockets",
			Help: "Live sockets tracked.",
		}, func() float64 { return float64(t.Live()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "weir_collector_buffer_bytes",
			Help: "Estimated memory held by closed sockets awaiting report.",
		}, func() float64 { return float64(t.BufferedBytes()) }),
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}
