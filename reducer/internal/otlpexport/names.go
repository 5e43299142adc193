package otlpexport

import (
	"strings"

	"go.opentelemetry.io/otel/attribute"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// Name is the OTLP name and UCUM unit of a flow metric.
type Name struct {
	Name string
	Unit string
}

// names maps the Prometheus names of the flow metrics to opentelemetry-network's
// names where the meaning is the same (ARCHITECTURE.md), with UCUM units.
var names = map[string]Name{
	"weir_tcp_bytes_total":              {"tcp.bytes", "By"},
	"weir_tcp_packets_total":            {"tcp.packets", "{segment}"},
	"weir_tcp_retransmits_total":        {"tcp.retrans", "{segment}"},
	"weir_tcp_resets_total":             {"tcp.resets", "{segment}"},
	"weir_tcp_syn_timeouts_total":       {"tcp.syn_timeouts", "{timeout}"},
	"weir_tcp_connections_opened_total": {"tcp.new_sockets", "{connection}"},
	"weir_tcp_active_connections":       {"tcp.active", "{connection}"},
	"weir_tcp_rtt_seconds":              {"tcp.rtt", "s"},
	"weir_udp_bytes_total":              {"udp.bytes", "By"},
	"weir_udp_packets_total":            {"udp.packets", "{datagram}"},
	"weir_udp_drops_total":              {"udp.drops", "{datagram}"},
	"weir_dns_responses_total":          {"dns.responses", "{response}"},
	"weir_dns_timeouts_total":           {"dns.timeouts", "{query}"},
	"weir_dns_duration_seconds":         {"dns.duration", "s"},
	"weir_http_responses_total":         {"http.responses", "{response}"},
	"weir_http_duration_seconds":        {"http.duration", "s"},
}

// NameOf returns the OTLP name and unit of a flow metric. A metric not in
// the table (a later one) gets its Prometheus name without the weir_ prefix
// and the _total suffix, its first underscore a dot, and unit "1" (or "s",
// "By" for the _seconds and _bytes suffixes).
func NameOf(m aggregate.Metric) Name {
	if n, ok := names[m.Name]; ok {
		return n
	}
	s := strings.TrimSuffix(strings.TrimPrefix(m.Name, "weir_"), "_total")
	unit := "1"
	switch {
	case strings.HasSuffix(s, "_seconds"):
		unit, s = "s", strings.TrimSuffix(s, "_seconds")
	case strings.HasSuffix(s, "_bytes"):
		unit = "By"
	}
	return Name{strings.Replace(s, "_", ".", 1), unit}
}

// attributeNames maps the Prometheus labels to OTLP attribute names, in
// the order of aggregate.Level.Labels.
var attributeNames = map[string]string{
	"src_workload":  "source.workload.name",
	"src_kind":      "source.workload.kind",
	"src_namespace": "source.namespace.name",
	"src_zone":      "source.availability_zone",
	"dst_workload":  "dest.workload.name",
	"dst_kind":      "dest.workload.kind",
	"dst_namespace": "dest.namespace.name",
	"dst_zone":      "dest.availability_zone",
	"src_node":      "source.node.name",
	"dst_node":      "dest.node.name",
	"src_pod":       "source.pod.name",
	"dst_pod":       "dest.pod.name",
	"src_process":   "source.process.name",
	"dst_process":   "dest.process.name",
}

// AttributeName returns the OTLP attribute of a Prometheus label.
func AttributeName(label string) string {
	if a, ok := attributeNames[label]; ok {
		return a
	}
	a := strings.Replace(label, "src_", "source.", 1)
	return strings.Replace(a, "dst_", "dest.", 1)
}

// attributes returns the attribute set of an edge: one attribute per
// Prometheus label of the level with a value (an empty label is no label in
// Prometheus either).
func attributes(level aggregate.Level, keys []attribute.Key, k aggregate.Key, scratch []string) attribute.Set {
	vals := k.Values(level, scratch[:0])
	kvs := make([]attribute.KeyValue, 0, len(keys))
	for i, key := range keys {
		if vals[i] != "" {
			kvs = append(kvs, key.String(vals[i]))
		}
	}
	return attribute.NewSet(kvs...)
}
