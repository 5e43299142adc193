package otlpexport

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	exports        prometheus.Counter
	failures       prometheus.Counter
	points         prometheus.Counter
	droppedBatches prometheus.Counter
	droppedPoints  prometheus.Counter
	queued         prometheus.Gauge
	lastSuccess    prometheus.Gauge
	duration       prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		exports: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_otlp_exports_total",
			Help: "OTLP exports the endpoint accepted.",
		}),
		failures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_otlp_export_failures_total",
			Help: "OTLP exports that failed after their retries.",
		}),
		points: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_otlp_points_exported_total",
			Help: "Data points the OTLP endpoint accepted.",
		}),
		droppedBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_otlp_dropped_batches_total",
			Help: "Snapshots not delivered: pushed out of the full queue, or failed after retries.",
		}),
		droppedPoints: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_otlp_dropped_points_total",
			Help: "Data points of the snapshots not delivered (with delta temporality their increments go out in the next delivered point).",
		}),
		queued: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_reducer_otlp_queue_batches",
			Help: "Snapshots waiting for the OTLP sender.",
		}),
		lastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_reducer_otlp_last_success_timestamp_seconds",
			Help: "Unix time of the last export the endpoint accepted.",
		}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "weir_reducer_otlp_export_duration_seconds",
			Help:    "Time of one OTLP export, retries included.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
	}
	for _, c := range []prometheus.Collector{m.exports, m.failures, m.points, m.droppedBatches, m.droppedPoints, m.queued, m.lastSuccess, m.duration} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register otlp metrics: %w", err)
		}
	}
	return m, nil
}
