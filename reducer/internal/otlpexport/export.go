// Package otlpexport pushes the flow metrics of the edge table to an
// OTLP/gRPC endpoint (an OpenTelemetry Collector) every interval, with
// cumulative or delta temporality. A snapshot of the table goes through a
// bounded queue to the sender, so that a slow or absent endpoint never holds
// up ingest: the oldest queued snapshot is dropped and counted instead.
package otlpexport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlpmetric/otlpmetricgrpc"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/resource"
	"google.golang.org/grpc/credentials"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

// Temporality is how the counters' points add up.
type Temporality uint8

// Temporalities.
const (
	// TemporalityCumulative: each point is the total since the series began.
	TemporalityCumulative Temporality = iota
	// TemporalityDelta: each point is what was counted since the previous
	// exported point of the series; a new series' first point is its full
	// value.
	TemporalityDelta
)

// String returns the flag value of t.
func (t Temporality) String() string {
	if t == TemporalityDelta {
		return "delta"
	}
	return "cumulative"
}

// MarshalText returns the flag value of t.
func (t Temporality) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// UnmarshalText parses cumulative or delta.
func (t *Temporality) UnmarshalText(b []byte) error {
	switch string(b) {
	case "cumulative":
		*t = TemporalityCumulative
	case "delta":
		*t = TemporalityDelta
	default:
		return fmt.Errorf("temporality %q: want cumulative or delta", b)
	}
	return nil
}

func (t Temporality) otel() metricdata.Temporality {
	if t == TemporalityDelta {
		return metricdata.DeltaTemporality
	}
	return metricdata.CumulativeTemporality
}

// Config tunes the exporter.
type Config struct {
	// Endpoint is the OTLP/gRPC endpoint, host:port. Empty disables the
	// exporter.
	Endpoint string
	// Interval is how often the table is exported.
	Interval    time.Duration
	Temporality Temporality
	// Insecure sends in plaintext. Otherwise TLS, verified against TLSCA
	// (or the system roots), with TLSCert and TLSKey as client certificate
	// when set.
	Insecure               bool
	TLSCert, TLSKey, TLSCA string
	// Headers are sent with every export, e.g. an authorization.
	Headers map[string]string
	// Compression is gzip or none.
	Compression string
	// Timeout bounds one export, its retries included.
	Timeout time.Duration
	// QueueSize is the number of snapshots waiting for the sender at most.
	QueueSize int
	// Version is the reducer's version, the resource's service.version.
	Version string
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		Interval:    30 * time.Second,
		Compression: "gzip",
		Timeout:     10 * time.Second,
		QueueSize:   2,
		Version:     "dev",
	}
}

// Validate checks the configuration; flag names are the reducer's.
func (c *Config) Validate() error {
	if c.Endpoint == "" {
		return nil
	}
	if _, port, err := net.SplitHostPort(c.Endpoint); err != nil || strings.Contains(c.Endpoint, "/") || port == "" {
		return fmt.Errorf("--otlp-endpoint %q: want host:port, e.g. otel-collector:4317", c.Endpoint)
	}
	if c.Interval < 100*time.Millisecond {
		return fmt.Errorf("--otlp-interval %s: must be at least 100ms", c.Interval)
	}
	if c.Timeout <= 0 {
		return fmt.Errorf("--otlp-timeout %s: must be positive", c.Timeout)
	}
	if c.QueueSize < 1 {
		return fmt.Errorf("--otlp-queue-size %d: must be at least 1", c.QueueSize)
	}
	if c.Compression != "gzip" && c.Compression != "none" {
		return fmt.Errorf("--otlp-compression %q: want gzip or none", c.Compression)
	}
	if c.Insecure && (c.TLSCert != "" || c.TLSKey != "" || c.TLSCA != "") {
		return errors.New("--otlp-insecure with --otlp-tls-*: choose plaintext or TLS")
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("--otlp-tls-cert and --otlp-tls-key: set both for a client certificate, or neither")
	}
	for k := range c.Headers {
		if k == "" || strings.ContainsAny(k, " :\r\n") {
			return fmt.Errorf("--otlp-header %q: not a header name", k)
		}
	}
	return nil
}

// Client sends one batch of metrics; the OTLP/gRPC exporter of the
// OpenTelemetry Go SDK is one.
type Client interface {
	Export(ctx context.Context, rm *metricdata.ResourceMetrics) error
	Shutdown(ctx context.Context) error
}

// NewClient returns the SDK's OTLP/gRPC metric exporter for cfg, retrying
// failed exports with exponential backoff within cfg.Timeout.
func NewClient(ctx context.Context, cfg Config) (Client, error) {
	opts := []otlpmetricgrpc.Option{
		otlpmetricgrpc.WithEndpoint(cfg.Endpoint),
		otlpmetricgrpc.WithTimeout(cfg.Timeout),
		otlpmetricgrpc.WithRetry(otlpmetricgrpc.RetryConfig{
			Enabled:         true,
			InitialInterval: 250 * time.Millisecond,
			MaxInterval:     2 * time.Second,
			MaxElapsedTime:  cfg.Timeout,
		}),
		otlpmetricgrpc.WithReconnectionPeriod(time.Second),
	}
	if len(cfg.Headers) > 0 {
		opts = append(opts, otlpmetricgrpc.WithHeaders(cfg.Headers))
	}
	if cfg.Compression == "gzip" {
		opts = append(opts, otlpmetricgrpc.WithCompressor("gzip"))
	}
	if cfg.Insecure {
		opts = append(opts, otlpmetricgrpc.WithInsecure())
	} else {
		tc, err := clientTLS(cfg)
		if err != nil {
			return nil, err
		}
		opts = append(opts, otlpmetricgrpc.WithTLSCredentials(credentials.NewTLS(tc)))
	}
	c, err := otlpmetricgrpc.New(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("otlp exporter: %w", err)
	}
	return c, nil
}

func clientTLS(cfg Config) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.TLSCA != "" {
		pem, err := os.ReadFile(cfg.TLSCA)
		if err != nil {
			return nil, fmt.Errorf("--otlp-tls-ca: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--otlp-tls-ca %s: no certificate in PEM", cfg.TLSCA)
		}
	}
	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("--otlp-tls-cert/--otlp-tls-key: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// Source is the edge table; *match.Engine is one.
type Source interface {
	Snapshot(dst []aggregate.Series) []aggregate.Series
	Metrics() []aggregate.Metric
	Level() aggregate.Level
}

// snapshot is the table at one time.
type snapshot struct {
	time   time.Time
	series []aggregate.Series
}

// Exporter exports the table every interval.
type Exporter struct {
	cfg     Config
	src     Source
	client  Client
	logger  *slog.Logger
	metrics *metrics
	conv    *converter

	queue   chan snapshot
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
	failing bool // the sender's: the last export failed
}

// New returns an exporter of src's edges through client, which it owns.
func New(cfg Config, src Source, client Client, reg prometheus.Registerer, logger *slog.Logger) (*Exporter, error) {
	if cfg.QueueSize < 1 {
		cfg.QueueSize = 1
	}
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Exporter{
		cfg:     cfg,
		src:     src,
		client:  client,
		logger:  logger.With("component", "otlpexport"),
		metrics: m,
		conv:    newConverter(cfg, src.Metrics(), src.Level(), time.Now()),
		queue:   make(chan snapshot, cfg.QueueSize),
	}, nil
}

// Start starts the ticker and the sender. It returns at once.
func (x *Exporter) Start(ctx context.Context) error {
	ctx, x.cancel = context.WithCancel(context.WithoutCancel(ctx))
	x.wg.Add(2)
	go func() {
		defer x.wg.Done()
		x.tick(ctx)
	}()
	go func() {
		defer x.wg.Done()
		x.send(ctx)
	}()
	x.logger.Info("started", "endpoint", x.cfg.Endpoint, "interval", x.cfg.Interval,
		"temporality", x.cfg.Temporality.String(), "insecure", x.cfg.Insecure)
	return nil
}

// Shutdown stops exporting, tries one last export of the table (for at
// most 2 s), and closes the client. It is safe to call more than once.
func (x *Exporter) Shutdown(ctx context.Context) error {
	var err error
	x.once.Do(func() {
		if x.cancel != nil {
			x.cancel()
		}
		x.wg.Wait()
		// One last push of the table, in at most 2 s: a dead endpoint must
		// not hold up the reducer's exit.
		fctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		x.export(fctx, x.take())
		cancel()
		err = x.client.Shutdown(ctx)
		x.logger.Info("stopped")
	})
	return err
}

// tick takes a snapshot every interval and queues it.
func (x *Exporter) tick(ctx context.Context) {
	t := time.NewTicker(x.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			x.enqueue(x.take())
		}
	}
}

func (x *Exporter) take() snapshot {
	return snapshot{time: time.Now(), series: x.src.Snapshot(nil)}
}

// enqueue queues s; when the queue is full, the oldest snapshot makes way
// and is counted as dropped. It never waits.
func (x *Exporter) enqueue(s snapshot) {
	for range 2 {
		select {
		case x.queue <- s:
			x.metrics.queued.Set(float64(len(x.queue)))
			return
		default:
		}
		select {
		case old := <-x.queue:
			x.drop(old)
		default:
		}
	}
	x.drop(s)
}

func (x *Exporter) drop(s snapshot) {
	x.metrics.droppedBatches.Inc()
	x.metrics.droppedPoints.Add(float64(x.conv.points(len(s.series))))
}

// send exports the queued snapshots one at a time.
func (x *Exporter) send(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case s := <-x.queue:
			x.metrics.queued.Set(float64(len(x.queue)))
			x.export(ctx, s)
		}
	}
}

// export converts and sends one snapshot; the delta baseline moves only
// when the endpoint accepted it.
func (x *Exporter) export(ctx context.Context, s snapshot) {
	rm, n, commit := x.conv.convert(s)
	ctx, cancel := context.WithTimeout(ctx, x.cfg.Timeout)
	defer cancel()
	start := time.Now()
	err := x.client.Export(ctx, rm)
	x.metrics.duration.Observe(time.Since(start).Seconds())
	if err != nil {
		x.metrics.failures.Inc()
		x.metrics.droppedBatches.Inc()
		x.metrics.droppedPoints.Add(float64(n))
		if !x.failing {
			x.logger.Warn("export failed; retrying each interval", "endpoint", x.cfg.Endpoint, "error", err)
			x.failing = true
		}
		return
	}
	commit()
	x.metrics.exports.Inc()
	x.metrics.points.Add(float64(n))
	x.metrics.lastSuccess.SetToCurrentTime()
	if x.failing {
		x.logger.Info("export recovered", "endpoint", x.cfg.Endpoint)
		x.failing = false
	}
}

// converter turns snapshots into OTLP data and keeps, per series, its start
// time and what was last exported.
type converter struct {
	temporality Temporality
	metrics     []aggregate.Metric
	names       []Name
	level       aggregate.Level
	keys        []attribute.Key
	res         *resource.Resource
	scope       instrumentation.Scope

	mu      sync.Mutex // guards the rest: convert and commit may run on two goroutines at shutdown
	started time.Time  // the first snapshot's series count from here
	prev    time.Time  // time of the previous snapshot
	series  map[aggregate.Key]*seriesState
	gen     uint64
	scratch []string
}

type seriesState struct {
	attrs  attribute.Set
	start  time.Time // cumulative start: when the series began to count
	sentAt time.Time // time of the last exported point
	sent   []uint64  // values at the last exported point
	sentH  []aggregate.Histogram
	gen    uint64
}

func newConverter(cfg Config, metrics []aggregate.Metric, level aggregate.Level, now time.Time) *converter {
	c := &converter{
		temporality: cfg.Temporality,
		metrics:     metrics,
		level:       level,
		res: resource.NewSchemaless(
			attribute.String("service.name", "weir-reducer"),
			attribute.String("service.version", cfg.Version),
		),
		scope:   instrumentation.Scope{Name: "github.com/weir-project/weir/reducer", Version: cfg.Version},
		started: now,
		series:  make(map[aggregate.Key]*seriesState),
	}
	if h, err := os.Hostname(); err == nil {
		c.res = resource.NewSchemaless(append(c.res.Attributes(), attribute.String("service.instance.id", h))...)
	}
	for _, m := range metrics {
		c.names = append(c.names, NameOf(m))
	}
	for _, l := range level.Labels() {
		c.keys = append(c.keys, attribute.Key(AttributeName(l)))
	}
	return c
}

// points estimates the number of points of a snapshot of n series: one per
// dense counter and gauge (sparse counters and histograms mostly have none).
func (c *converter) points(n int) int {
	dense := 0
	for _, m := range c.metrics {
		if m.Type != aggregate.MetricHistogram && !m.Sparse {
			dense++
		}
	}
	return n * dense
}

// convert returns the OTLP data of s, its number of points, and the commit
// that makes s the baseline of the next deltas.
func (c *converter) convert(s snapshot) (*metricdata.ResourceMetrics, int, func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	// A series first seen now began counting after the previous snapshot
	// (or when the exporter started).
	born := c.prev
	if born.IsZero() {
		born = c.started
	}
	c.prev = s.time
	states := make([]*seriesState, len(s.series))
	for i := range s.series {
		sr := &s.series[i]
		st := c.series[sr.Key]
		if st == nil {
			st = &seriesState{attrs: attributes(c.level, c.keys, sr.Key, c.scratch), start: born, sentAt: born}
			c.series[sr.Key] = st
		}
		st.gen = c.gen
		states[i] = st
	}
	for k, st := range c.series {
		if st.gen != c.gen {
			delete(c.series, k) // expired: a later series of the key starts anew
		}
	}
	delta := c.temporality == TemporalityDelta
	ms := make([]metricdata.Metrics, 0, len(c.metrics))
	n := 0
	for id, md := range c.metrics {
		m := metricdata.Metrics{Name: c.names[id].Name, Unit: c.names[id].Unit, Description: md.Help}
		switch md.Type {
		case aggregate.MetricCounter:
			pts := make([]metricdata.DataPoint[int64], 0, len(s.series))
			for i := range s.series {
				st, v := states[i], s.series[i].Values[id]
				if md.Sparse && v == 0 {
					continue // as on /metrics: a rare event that never happened
				}
				p := metricdata.DataPoint[int64]{Attributes: withConst(st.attrs, md.ConstLabels), StartTime: st.start, Time: s.time, Value: int64(v)}
				if delta {
					p.StartTime = st.sentAt
					if st.sent != nil && v >= st.sent[id] {
						p.Value = int64(v - st.sent[id])
					}
				}
				pts = append(pts, p)
			}
			m.Data = metricdata.Sum[int64]{DataPoints: pts, Temporality: c.temporality.otel(), IsMonotonic: true}
			n += len(pts)
		case aggregate.MetricGauge:
			pts := make([]metricdata.DataPoint[int64], len(s.series))
			for i := range s.series {
				pts[i] = metricdata.DataPoint[int64]{Attributes: states[i].attrs, StartTime: states[i].start, Time: s.time, Value: int64(s.series[i].Values[id])}
			}
			m.Data = metricdata.Gauge[int64]{DataPoints: pts}
			n += len(pts)
		case aggregate.MetricHistogram:
			pts := make([]metricdata.HistogramDataPoint[float64], 0, len(s.series))
			for i := range s.series {
				if s.series[i].Hists == nil || s.series[i].Hists[id].Count == 0 {
					continue // no observation yet
				}
				pts = append(pts, c.histogram(states[i], md, id, &s.series[i].Hists[id], s.time, delta))
			}
			m.Data = metricdata.Histogram[float64]{DataPoints: pts, Temporality: c.temporality.otel()}
			n += len(pts)
		}
		if last := len(ms) - 1; last >= 0 && ms[last].Name == m.Name && mergeSums(&ms[last], m) {
			continue // one metric per name: the points of its other label values join it
		}
		ms = append(ms, m)
	}
	rm := &metricdata.ResourceMetrics{Resource: c.res, ScopeMetrics: []metricdata.ScopeMetrics{{Scope: c.scope, Metrics: ms}}}
	commit := func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		for i, st := range states {
			st.sent, st.sentAt = s.series[i].Values, s.time
			if s.series[i].Hists != nil {
				st.sentH = s.series[i].Hists
			}
		}
	}
	return rm, n, commit
}

// withConst adds a metric's own labels (e.g. rcode) to the attributes of a
// series.
func withConst(attrs attribute.Set, labels map[string]string) attribute.Set {
	if len(labels) == 0 {
		return attrs
	}
	kvs := attrs.ToSlice()
	for k, v := range labels {
		kvs = append(kvs, attribute.String(AttributeName(k), v))
	}
	return attribute.NewSet(kvs...)
}

// mergeSums appends the points of the counter m to the counter into, of
// the same name; false if either is not a counter.
func mergeSums(into *metricdata.Metrics, m metricdata.Metrics) bool {
	a, ok := into.Data.(metricdata.Sum[int64])
	b, ok2 := m.Data.(metricdata.Sum[int64])
	if !ok || !ok2 {
		return false
	}
	a.DataPoints = append(a.DataPoints, b.DataPoints...)
	into.Data = a
	return true
}

// histogram returns the point of histogram id of a series.
func (c *converter) histogram(st *seriesState, md aggregate.Metric, id int, h *aggregate.Histogram, now time.Time, delta bool) metricdata.HistogramDataPoint[float64] {
	p := metricdata.HistogramDataPoint[float64]{
		Attributes: st.attrs, StartTime: st.start, Time: now, Bounds: md.Buckets,
		BucketCounts: make([]uint64, len(md.Buckets)+1), Count: h.Count, Sum: h.Sum,
	}
	copy(p.BucketCounts, h.Counts)
	if delta {
		p.StartTime = st.sentAt
		if st.sentH != nil && st.sentH[id].Count <= h.Count && st.sentH[id].Counts != nil {
			old := &st.sentH[id]
			p.Count -= old.Count
			p.Sum -= old.Sum
			for i := range p.BucketCounts {
				p.BucketCounts[i] -= old.Counts[i]
			}
		}
	}
	return p
}
