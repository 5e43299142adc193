// Package promexport exposes the edge table as Prometheus flow metrics,
// snapshotted at scrape time.
package promexport

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

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

// Collector is a prometheus.Collector of the flow metrics. Edges that
// expired from the table simply stop appearing.
type Collector struct {
	src     Source
	level   aggregate.Level
	metrics []aggregate.Metric
	descs   []*prometheus.Desc // by MetricID
}

// New returns a collector of src's edges, whose values are metrics (indexed
// by MetricID) and whose keys have the labels of level.
func New(src Source, metrics []aggregate.Metric, level aggregate.Level) *Collector {
	c := &Collector{src: src, level: level, metrics: metrics}
	labels := level.Labels()
	for _, m := range metrics {
		c.descs = append(c.descs, prometheus.NewDesc(m.Name, m.Help, labels, m.ConstLabels))
	}
	return c
}

// Describe sends the descriptors of the flow metrics.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect sends one sample per edge and metric.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	var v []string
	for _, s := range c.src.Snapshot(nil) {
		v = s.Key.Values(c.level, v[:0])
		for id, m := range c.metrics {
			switch m.Type {
			case aggregate.MetricCounter:
				if m.Sparse && s.Values[id] == 0 {
					continue // never happened on this edge: no series
				}
				ch <- prometheus.MustNewConstMetric(c.descs[id], prometheus.CounterValue, float64(s.Values[id]), v...)
			case aggregate.MetricGauge:
				ch <- prometheus.MustNewConstMetric(c.descs[id], prometheus.GaugeValue, float64(s.Values[id]), v...)
			case aggregate.MetricHistogram:
				var h aggregate.Histogram
				if s.Hists != nil {
					h = s.Hists[id]
				}
				if h.Count == 0 {
					continue // no observation yet: no series
				}
				ch <- histogram(c.descs[id], &h, m.Buckets, v)
			}
		}
	}
}

// histogram is one histogram sample with its classic buckets and, for
// scrapes in the protobuf format, its native buckets: the const API makes
// each kind on its own (MustNewConstHistogram, NewConstNativeHistogram),
// and bothKinds writes them as one.
func histogram(desc *prometheus.Desc, h *aggregate.Histogram, bounds []float64, labels []string) prometheus.Metric {
	classic := prometheus.MustNewConstHistogram(desc, h.Count, h.Sum, h.Cumulative(bounds), labels...)
	native, err := prometheus.NewConstNativeHistogram(desc, h.Count, h.Sum, h.Native, nil, h.NativeZero,
		aggregate.NativeSchema, 0, time.Time{}, labels...)
	if err != nil {
		return classic // counts that do not add up: the classic buckets alone
	}
	return bothKinds{classic: classic, native: native}
}

// bothKinds is a histogram sample with classic and native buckets.
type bothKinds struct{ classic, native prometheus.Metric }

func (b bothKinds) Desc() *prometheus.Desc { return b.classic.Desc() }

func (b bothKinds) Write(out *dto.Metric) error {
	var n dto.Metric
	if err := b.native.Write(&n); err != nil {
		return err
	}
	if err := b.classic.Write(out); err != nil {
		return err
	}
	h, nh := out.GetHistogram(), n.GetHistogram()
	h.Schema, h.ZeroThreshold, h.ZeroCount = nh.Schema, nh.ZeroThreshold, nh.ZeroCount
	h.PositiveSpan, h.PositiveDelta = nh.PositiveSpan, nh.PositiveDelta
	return nil
}
