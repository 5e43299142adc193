package stream

import (
	"context"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/stats"

	"github.com/weir-project/weir/collector/internal/probe"
)

type metrics struct {
	connected    prometheus.Gauge
	reconnects   prometheus.Counter
	batches      prometheus.Counter
	updates      prometheus.Counter
	sentBytes    prometheus.Counter
	acks         prometheus.Counter
	unacked      prometheus.Counter
	stalls       prometheus.Counter
	resumed      prometheus.Counter
	pollErrors   prometheus.Counter
	earlyReports prometheus.Counter
	splitReports prometheus.Counter

	src       Source
	dropsMu   sync.Mutex
	lastDrops probe.Drops
}

func newMetrics(reg prometheus.Registerer, src Source) (*metrics, error) {
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	}
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_collector_connected",
			Help: "1 while a stream to the reducer is open, else 0.",
		}),
		reconnects: counter("weir_collector_stream_reconnects_total", "Attempts to open the stream again after it failed or could not open."),
		batches:    counter("weir_collector_batches_sent_total", "Batches sent to the reducer."),
		updates:    counter("weir_collector_socket_updates_total", "Socket counter updates (stats entries) sent to the reducer."),
		sentBytes:  counter("weir_collector_sent_bytes_total", "Bytes sent on the stream to the reducer, compressed, with gRPC framing."),
		acks:       counter("weir_collector_acks_received_total", "Batches the reducer acknowledged (an ack covers every batch up to its sequence)."),
		resumed: counter("weir_collector_resumed_reports_total",
			"Reports that the reducer had not applied when their session ended, sent again in the next session (the reducer still held the session they belonged to)."),
		stalls: counter("weir_collector_stream_stalls_total",
			"Sessions ended because the reducer acknowledged nothing for the ack timeout while batches were outstanding."),
		unacked: counter("weir_collector_batches_unacknowledged_total",
			"Batches sent but not acknowledged when their stream ended; the next session sends again what the reducer says it did not apply (weir_collector_resumed_reports_total)."),
		pollErrors: counter("weir_collector_poll_errors_total", "Failed reads of the kernel's socket storage."),
		earlyReports: counter("weir_collector_early_reports_total",
			"Batches sent before the report interval because closed sockets awaiting report passed half of --buffer-bytes."),
		splitReports: counter("weir_collector_split_reports_total",
			"Reports larger than --max-batch-bytes, sent as several batches (typically the first report after an outage)."),
		src: src,
	}
	collectors := []prometheus.Collector{
		m.connected, m.reconnects, m.batches, m.updates, m.sentBytes, m.acks, m.unacked, m.stalls, m.resumed, m.pollErrors, m.earlyReports, m.splitReports,
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "weir_collector_ring_full_total",
			Help: "Lifecycle events lost in the kernel because the ring buffer was full.",
		}, func() float64 { return float64(m.drops().RingFull) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{
			Name: "weir_collector_storage_full_total",
			Help: "Sockets not tracked in the kernel because their socket storage could not be allocated.",
		}, func() float64 { return float64(m.drops().StorageFull) }),
	}
	for _, c := range collectors {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// drops returns the probe's loss counters, or the last ones read if the
// probe cannot be read now.
func (m *metrics) drops() probe.Drops {
	m.dropsMu.Lock()
	defer m.dropsMu.Unlock()
	if d, err := m.src.Drops(); err == nil {
		m.lastDrops = d
	}
	return m.lastDrops
}

// wireBytes is a gRPC stats handler counting the bytes sent on the wire.
type wireBytes struct {
	sent prometheus.Counter
}

func (w wireBytes) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (w wireBytes) HandleRPC(_ context.Context, s stats.RPCStats) {
	if p, ok := s.(*stats.OutPayload); ok {
		w.sent.Add(float64(p.WireLength))
	}
}

func (w wireBytes) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }

func (w wireBytes) HandleConn(context.Context, stats.ConnStats) {}
