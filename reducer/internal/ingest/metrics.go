package ingest

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/reducer/internal/match"
)

// reason labels why a stream was rejected.
type reason string

// Reasons for rejecting a stream that are not the engine's.
const (
	reasonNoHello         reason = "no_hello"
	reasonBadVersion      reason = "unsupported_version"
	reasonBadHello        reason = "invalid_hello"
	reasonBadSequence     reason = "bad_sequence"
	reasonInvalidBatch    reason = "invalid_batch"
	reasonMalformed       reason = "malformed_message"
	reasonTooLarge        reason = "message_too_large"
	reasonUnexpectedHello reason = "unexpected_hello"
)

type metrics struct {
	connected     prometheus.Gauge
	messages      prometheus.Counter
	receivedBytes prometheus.Counter
	rejected      *prometheus.CounterVec
	replaced      prometheus.Counter
	loss          *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weir_reducer_collectors_connected",
			Help: "Collector streams with an open session.",
		}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_messages_received_total",
			Help: "Messages received on collector streams.",
		}),
		receivedBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_received_bytes_total",
			Help: "Bytes of received messages as sent on the wire (compressed).",
		}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_reducer_streams_rejected_total",
			Help: "Collector streams ended because of bad input, by reason.",
		}, []string{"reason"}),
		replaced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weir_reducer_sessions_replaced_total",
			Help: "Collector streams ended with ABORTED because a hello for the same node with a greater epoch (or another boot) opened a session: a reconnect, or two live streams for one node.",
		}),
		loss: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weir_reducer_collector_loss_total",
			Help: "Losses reported by collectors, by node and reason (ring_full: lifecycle events, map_full: sockets, buffer_dropped: closed sockets, socket_cap: sockets over the collector's cap, counter_regressions: counter reads that went backwards, failed_connects_dropped: failed TCP connects over the collector's queue, resets_unreported: RSTs after a socket was reported closed or long after a brief socket's close, udp_peer_cap: UDP datagrams folded into other peers, udp_flows_dropped: UDP remote addresses over the collector's table, conntrack_overrun: conntrack events lost to a netlink overrun, dns_parse_errors: DNS payloads that did not parse, dns_ring_full: DNS payloads lost to a full ring, process_ring_full: process events lost to a full ring).",
		}, []string{"node", "reason"}),
	}
	for _, c := range []prometheus.Collector{m.connected, m.messages, m.receivedBytes, m.rejected, m.replaced, m.loss} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register ingest metrics: %w", err)
		}
	}
	// Every reason shows from the start, at zero.
	for _, r := range allReasons {
		m.rejected.WithLabelValues(string(r))
	}
	return m, nil
}

var allReasons = []reason{
	reasonNoHello, reasonBadVersion, reasonBadHello, reasonBadSequence, reasonInvalidBatch,
	reasonMalformed, reasonTooLarge, reasonUnexpectedHello,
	reasonHelloTimeout, reasonNodeMismatch, reasonEpochInFuture, reasonSessionSockets, reasonSessionProcs,
	reason(match.ReasonStaleEpoch), reason(match.ReasonUnknownHandle),
	reason(match.ReasonDuplicateHandle), reason(match.ReasonInvalidHandle),
}
