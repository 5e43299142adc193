// Package promexport exposes the edge table as Prometheus flow metrics,
// snapshotted at scrape time.
package promexport

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// Source yields a copy of the edge table.
type Source interface {
	// Snapshot appends every current edge to dst and returns it.
	Snapshot(dst []aggregate.Series) []aggregate.Series
}

// SourceFunc adapts a function to Source.
type SourceFunc func(dst []aggregate.Series) []aggregate.Series

// Snapshot calls f.
func (f SourceFunc) Snapshot(dst []aggregate.Series) []aggregate.Series { return f(dst) }

var labels = []string{
	"src_workload", "src_kind", "src_namespace", "src_zone",
	"dst_workload", "dst_kind", "dst_namespace", "dst_zone",
}

// Collector is a prometheus.Collector of the flow metrics. Edges that
// expired from the table simply stop appearing.
type Collector struct {
	src     Source
	bytes   *prometheus.Desc
	packets *prometheus.Desc
	opened  *prometheus.Desc
	active  *prometheus.Desc
}

// New returns a collector of src's edges.
func New(src Source) *Collector {
	return &Collector{
		src: src,
		bytes: prometheus.NewDesc("weir_tcp_bytes_total",
			"TCP payload bytes sent from src to dst, each byte counted once.", labels, nil),
		packets: prometheus.NewDesc("weir_tcp_packets_total",
			"TCP segments src delivered to dst, as the sender's kernel counts them (data segments and a FIN sent on its own; not the SYN).", labels, nil),
		opened: prometheus.NewDesc("weir_tcp_connections_opened_total",
			"TCP connections src (client) opened to dst (server).", labels, nil),
		active: prometheus.NewDesc("weir_tcp_active_connections",
			"Open TCP connections, src = client, dst = server.", labels, nil),
	}
}

// Describe sends the descriptors of the flow metrics.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.bytes
	ch <- c.packets
	ch <- c.opened
	ch <- c.active
}

// Collect sends one sample per edge and metric.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.src.Snapshot(nil) {
		v := []string{
			s.Key.Src.Name, s.Key.Src.Kind, s.Key.Src.Namespace, s.Key.Src.Zone,
			s.Key.Dst.Name, s.Key.Dst.Kind, s.Key.Dst.Namespace, s.Key.Dst.Zone,
		}
		ch <- prometheus.MustNewConstMetric(c.bytes, prometheus.CounterValue, float64(s.Bytes), v...)
		ch <- prometheus.MustNewConstMetric(c.packets, prometheus.CounterValue, float64(s.Packets), v...)
		ch <- prometheus.MustNewConstMetric(c.opened, prometheus.CounterValue, float64(s.Opened), v...)
		ch <- prometheus.MustNewConstMetric(c.active, prometheus.GaugeValue, float64(s.Active), v...)
	}
}
