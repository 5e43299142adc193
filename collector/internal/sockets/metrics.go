package sockets

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	opens, existing, closes, listens, orphans, unknownEvents prometheus.Counter
	untrackedCloses                                          prometheus.Counter
	duplicateOpens                                           prometheus.Counter
	untrackedSamples                                         prometheus.Counter
	backwardReads                                            prometheus.Counter
	socketCap                                                prometheus.Counter
	vanished                                                 prometheus.Counter
	invalidEndpoints                                         prometheus.Counter
	bufferDropped                                            prometheus.Counter
	bufferDroppedBytes                                       prometheus.Counter
	listenersEvicted                                         prometheus.Counter
	eventErrors                                              prometheus.Counter
	resumeForgotten                                          prometheus.Counter
	failed                                                   *prometheus.CounterVec
	failedDropped                                            prometheus.Counter
	resetsUnreported                                         prometheus.Counter
	otherNetNS                                               *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer, t *Table) (*metrics, error) {
	events := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weir_collector_events_total",
		Help: "Lifecycle events read from the kernel or found at start, by kind; open is a new connection established while the probe was loaded, first seen by a sample or by its close; orphan is a sample of a socket closed by its process with data still to send, where the sampling walk goes over open files.",
	}, []string{"kind"})
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &metrics{
		opens:         events.WithLabelValues("open"),
		existing:      events.WithLabelValues("existing"),
		closes:        events.WithLabelValues("close"),
		listens:       events.WithLabelValues("listen"),
		orphans:       events.WithLabelValues("orphan"),
		unknownEvents: events.WithLabelValues("unknown"),
		untrackedCloses: counter("weir_collector_untracked_closes_total",
			"Close events for sockets found already open that discovery missed and no poll sampled, ignored."),
		duplicateOpens: counter("weir_collector_duplicate_opens_total",
			"Discovered sockets or samples of a socket already tracked under the same cookie, or closed and awaiting report; not counted twice."),
		untrackedSamples: counter("weir_collector_untracked_samples_total",
			"Samples of sockets found already open that discovery missed; tracked from then on, with the sampled counters as the baseline."),
		backwardReads: counter("weir_collector_backward_reads_total",
			"Counter reads that went backwards; nothing was counted for them and the baseline was reset to the new value."),
		socketCap: counter("weir_collector_socket_cap_total",
			"Sockets not tracked because --max-sockets live sockets were tracked already; each socket is counted once."),
		vanished: counter("weir_collector_vanished_sockets_total",
			"Live sockets that two complete polls in a row no longer saw (their close event was lost); closed with their last counters."),
		invalidEndpoints: counter("weir_collector_invalid_endpoints_total",
			"Sockets not tracked because their event or sample carried no local or remote address; each socket is counted once."),
		bufferDropped: counter("weir_collector_buffer_dropped_total",
			"Closed sockets dropped unreported because the buffer was at its byte cap."),
		bufferDroppedBytes: counter("weir_collector_buffer_dropped_bytes_total",
			"Payload bytes (sent and received) of closed sockets dropped from the buffer, never reported."),
		listenersEvicted: counter("weir_collector_listeners_evicted_total",
			"Listening sockets forgotten because the listener table was full."),
		resumeForgotten: counter("weir_collector_resume_forgotten_total",
			"Socket changes of reports the reducer had not confirmed yet, forgotten to stay under the cap of kept changes: lost if their session ends before the reducer applies them."),
		eventErrors: counter("weir_collector_event_errors_total",
			"Lifecycle events that could not be read or decoded, skipped."),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_collector_failed_connects_total",
			Help: "TCP connects that never established, by reason (refused, timeout, unreachable).",
		}, []string{"reason"}),
		failedDropped: counter("weir_collector_failed_connects_dropped_total",
			"Failed TCP connects dropped unreported because the queue of them awaiting report was full."),
		resetsUnreported: counter("weir_collector_resets_unreported_total",
			"RST events of sockets the collector had already reported closed, or of a socket first seen at its close that came after 64 later closes; not counted."),
		otherNetNS: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_collector_netns_ignored_total",
			Help: "Lifecycle events, samples and UDP records of sockets in network namespaces outside --netns, ignored; by source (event, sample, udp).",
		}, []string{"source"}),
	}
	collectors := []prometheus.Collector{
		events, m.untrackedCloses, m.duplicateOpens, m.untrackedSamples, m.backwardReads, m.socketCap, m.vanished, m.invalidEndpoints,
		m.bufferDropped, m.bufferDroppedBytes, m.listenersEvicted, m.resumeForgotten, m.eventErrors, m.failed, m.failedDropped, m.resetsUnreported, m.otherNetNS,
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
