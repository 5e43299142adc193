package otlpexport

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	colmetricpb "go.opentelemetry.io/proto/otlp/collector/metrics/v1"
	metricpb "go.opentelemetry.io/proto/otlp/metrics/v1"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/protobuf/proto"

	"github.com/weir-project/weir/reducer/internal/aggregate"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

// source is a table whose series the test sets.
type source struct {
	mu     sync.Mutex
	series []aggregate.Series
	snaps  atomic.Int64
}

func (s *source) Snapshot(dst []aggregate.Series) []aggregate.Series {
	s.snaps.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sr := range s.series {
		sr.Values = append([]uint64(nil), sr.Values...)
		dst = append(dst, sr)
	}
	return dst
}
func (s *source) Metrics() []aggregate.Metric { return aggregate.FlowMetrics() }
func (s *source) Level() aggregate.Level      { return aggregate.LevelWorkload }

func (s *source) set(series ...aggregate.Series) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.series = series
}

func edge(src, dst string, bytes, packets, opened, active uint64) aggregate.Series {
	return aggregate.Series{
		Key: aggregate.Key{
			Src: aggregate.Workload{Name: src, Kind: "deployment", Namespace: "shop"},
			Dst: aggregate.Workload{Name: dst, Kind: "process"},
		},
		Values: []uint64{aggregate.TCPBytes: bytes, aggregate.TCPPackets: packets, aggregate.TCPConnectionsOpened: opened, aggregate.TCPActiveConnections: active, aggregate.DNSDuration: 0},
	}
}

// points returns metric name → value of the series src→dst, and the units.
func points(t *testing.T, rm *metricdata.ResourceMetrics, src string) (map[string]int64, map[string]string) {
	t.Helper()
	vals, units := map[string]int64{}, map[string]string{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			units[m.Name] = m.Unit
			var dps []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				dps = d.DataPoints
			case metricdata.Gauge[int64]:
				dps = d.DataPoints
			}
			for _, p := range dps {
				if v, _ := p.Attributes.Value("source.workload.name"); v.AsString() == src {
					vals[m.Name] = p.Value
				}
			}
		}
	}
	return vals, units
}

func TestConvert(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)
	for _, temp := range []Temporality{TemporalityCumulative, TemporalityDelta} {
		t.Run(temp.String(), func(t *testing.T) {
			c := newConverter(Config{Temporality: temp, Version: "test"}, aggregate.FlowMetrics(), aggregate.LevelWorkload, t0)
			delta := temp == TemporalityDelta
			step := func(i int, commit bool, series ...aggregate.Series) *metricdata.ResourceMetrics {
				rm, n, done := c.convert(snapshot{time: t0.Add(time.Duration(i) * time.Second), series: series})
				if n != len(series)*4 {
					t.Errorf("step %d: %d points, want %d", i, n, len(series)*4)
				}
				if commit {
					done()
				}
				return rm
			}
			rm := step(1, true, edge("web", "api", 1000, 10, 1, 1))
			v, units := points(t, rm, "web")
			want := map[string]int64{"tcp.bytes": 1000, "tcp.packets": 10, "tcp.new_sockets": 1, "tcp.active": 1}
			for k, w := range want {
				if v[k] != w {
					t.Errorf("first export %s = %d, want %d (the full value)", k, v[k], w)
				}
			}
			wantUnits := map[string]string{"tcp.bytes": "By", "tcp.packets": "{segment}", "tcp.new_sockets": "{connection}", "tcp.active": "{connection}"}
			for k, w := range wantUnits {
				if units[k] != w {
					t.Errorf("unit of %s %q, want %q", k, units[k], w)
				}
			}
			sum := rm.ScopeMetrics[0].Metrics[0].Data.(metricdata.Sum[int64])
			if !sum.IsMonotonic || sum.Temporality != temp.otel() {
				t.Errorf("sum %v temporality %v", sum.IsMonotonic, sum.Temporality)
			}
			p := sum.DataPoints[0]
			wantAttrs := attribute.NewSet(
				attribute.String("source.workload.name", "web"), attribute.String("source.workload.kind", "deployment"),
				attribute.String("source.namespace.name", "shop"),
				attribute.String("dest.workload.name", "api"), attribute.String("dest.workload.kind", "process"))
			if !p.Attributes.Equals(&wantAttrs) {
				t.Errorf("attributes %v, want %v", p.Attributes.ToSlice(), wantAttrs.ToSlice())
			}
			if !p.StartTime.Equal(t0) || !p.Time.Equal(t0.Add(time.Second)) {
				t.Errorf("first point %v..%v", p.StartTime, p.Time)
			}

			// An export that fails (no commit): the next delta still covers it.
			step(2, false, edge("web", "api", 1500, 15, 2, 0))
			rm = step(3, true, edge("web", "api", 1700, 17, 2, 0), edge("new", "api", 50, 1, 1, 1))
			v, _ = points(t, rm, "web")
			wantBytes, wantActive := int64(1700), int64(0)
			if delta {
				wantBytes = 700
			}
			if v["tcp.bytes"] != wantBytes || v["tcp.active"] != wantActive {
				t.Errorf("after a failed export: bytes %d active %d, want %d %d", v["tcp.bytes"], v["tcp.active"], wantBytes, wantActive)
			}
			sum = rm.ScopeMetrics[0].Metrics[0].Data.(metricdata.Sum[int64])
			for _, p := range sum.DataPoints {
				name, _ := p.Attributes.Value("source.workload.name")
				switch {
				case name.AsString() == "new" && (p.Value != 50 || !p.StartTime.Equal(t0.Add(2*time.Second))):
					t.Errorf("a new series: %d from %v, want its full value from the previous snapshot", p.Value, p.StartTime)
				case name.AsString() == "web" && delta && !p.StartTime.Equal(t0.Add(time.Second)):
					t.Errorf("delta start %v, want the last delivered point's time", p.StartTime)
				case name.AsString() == "web" && !delta && !p.StartTime.Equal(t0):
					t.Errorf("cumulative start %v, want the series' start", p.StartTime)
				}
			}

			// web→api expires, then comes back with a new edge from zero.
			step(4, true, edge("new", "api", 50, 1, 1, 1))
			if len(c.series) != 1 {
				t.Errorf("%d series kept, want the expired one dropped", len(c.series))
			}
			rm = step(5, true, edge("web", "api", 30, 1, 1, 1), edge("new", "api", 60, 2, 1, 1))
			v, _ = points(t, rm, "web")
			if v["tcp.bytes"] != 30 {
				t.Errorf("a series back after expiry: %d bytes, want 30 (its full value)", v["tcp.bytes"])
			}
			v, _ = points(t, rm, "new")
			if w := map[bool]int64{true: 10, false: 60}[delta]; v["tcp.bytes"] != w {
				t.Errorf("new→api %d bytes, want %d", v["tcp.bytes"], w)
			}
		})
	}
}

func TestNameOf(t *testing.T) {
	tests := []struct{ prom, name, unit string }{
		{"weir_tcp_bytes_total", "tcp.bytes", "By"},
		{"weir_tcp_retransmits_total", "tcp.retrans", "{segment}"},
		{"weir_tcp_rtt_seconds", "tcp.rtt", "s"},
		{"weir_quic_streams_total", "quic.streams", "1"},
		{"weir_http_latency_seconds", "http.latency", "s"},
	}
	for _, tc := range tests {
		if got := NameOf(aggregate.Metric{Name: tc.prom}); got.Name != tc.name || got.Unit != tc.unit {
			t.Errorf("%s: %v, want %s %s", tc.prom, got, tc.name, tc.unit)
		}
	}
	for _, l := range aggregate.LevelPod.Labels() {
		if a := AttributeName(l); !strings.HasPrefix(a, "source.") && !strings.HasPrefix(a, "dest.") {
			t.Errorf("label %s → %s", l, a)
		}
	}
}

// blockingClient is an endpoint that never answers.
type blockingClient struct{ calls atomic.Int64 }

func (b *blockingClient) Export(ctx context.Context, _ *metricdata.ResourceMetrics) error {
	b.calls.Add(1)
	<-ctx.Done()
	return ctx.Err()
}
func (b *blockingClient) Shutdown(context.Context) error { return nil }

func TestSlowEndpointNeverBlocks(t *testing.T) {
	src := &source{}
	src.set(edge("web", "api", 1, 1, 1, 1))
	reg := prometheus.NewPedanticRegistry()
	client := &blockingClient{}
	x, err := New(Config{Interval: 5 * time.Millisecond, Timeout: time.Hour, QueueSize: 1}, src, client, reg, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond)
	// The ticker went on taking snapshots while the one export hung.
	if n := src.snaps.Load(); n < 10 {
		t.Errorf("%d snapshots in 200ms at 5ms", n)
	}
	if c := client.calls.Load(); c != 1 {
		t.Errorf("%d exports, want the one that hangs", c)
	}
	dropped := testutil.ToFloat64(x.metrics.droppedBatches)
	if dropped < 5 || testutil.ToFloat64(x.metrics.droppedPoints) != 4*dropped {
		t.Errorf("dropped %v batches, %v points", dropped, testutil.ToFloat64(x.metrics.droppedPoints))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := x.Shutdown(ctx); err != nil {
		t.Error(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("shutdown took %v", d)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}

// receiver is an OTLP/gRPC metrics endpoint in the test.
type receiver struct {
	colmetricpb.UnimplementedMetricsServiceServer
	mu       sync.Mutex
	requests []*colmetricpb.ExportMetricsServiceRequest
	md       []metadata.MD
	fail     atomic.Bool
	discard  bool
}

func (r *receiver) Export(ctx context.Context, req *colmetricpb.ExportMetricsServiceRequest) (*colmetricpb.ExportMetricsServiceResponse, error) {
	if r.fail.Load() {
		return nil, errors.New("refused by the test")
	}
	if r.discard {
		return &colmetricpb.ExportMetricsServiceResponse{}, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = append(r.requests, req)
	r.md = append(r.md, md)
	return &colmetricpb.ExportMetricsServiceResponse{}, nil
}

func (r *receiver) last() (*colmetricpb.ExportMetricsServiceRequest, metadata.MD, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.requests) == 0 {
		return nil, nil, 0
	}
	return r.requests[len(r.requests)-1], r.md[len(r.md)-1], len(r.requests)
}

// wireBytes counts the bytes of received messages as on the wire.
type wireBytes struct{ compressed, raw atomic.Int64 }

func (w *wireBytes) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (w *wireBytes) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (w *wireBytes) HandleConn(context.Context, stats.ConnStats) {}
func (w *wireBytes) HandleRPC(_ context.Context, s stats.RPCStats) {
	if p, ok := s.(*stats.InPayload); ok {
		w.compressed.Add(int64(p.WireLength))
		w.raw.Add(int64(p.Length))
	}
}

func startReceiver(tb testing.TB) (*receiver, *wireBytes, string) {
	tb.Helper()
	r, wb := &receiver{}, &wireBytes{}
	srv := grpc.NewServer(grpc.StatsHandler(wb), grpc.MaxRecvMsgSize(64<<20))
	colmetricpb.RegisterMetricsServiceServer(srv, r)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	tb.Cleanup(srv.Stop)
	return r, wb, lis.Addr().String()
}

func TestExportOverGRPC(t *testing.T) {
	r, _, addr := startReceiver(t)
	cfg := DefaultConfig()
	cfg.Endpoint, cfg.Insecure, cfg.Timeout = addr, true, 2*time.Second
	cfg.Headers = map[string]string{"x-tenant": "shop"}
	cfg.Temporality = TemporalityDelta
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Interval = 20 * time.Millisecond
	client, err := NewClient(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	src := &source{}
	src.set(edge("web", "api", 1000, 10, 1, 1))
	reg := prometheus.NewPedanticRegistry()
	x, err := New(cfg, src, client, reg, discard)
	if err != nil {
		t.Fatal(err)
	}
	if err := x.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = x.Shutdown(context.Background()) }()
	deadline := time.Now().Add(5 * time.Second)
	var req *colmetricpb.ExportMetricsServiceRequest
	var md metadata.MD
	for req == nil && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
		req, md, _ = r.last()
	}
	if req == nil {
		t.Fatal("nothing received")
	}
	if got := md.Get("x-tenant"); len(got) != 1 || got[0] != "shop" {
		t.Errorf("header x-tenant %v", got)
	}
	ms := req.ResourceMetrics[0].ScopeMetrics[0].Metrics
	if ms[0].Name != "tcp.bytes" || ms[0].Unit != "By" {
		t.Errorf("first metric %s %s", ms[0].Name, ms[0].Unit)
	}
	if s := ms[0].GetSum(); s.AggregationTemporality != metricpb.AggregationTemporality_AGGREGATION_TEMPORALITY_DELTA || !s.IsMonotonic {
		t.Errorf("sum %v", s)
	}
	if testutil.ToFloat64(x.metrics.exports) < 1 {
		t.Error("exports counter not counted")
	}
	// The endpoint fails for a while: failures counted, deltas kept.
	r.fail.Store(true)
	src.set(edge("web", "api", 3000, 30, 1, 1))
	time.Sleep(200 * time.Millisecond)
	_, _, before := r.last()
	r.fail.Store(false)
	var total int64
	for time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
		_, _, n := r.last()
		if n > before {
			break
		}
	}
	r.mu.Lock()
	for _, q := range r.requests {
		for _, p := range q.ResourceMetrics[0].ScopeMetrics[0].Metrics[0].GetSum().DataPoints {
			total += p.GetAsInt()
		}
	}
	r.mu.Unlock()
	if total != 3000 {
		t.Errorf("sum of delivered deltas %d, want 3000", total)
	}
	if testutil.ToFloat64(x.metrics.failures) < 1 {
		t.Error("failures not counted")
	}
}

func TestConfigValidate(t *testing.T) {
	ok := DefaultConfig()
	ok.Endpoint, ok.Insecure = "127.0.0.1:4317", true
	tests := []struct {
		name string
		mod  func(*Config)
		want string
	}{
		{"valid", func(*Config) {}, ""},
		{"disabled", func(c *Config) { *c = DefaultConfig() }, ""},
		{"bad endpoint", func(c *Config) { c.Endpoint = "http://x" }, "--otlp-endpoint"},
		{"tiny interval", func(c *Config) { c.Interval = time.Millisecond }, "--otlp-interval"},
		{"insecure and tls", func(c *Config) { c.TLSCA = "ca.pem" }, "--otlp-insecure"},
		{"cert without key", func(c *Config) { c.Insecure = false; c.TLSCert = "c" }, "--otlp-tls-cert"},
		{"bad header", func(c *Config) { c.Headers = map[string]string{"a b": "c"} }, "--otlp-header"},
		{"bad compression", func(c *Config) { c.Compression = "zstd" }, "--otlp-compression"},
		{"zero queue", func(c *Config) { c.QueueSize = 0 }, "--otlp-queue-size"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.mod(&c)
			err := c.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Errorf("got %v, want %q", err, tc.want)
			}
		})
	}
	var temp Temporality
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.TextVar(&temp, "otlp-temporality", TemporalityCumulative, "")
	if err := fs.Parse([]string{"--otlp-temporality", "delta"}); err != nil || temp != TemporalityDelta {
		t.Errorf("parse delta: %v %v", temp, err)
	}
	if err := fs.Parse([]string{"--otlp-temporality", "gauge"}); err == nil {
		t.Error("gauge accepted")
	}
}

// BenchmarkOTLPExport exports a table of 10,000 edges: convert is the
// conversion of a snapshot to OTLP data; export adds the SDK exporter's
// marshalling, gzip and the gRPC round trip to an in-process receiver
// (whose decoding runs in the same process and is included).
func BenchmarkOTLPExport(b *testing.B) {
	const n = 10000
	src := &source{}
	series := make([]aggregate.Series, n)
	for i := range series {
		series[i] = edge(fmt.Sprintf("client-%d", i%500), fmt.Sprintf("server-%d", i/500), uint64(i)*1000, uint64(i), 1, 1)
	}
	src.set(series...)
	for _, temp := range []Temporality{TemporalityCumulative, TemporalityDelta} {
		b.Run("convert/"+temp.String(), func(b *testing.B) {
			c := newConverter(Config{Temporality: temp}, src.Metrics(), src.Level(), time.Now())
			b.ReportAllocs()
			for b.Loop() {
				_, _, commit := c.convert(snapshot{time: time.Now(), series: src.Snapshot(nil)})
				commit()
			}
		})
		b.Run("export/"+temp.String(), func(b *testing.B) {
			r, wb, addr := startReceiver(b)
			r.discard = true
			cfg := DefaultConfig()
			cfg.Endpoint, cfg.Insecure, cfg.Temporality = addr, true, temp
			client, err := NewClient(context.Background(), cfg)
			if err != nil {
				b.Fatal(err)
			}
			defer func() { _ = client.Shutdown(context.Background()) }()
			c := newConverter(cfg, src.Metrics(), src.Level(), time.Now())
			b.ReportAllocs()
			for b.Loop() {
				rm, _, commit := c.convert(snapshot{time: time.Now(), series: src.Snapshot(nil)})
				if err := client.Export(context.Background(), rm); err != nil {
					b.Fatal(err)
				}
				commit()
			}
			b.StopTimer()
			wire, rawB := wb.compressed.Load(), wb.raw.Load()
			// The receiver's share of the CPU above: decoding one request.
			r.discard = false
			rm, _, _ := c.convert(snapshot{time: time.Now(), series: src.Snapshot(nil)})
			if err := client.Export(context.Background(), rm); err != nil {
				b.Fatal(err)
			}
			req, _, _ := r.last()
			raw, err := proto.Marshal(req)
			if err != nil {
				b.Fatal(err)
			}
			start := time.Now()
			const decodes = 3
			for range decodes {
				if err := proto.Unmarshal(raw, new(colmetricpb.ExportMetricsServiceRequest)); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(time.Since(start).Nanoseconds())/decodes, "receiver-decode-ns/export")
			b.ReportMetric(float64(wire)/float64(b.N), "wire-B/export")
			b.ReportMetric(float64(rawB)/float64(b.N), "raw-B/export")
			b.ReportMetric(float64(n*4), "points/export")
		})
	}
}

// writeCerts writes a CA, a server certificate for 127.0.0.1 and a client
// certificate, as PEM files in dir.
func writeCerts(t *testing.T, dir string) (ca, serverCert, serverKey, clientCert, clientKey string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		kder, _ := x509.MarshalECPrivateKey(k)
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "EC PRIVATE KEY", kder)
	}
	serverCert, serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	clientCert, clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	return write("ca.pem", "CERTIFICATE", caDER), serverCert, serverKey, clientCert, clientKey
}

// TestExportMTLS pushes to an endpoint that requires a client certificate.
func TestExportMTLS(t *testing.T) {
	ca, sc, sk, cc, ck := writeCerts(t, t.TempDir())
	cert, err := tls.LoadX509KeyPair(sc, sk)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	b, _ := os.ReadFile(ca)
	pool.AppendCertsFromPEM(b)
	r := &receiver{}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13,
	})))
	colmetricpb.RegisterMetricsServiceServer(srv, r)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	src := &source{}
	src.set(edge("web", "api", 1000, 10, 1, 1))
	for _, tc := range []struct {
		name   string
		cert   bool
		wantOK bool
	}{{"client certificate", true, true}, {"no client certificate", false, false}} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := DefaultConfig()
			cfg.Endpoint, cfg.TLSCA, cfg.Timeout = lis.Addr().String(), ca, time.Second
			if tc.cert {
				cfg.TLSCert, cfg.TLSKey = cc, ck
			}
			if err := cfg.Validate(); err != nil {
				t.Fatal(err)
			}
			client, err := NewClient(t.Context(), cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = client.Shutdown(context.Background()) }()
			c := newConverter(cfg, src.Metrics(), src.Level(), time.Now())
			rm, _, _ := c.convert(snapshot{time: time.Now(), series: src.Snapshot(nil)})
			err = client.Export(t.Context(), rm)
			if tc.wantOK != (err == nil) {
				t.Errorf("export: %v", err)
			}
		})
	}
	if _, _, n := r.last(); n != 1 {
		t.Errorf("%d exports received, want 1", n)
	}
}
