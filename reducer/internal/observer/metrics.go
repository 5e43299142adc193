package observer

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	lost       prometheus.Counter
	events     prometheus.Counter
	streams    prometheus.Gauge
	maxStreams prometheus.Gauge
	refused    prometheus.Counter
	following  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		lost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_observer_lost_total",
			Help: "Flow events an observer stream lost because its buffer was full; the stream is told in-band.",
		}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_observer_events_total",
			Help: "Flow events (open, update, close) made from the engine's events.",
		}),
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_reducer_observer_streams",
			Help: "Open WatchFlows and WatchServiceMap streams.",
		}),
		maxStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_reducer_observer_streams_max",
			Help: "The cap on open observer streams (--max-observers).",
		}),
		following: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_reducer_observer_following",
			Help: "1 while the observer follows the engine's events (a WatchFlows stream is open, or ended less than the linger ago).",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_observer_streams_refused_total",
			Help: "Observer streams refused because --max-observers were open.",
		}),
	}
	for _, c := range []prometheus.Collector{m.lost, m.events, m.streams, m.maxStreams, m.refused, m.following} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register observer metrics: %w", err)
		}
	}
	return m, nil
}
