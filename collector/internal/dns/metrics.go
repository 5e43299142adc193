package dns

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	queries          *prometheus.CounterVec
	answers          *prometheus.CounterVec
	timeouts         prometheus.Counter
	parseErrors      prometheus.Counter
	unmatched        prometheus.Counter
	pendingDropped   prometheus.Counter
	flowsDropped     prometheus.Counter
	answersDropped   prometheus.Counter
	durationsDropped prometheus.Counter
	pending          prometheus.Gauge
	tcpMessages      prometheus.Counter
	tcpDropped       *prometheus.CounterVec
	tcpStreams       prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_collector_dns_queries_total",
			Help: "DNS queries sent by local clients, by query type (A, AAAA, …; other for rare types).",
		}, []string{"qtype"}),
		answers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_collector_dns_answers_total",
			Help: "DNS answers received by local clients, by response code.",
		}, []string{"rcode"}),
		timeouts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_dns_timeouts_total",
			Help: "DNS queries left without an answer past --dns-timeout.",
		}),
		parseErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_dns_parse_errors_total",
			Help: "DNS payloads that could not be parsed.",
		}),
		unmatched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_dns_unmatched_answers_total",
			Help: "DNS answers to no pending query (late, duplicate or unasked).",
		}),
		pendingDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_dns_pending_dropped_total",
			Help: "DNS queries not followed because the pending queries were at their cap.",
		}),
		flowsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_dns_flows_dropped_total",
			Help: "DNS outcomes not reported because the interval's flows were at their cap.",
		}),
		answersDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_dns_names_dropped_total",
			Help: "DNS names not sent because the interval's names were at their cap.",
		}),
		durationsDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_dns_durations_dropped_total",
			Help: "DNS answer latencies not sent because the flow had its interval's cap of latencies; the answers still count.",
		}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_collector_dns_pending",
			Help: "DNS queries awaiting an answer, at the last report.",
		}),
		tcpMessages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_collector_dns_tcp_messages_total",
			Help: "DNS messages reassembled from TCP segments.",
		}),
		tcpDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_collector_dns_tcp_dropped_total",
			Help: "DNS-over-TCP segments not reassembled: stream_cap (streams at their cap), gap (a stream that lost its place at a missing segment).",
		}, []string{"reason"}),
		tcpStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_collector_dns_tcp_streams",
			Help: "DNS-over-TCP stream directions being reassembled, at the last report.",
		}),
	}
	for _, r := range []string{"stream_cap", "gap"} {
		m.tcpDropped.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.queries, m.answers, m.timeouts, m.parseErrors, m.unmatched,
		m.pendingDropped, m.flowsDropped, m.answersDropped, m.durationsDropped, m.pending,
		m.tcpMessages, m.tcpDropped, m.tcpStreams} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register DNS metrics: %w", err)
		}
	}
	return m, nil
}
