package stream

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/weir-project/weir/collector/internal/encode"
	"github.com/weir-project/weir/collector/internal/probe"
	"github.com/weir-project/weir/collector/internal/sockets"
	ingestv1 "github.com/weir-project/weir/proto/weir/ingest/v1"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeSource is the socket storage, which the test changes between polls.
type fakeSource struct {
	mu      sync.Mutex
	samples map[uint64]probe.Sample
	polls   int
	drops   probe.Drops
}

func newFakeSource() *fakeSource { return &fakeSource{samples: map[uint64]probe.Sample{}} }

func (f *fakeSource) SampleWalk(fn func(probe.Sample)) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.polls++
	for _, s := range f.samples {
		fn(s)
	}
	return true, nil
}

// Sync has nothing to wait for: the tests apply events to the table directly.
func (f *fakeSource) Sync(context.Context) error { return nil }

func (f *fakeSource) Drops() (probe.Drops, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.drops, nil
}

func (f *fakeSource) set(s probe.Sample) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.samples[s.Cookie] = s
}

func (f *fakeSource) pollCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.polls
}

// reducer is a test IngestService: it records what it receives and acks
// every batch.
type reducer struct {
	ingestv1.UnimplementedIngestServiceServer
	welcome     *ingestv1.Welcome // answers each Hello when set, as a current reducer does
	hellos      chan *ingestv1.Hello
	batches     chan *ingestv1.Batch
	compression chan string
}

func newReducer() *reducer {
	return &reducer{
		hellos:      make(chan *ingestv1.Hello, 16),
		batches:     make(chan *ingestv1.Batch, 1024),
		compression: make(chan string, 16),
	}
}

func (r *reducer) Stream(st grpc.BidiStreamingServer[ingestv1.StreamRequest, ingestv1.StreamResponse]) error {
	for {
		req, err := st.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		switch k := req.Kind.(type) {
		case *ingestv1.StreamRequest_Hello:
			r.hellos <- k.Hello
			if r.welcome != nil {
				if err := st.Send(&ingestv1.StreamResponse{Kind: &ingestv1.StreamResponse_Welcome{Welcome: r.welcome}}); err != nil {
					return err
				}
			}
		case *ingestv1.StreamRequest_Batch:
			r.batches <- k.Batch
			if err := st.Send(&ingestv1.StreamResponse{Kind: &ingestv1.StreamResponse_Ack{Ack: &ingestv1.Ack{Sequence: k.Batch.Sequence}}}); err != nil {
				return err
			}
		}
	}
}

// The stats handler tells which compression the client used.
func (r *reducer) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (r *reducer) HandleRPC(_ context.Context, s stats.RPCStats) {
	if h, ok := s.(*stats.InHeader); ok {
		select {
		case r.compression <- h.Compression:
		default:
		}
	}
}
func (r *reducer) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (r *reducer) HandleConn(context.Context, stats.ConnStats)                       {}

// serve starts r on addr and returns a function that kills the server.
func serve(t *testing.T, r *reducer, addr string, opts ...grpc.ServerOption) (string, func()) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(append(opts, grpc.StatsHandler(r))...)
	ingestv1.RegisterIngestServiceServer(srv, r)
	var wg sync.WaitGroup
	wg.Go(func() { _ = srv.Serve(ln) })
	var once sync.Once
	stop := func() {
		once.Do(func() {
			srv.Stop()
			wg.Wait()
		})
	}
	t.Cleanup(stop)
	return ln.Addr().String(), stop
}

func logger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

func testConfig(addr string) Config {
	return Config{
		Addr:             addr,
		Interval:         50 * time.Millisecond,
		InitialBackoff:   20 * time.Millisecond,
		MaxBackoff:       300 * time.Millisecond,
		NodeName:         "node-a",
		BootID:           "0f6b2c1e-5a8e-4c56-9f0a-7d2b8c1e4f00",
		CollectorVersion: "test",
		KernelRelease:    "6.18.0",
	}
}

func newTable(t *testing.T, reg prometheus.Registerer, bufferBytes int64) (*sockets.Table, *encode.Encoder) {
	t.Helper()
	cfg := sockets.DefaultConfig()
	if bufferBytes > 0 {
		cfg.BufferBytes = bufferBytes
	}
	tab, err := sockets.New(cfg, reg)
	if err != nil {
		t.Fatal(err)
	}
	return tab, encode.New(tab, nil)
}

// start runs c until the test ends.
func start(t *testing.T, c *Client) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

// sampleOf is the state of a client socket this process established on
// local port port while the probe was loaded.
func sampleOf(cookie uint64, port uint16, c probe.Counters) probe.Sample {
	return probe.Sample{
		Endpoint: probe.Endpoint{
			Cookie: cookie, Role: probe.RoleClient,
			LocalAddr: netip.MustParseAddr("127.0.0.1"), LocalPort: port,
			RemoteAddr: netip.MustParseAddr("127.0.0.1"), RemotePort: 7000, NetNS: 1,
		},
		Owner:    probe.Owner{PID: uint32(os.Getpid()), Comm: "stream.test"},
		Counters: c,
	}
}

func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		var zero T
		return zero
	}
}

func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			m := mf.GetMetric()[0]
			return m.GetCounter().GetValue() + m.GetGauge().GetValue()
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}

func TestSession(t *testing.T) {
	tests := []struct {
		name string
		tls  bool
	}{
		{name: "plaintext"},
		{name: "mtls", tls: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newReducer()
			cfg := testConfig("")
			var opts []grpc.ServerOption
			if tc.tls {
				serverTLS, files := writePKI(t)
				opts = append(opts, grpc.Creds(credentials.NewTLS(serverTLS)))
				cfg.TLSCert, cfg.TLSKey, cfg.TLSCA = files.cert, files.key, files.ca
			}
			cfg.Addr, _ = serve(t, r, "127.0.0.1:0", opts...)
			reg := prometheus.NewPedanticRegistry()
			tab, enc := newTable(t, reg, 0)
			src := newFakeSource()
			src.drops = probe.Drops{RingFull: 3, StorageFull: 4}
			src.set(sampleOf(1, 40000, probe.Counters{}))
			c, err := New(cfg, tab, enc, src, reg, logger())
			if err != nil {
				t.Fatal(err)
			}
			before := time.Now()
			start(t, c)

			hello := recv(t, r.hellos, "hello")
			if hello.ProtocolVersion != 1 || hello.MinProtocolVersion != 1 || !slices.Equal(hello.Capabilities, []string{"socket_cookie", "compression_zstd", "sparse_acks"}) || hello.NodeName != cfg.NodeName || hello.BootId != cfg.BootID ||
				hello.CollectorVersion != "test" || hello.KernelRelease != "6.18.0" ||
				hello.ReportInterval.AsDuration() != cfg.Interval || hello.Epoch < uint64(before.UnixNano()) {
				t.Fatalf("hello %v", hello)
			}
			if got := recv(t, r.compression, "compression"); got != "gzip" {
				t.Fatalf("stream compression %q, want gzip", got)
			}
			first := recv(t, r.batches, "first batch")
			if first.Sequence != 1 || len(first.Sockets) != 1 || !first.Sockets[0].NewConnection || first.Loss.RingFull != 3 || first.Loss.MapFull != 4 || !first.AckWanted {
				t.Fatalf("first batch %v", first)
			}
			src.set(sampleOf(1, 40000, probe.Counters{BytesAcked: 1234, SegsDelivered: 2}))
			var sent uint64
			for seq := uint64(2); sent < 1234; seq++ {
				b := recv(t, r.batches, "batch")
				if b.Sequence != seq {
					t.Fatalf("sequence %d, want %d", b.Sequence, seq)
				}
				// One report in DefaultAckEvery asks for an ack, from
				// the first.
				if want := seq%DefaultAckEvery == 1; b.AckWanted != want {
					t.Fatalf("batch %d asks for an ack: %v, want %v", seq, b.AckWanted, want)
				}
				for _, v := range b.Stats.BytesSent {
					sent += v
				}
			}
			if sent != 1234 {
				t.Fatalf("bytes sent %d, want 1234", sent)
			}
			deadline := time.Now().Add(5 * time.Second)
			for metricValue(t, reg, "weir_collector_acks_received_total") < 2 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			for name, min := range map[string]float64{
				"weir_collector_connected":            1,
				"weir_collector_batches_sent_total":   2,
				"weir_collector_socket_updates_total": 1,
				"weir_collector_sent_bytes_total":     50,
				"weir_collector_acks_received_total":  2,
				"weir_collector_ring_full_total":      3,
				"weir_collector_storage_full_total":   4,
			} {
				if got := metricValue(t, reg, name); got < min {
					t.Errorf("%s = %v, want at least %v", name, got, min)
				}
			}
			if c.LastAcked() < 2 {
				t.Errorf("last acked %d", c.LastAcked())
			}
		})
	}
}

// deadReducer accepts connections and closes them at once, recording when.
func deadReducer(t *testing.T, addr string) (attempts func() []time.Time, stop func()) {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var times []time.Time
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			times = append(times, time.Now())
			mu.Unlock()
			conn.Close()
		}
	})
	return func() []time.Time {
			mu.Lock()
			defer mu.Unlock()
			return append([]time.Time(nil), times...)
		}, func() {
			ln.Close()
			wg.Wait()
		}
}

func TestReconnect(t *testing.T) {
	r := newReducer()
	addr, kill := serve(t, r, "127.0.0.1:0")
	reg := prometheus.NewPedanticRegistry()
	tab, enc := newTable(t, reg, 0)
	src := newFakeSource()
	src.set(sampleOf(1, 40001, probe.Counters{BytesAcked: 100}))
	src.set(sampleOf(2, 40002, probe.Counters{}))
	// The backoff is capped at the report interval as well as MaxBackoff.
	cfg := testConfig(addr)
	cfg.Interval = cfg.MaxBackoff
	c, err := New(cfg, tab, enc, src, reg, logger())
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	hello1 := recv(t, r.hellos, "first hello")
	sent := map[uint64]uint64{} // epoch -> bytes sent of socket 1
	b := recv(t, r.batches, "first batch")
	for _, v := range b.Stats.BytesSent {
		sent[hello1.Epoch] += v
	}

	// Kill the reducer; something that accepts and hangs up takes its port.
	kill()
	attempts, stopDead := deadReducer(t, addr)
	src.set(sampleOf(1, 40001, probe.Counters{BytesAcked: 250}))
	polls := src.pollCount()
	time.Sleep(2 * time.Second)
	stopDead()

	at := attempts()
	if len(at) < 5 || len(at) > 25 {
		t.Fatalf("%d connection attempts in 2 s with 20-300 ms backoff", len(at))
	}
	var gaps []time.Duration
	for i := 1; i < len(at); i++ {
		gaps = append(gaps, at[i].Sub(at[i-1]))
	}
	early := (gaps[0] + gaps[1]) / 2
	late := (gaps[len(gaps)-1] + gaps[len(gaps)-2] + gaps[len(gaps)-3]) / 3
	t.Logf("%d attempts, gaps %v", len(at), gaps)
	if late < 2*early || late < 100*time.Millisecond {
		t.Fatalf("retry gaps do not grow: %v", gaps)
	}
	if longest := slices.Max(gaps); longest > cfg.Interval*3/2+100*time.Millisecond {
		t.Fatalf("a retry gap of %s, above 1.5 intervals (%s)", longest, cfg.Interval)
	}
	if src.pollCount() <= polls {
		t.Fatal("the sockets were not polled while disconnected")
	}
	if got := metricValue(t, reg, "weir_collector_connected"); got != 0 {
		t.Fatalf("connected = %v while the reducer is away", got)
	}

	// The reducer returns: a new epoch, live sockets announced again as
	// not new, and the bytes continue from where they were.
	for len(r.batches) > 0 {
		<-r.batches
	}
	serve(t, r, addr)
	hello2 := recv(t, r.hellos, "second hello")
	if hello2.Epoch <= hello1.Epoch {
		t.Fatalf("epoch %d after %d", hello2.Epoch, hello1.Epoch)
	}
	b = recv(t, r.batches, "resync batch")
	if b.Sequence != 1 || len(b.Sockets) != 2 || b.Sockets[0].NewConnection || b.Sockets[1].NewConnection {
		t.Fatalf("resync batch %v", b)
	}
	for _, v := range b.Stats.BytesSent {
		sent[hello2.Epoch] += v
	}
	if sent[hello1.Epoch] != 100 || sent[hello2.Epoch] != 150 {
		t.Fatalf("bytes sent per epoch %v, want 100 then 150", sent)
	}
	if got := metricValue(t, reg, "weir_collector_stream_reconnects_total"); got < float64(len(at)) {
		t.Fatalf("reconnects %v, want at least %d", got, len(at))
	}
}

func TestNoReducerBufferBounded(t *testing.T) {
	// A port where nothing listens.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	const capBytes = 64 << 10
	reg := prometheus.NewPedanticRegistry()
	tab, enc := newTable(t, reg, capBytes)
	c, err := New(testConfig(addr), tab, enc, newFakeSource(), reg, logger())
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	// Short-lived connections keep opening and closing with some bytes.
	deadline := time.Now().Add(time.Second)
	sock := uint64(0)
	for time.Now().Before(deadline) {
		for range 1000 {
			sock++
			// Established and closed between two polls.
			smp := sampleOf(sock, uint16(sock), probe.Counters{BytesAcked: 10, BytesReceived: 5})
			tab.Apply(probe.Event{Kind: probe.EventClose, Endpoint: smp.Endpoint, Owner: smp.Owner, Counters: smp.Counters})
		}
		if got := tab.BufferedBytes(); got > capBytes {
			t.Fatalf("buffer %d B over the cap %d B", got, capBytes)
		}
		time.Sleep(10 * time.Millisecond)
	}
	dropped := metricValue(t, reg, "weir_collector_buffer_dropped_total")
	kept := float64(tab.BufferedBytes()) / float64(capBytes) // fraction of the cap in use
	if dropped == 0 || kept < 0.9 {
		t.Fatalf("after %d closes: %v dropped, buffer at %.0f%% of the cap", sock, dropped, 100*kept)
	}
	if got := metricValue(t, reg, "weir_collector_buffer_dropped_bytes_total"); got != 15*dropped {
		t.Fatalf("dropped bytes %v, want %v", got, 15*dropped)
	}
	if got := metricValue(t, reg, "weir_collector_stream_reconnects_total"); got < 3 || got > 30 {
		t.Fatalf("%v reconnect attempts in 1 s", got)
	}
}

type pkiFiles struct{ cert, key, ca string }

// writePKI makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, writes the client's files and returns the server's config,
// which requires a client certificate signed by the CA.
func writePKI(t *testing.T) (*tls.Config, pkiFiles) {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "weir test ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(serial int64, usage x509.ExtKeyUsage) (tls.Certificate, []byte, []byte) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "weir test"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
		keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return pair, certPEM, keyPEM
	}
	serverPair, _, _ := issue(2, x509.ExtKeyUsageServerAuth)
	_, clientCert, clientKey := issue(3, x509.ExtKeyUsageClientAuth)
	files := pkiFiles{cert: filepath.Join(dir, "tls.crt"), key: filepath.Join(dir, "tls.key"), ca: filepath.Join(dir, "ca.crt")}
	for path, data := range map[string][]byte{
		files.cert: clientCert,
		files.key:  clientKey,
		files.ca:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
	} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &tls.Config{
		Certificates: []tls.Certificate{serverPair},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	}, files
}

func TestNewRejects(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
	}{
		{name: "zero interval", mutate: func(c *Config) { c.Interval = 0 }},
		{name: "max backoff below initial", mutate: func(c *Config) { c.MaxBackoff = time.Millisecond }},
		{name: "tls without ca", mutate: func(c *Config) { c.TLSCert, c.TLSKey = "a", "b" }},
		{name: "negative ack every", mutate: func(c *Config) { c.AckEvery = -1 }},
		{name: "acks beyond the ack timeout", mutate: func(c *Config) { c.AckTimeout, c.AckEvery = time.Second, 20 }},
		{name: "missing tls files", mutate: func(c *Config) { c.TLSCert, c.TLSKey, c.TLSCA = "/nonexistent/a", "/nonexistent/b", "/nonexistent/c" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig("127.0.0.1:1")
			tc.mutate(&cfg)
			tab, enc := newTable(t, prometheus.NewRegistry(), 0)
			if _, err := New(cfg, tab, enc, newFakeSource(), prometheus.NewRegistry(), logger()); err == nil {
				t.Fatal("want an error")
			}
		})
	}
}

// serveIngest serves impl on a loopback port until the test ends and
// returns its address.
func serveIngest(t *testing.T, impl ingestv1.IngestServiceServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	ingestv1.RegisterIngestServiceServer(srv, impl)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// silentReducer reads the hello and batches but never acks, and ends the
// stream after the second batch.
type silentReducer struct {
	ingestv1.UnimplementedIngestServiceServer
}

func (silentReducer) Stream(st grpc.BidiStreamingServer[ingestv1.StreamRequest, ingestv1.StreamResponse]) error {
	batches := 0
	for {
		req, err := st.Recv()
		if err != nil {
			return err
		}
		if req.GetBatch() != nil {
			if batches++; batches == 2 {
				return status.Error(codes.Unavailable, "going away without acks")
			}
		}
	}
}

// TestUnacknowledgedBatchesCounted: batches that were sent but never acked
// when the stream ends are counted.
func TestUnacknowledgedBatchesCounted(t *testing.T) {
	addr := serveIngest(t, silentReducer{})

	reg := prometheus.NewPedanticRegistry()
	tab, enc := newTable(t, reg, 0)
	c, err := New(testConfig(addr), tab, enc, newFakeSource(), reg, logger())
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	deadline := time.Now().Add(5 * time.Second)
	for metricValue(t, reg, "weir_collector_batches_unacknowledged_total") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("weir_collector_batches_unacknowledged_total = %v after 5 s, want >= 2",
				metricValue(t, reg, "weir_collector_batches_unacknowledged_total"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := metricValue(t, reg, "weir_collector_acks_received_total"); got != 0 {
		t.Errorf("acks = %v, want 0", got)
	}
}

// logBuffer is a log destination safe for concurrent writes.
type logBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestVersionNegotiation(t *testing.T) {
	tests := []struct {
		name      string
		welcome   *ingestv1.Welcome
		wantLog   string
		wantAcked bool
	}{
		{
			name:      "older reducer: acks only",
			wantLog:   `msg="session accepted without a welcome (older reducer)" component=stream protocol_version=1`,
			wantAcked: true,
		},
		{
			name:      "welcome",
			welcome:   &ingestv1.Welcome{ProtocolVersion: 1, Capabilities: []string{"socket_cookie"}},
			wantLog:   `msg="session accepted" component=stream protocol_version=1 capabilities=[socket_cookie]`,
			wantAcked: true,
		},
		{
			name:    "version outside the offered range",
			welcome: &ingestv1.Welcome{ProtocolVersion: 2},
			wantLog: "reducer chose an unsupported protocol version: 2, offered 1 to 1",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newReducer()
			r.welcome = tc.welcome
			addr, _ := serve(t, r, "127.0.0.1:0")
			reg := prometheus.NewPedanticRegistry()
			tab, enc := newTable(t, reg, 0)
			var logs logBuffer
			c, err := New(testConfig(addr), tab, enc, newFakeSource(), reg, slog.New(slog.NewTextHandler(&logs, nil)))
			if err != nil {
				t.Fatal(err)
			}
			start(t, c)
			deadline := time.Now().Add(5 * time.Second)
			for !strings.Contains(logs.String(), tc.wantLog) || (tc.wantAcked && c.LastAcked() < 3) {
				if time.Now().After(deadline) {
					t.Fatalf("last acked %d; log:\n%s", c.LastAcked(), logs.String())
				}
				time.Sleep(10 * time.Millisecond)
			}
			if tc.wantAcked {
				// Logged once per session, not per answer.
				if n := strings.Count(logs.String(), "session accepted"); n != 1 {
					t.Fatalf("session logged %d times:\n%s", n, logs.String())
				}
				return
			}
			if got := metricValue(t, reg, "weir_collector_acks_received_total"); got != 0 {
				t.Fatalf("acks %v from a session that should have ended", got)
			}
		})
	}
}

// TestZstdNegotiation: a reducer whose welcome names compression_zstd gets
// one gzip session, whose first batch it acks, and then a new session
// compressed with zstd, which stays.
func TestZstdNegotiation(t *testing.T) {
	r := newReducer()
	r.welcome = &ingestv1.Welcome{ProtocolVersion: 1, Capabilities: []string{"socket_cookie", capZstd}}
	addr, _ := serve(t, r, "127.0.0.1:0")
	reg := prometheus.NewPedanticRegistry()
	tab, enc := newTable(t, reg, 0)
	c, err := New(testConfig(addr), tab, enc, newFakeSource(), reg, logger())
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	if got := recv(t, r.compression, "first compression"); got != "gzip" {
		t.Fatalf("first stream compression %q, want gzip", got)
	}
	if got := recv(t, r.compression, "second compression"); got != zstdName {
		t.Fatalf("second stream compression %q, want zstd", got)
	}
	first, second := recv(t, r.hellos, "first hello"), recv(t, r.hellos, "second hello")
	if second.Epoch <= first.Epoch {
		t.Errorf("epochs %d then %d, want a new epoch", first.Epoch, second.Epoch)
	}
	deadline := time.Now().Add(5 * time.Second)
	for c.LastAcked() < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("last acked %d on the zstd stream", c.LastAcked())
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case got := <-r.compression:
		t.Errorf("a third stream (%s)", got)
	default:
	}
}

// TestRendezvous: a reducer name with several addresses is dialed at the
// one the node's rendezvous hash picks; when one of the others goes, the
// pick stays.
func TestRendezvous(t *testing.T) {
	addrs := []string{"10.0.0.1:7000", "10.0.0.2:7000", "10.0.0.3:7000"}
	moved := 0
	for i := range 300 {
		node := fmt.Sprintf("node-%d", i)
		p := Rendezvous(node, addrs)
		if !slices.Contains(addrs, p) {
			t.Fatalf("pick %q", p)
		}
		rest := slices.DeleteFunc(slices.Clone(addrs), func(a string) bool { return a != p && a == addrs[(slices.Index(addrs, p)+1)%3] })
		if Rendezvous(node, rest) != p {
			moved++
		}
	}
	if moved != 0 {
		t.Errorf("%d nodes moved when a reducer they did not use went away", moved)
	}
	c := &Client{cfg: Config{Addr: "weir-reducer.weir.svc:7000", NodeName: "node-a"},
		lookupHost: func(context.Context, string) ([]string, error) { return []string{"10.0.0.2", "10.0.0.1"}, nil }}
	target, authority := c.pick(context.Background())
	if want := Rendezvous("node-a", []string{"10.0.0.2:7000", "10.0.0.1:7000"}); target != want || authority != "weir-reducer.weir.svc" {
		t.Errorf("pick %q (authority %q), want %q", target, authority, want)
	}
	c.cfg.Addr = "127.0.0.1:7000"
	if target, authority := c.pick(context.Background()); target != "127.0.0.1:7000" || authority != "" {
		t.Errorf("an address: pick %q (authority %q)", target, authority)
	}
}

// TestAckTimeout: a reducer that keeps the stream open but acknowledges
// nothing (one gone without closing its connection looks the same) ends
// the session after the ack timeout, counted, and the collector connects
// again rather than sending into it until TCP gives up.
func TestAckTimeout(t *testing.T) {
	addr := serveIngest(t, muteReducer{})

	reg := prometheus.NewPedanticRegistry()
	tab, enc := newTable(t, reg, 0)
	cfg := testConfig(addr)
	cfg.AckTimeout = 300 * time.Millisecond
	c, err := New(cfg, tab, enc, newFakeSource(), reg, logger())
	if err != nil {
		t.Fatal(err)
	}
	start(t, c)
	deadline := time.Now().Add(10 * time.Second)
	for metricValue(t, reg, "weir_collector_stream_stalls_total") < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("weir_collector_stream_stalls_total = %v after 10 s, want >= 2", metricValue(t, reg, "weir_collector_stream_stalls_total"))
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The second stall was on a session opened again.
	if got := metricValue(t, reg, "weir_collector_stream_reconnects_total"); got < 1 {
		t.Errorf("reconnects = %v, want >= 1", got)
	}
	if got := metricValue(t, reg, "weir_collector_batches_unacknowledged_total"); got < 2 {
		t.Errorf("unacknowledged batches = %v, want >= 2", got)
	}
}

// muteReducer reads the hello and every batch, and never answers.
type muteReducer struct {
	ingestv1.UnimplementedIngestServiceServer
}

func (muteReducer) Stream(st grpc.BidiStreamingServer[ingestv1.StreamRequest, ingestv1.StreamResponse]) error {
	for {
		if _, err := st.Recv(); err != nil {
			return err
		}
	}
}

// scriptedReducer serves sessions one after the other. In its first
// session it acks batches until one carries counter deltas, which it
// applies or not (as a reducer whose stream broke before or after it
// applied it), then ends the stream without acking it. Later sessions
// welcome the collector with what it applied of the first (or nothing, as
// a restarted reducer), and ack everything.
type scriptedReducer struct {
	ingestv1.UnimplementedIngestServiceServer
	applyLost bool // the first session applies the batch it does not ack
	restarted bool // later sessions know nothing of the first

	mu       sync.Mutex
	sessions int
	epoch    uint64 // of the first session
	applied  uint64 // the first session's last applied sequence
	sent     uint64 // socket bytes sent over every applied batch
	opened   int    // sockets applied as new connections
	closed   int    // sockets applied as closed
	second   chan struct{}
}

func (r *scriptedReducer) apply(b *ingestv1.Batch) {
	for _, v := range b.GetStats().GetBytesSent() {
		r.sent += v
	}
	for _, s := range b.GetSockets() {
		if s.GetNewConnection() {
			r.opened++
		}
	}
	r.closed += len(b.GetClosedSockets())
}

func (r *scriptedReducer) Stream(st grpc.BidiStreamingServer[ingestv1.StreamRequest, ingestv1.StreamResponse]) error {
	req, err := st.Recv()
	if err != nil {
		return err
	}
	r.mu.Lock()
	r.sessions++
	first := r.sessions == 1
	w := &ingestv1.Welcome{ProtocolVersion: 1}
	if first {
		r.epoch = req.GetHello().GetEpoch()
	} else if !r.restarted {
		w.ResumeEpoch, w.ResumeSequence = r.epoch, r.applied
	}
	r.mu.Unlock()
	if err := st.Send(&ingestv1.StreamResponse{Kind: &ingestv1.StreamResponse_Welcome{Welcome: w}}); err != nil {
		return err
	}
	if !first {
		select {
		case r.second <- struct{}{}:
		default:
		}
	}
	for {
		req, err := st.Recv()
		if err != nil {
			return err
		}
		b := req.GetBatch()
		r.mu.Lock()
		if first && b.GetSequence() > 1 && len(b.GetStats().GetBytesSent()) > 0 {
			if r.applyLost {
				r.apply(b)
				r.applied = b.GetSequence()
			}
			r.mu.Unlock()
			return status.Error(codes.Unavailable, "stream broken before the ack")
		}
		r.apply(b)
		if first {
			r.applied = b.GetSequence()
		}
		r.mu.Unlock()
		if err := st.Send(&ingestv1.StreamResponse{Kind: &ingestv1.StreamResponse_Ack{Ack: &ingestv1.Ack{Sequence: b.GetSequence()}}}); err != nil {
			return err
		}
	}
}

// TestResumeUnappliedReports: what a broken stream took with it goes out
// again in the next session exactly when the reducer says it did not apply
// it, so that every byte counts once; a restarted reducer gets nothing
// again (it kept nothing of the old session to add it to).
func TestResumeUnappliedReports(t *testing.T) {
	tests := []struct {
		name                 string
		applyLost, restarted bool
		wantSent             uint64
		wantClosed           int
		wantResumed          float64
	}{
		{name: "the reducer did not apply the batch", wantSent: 290, wantClosed: 1, wantResumed: 1},
		{name: "the reducer applied it, its ack was lost", applyLost: true, wantSent: 290, wantClosed: 1},
		{name: "the reducer restarted", restarted: true, wantSent: 110},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := &scriptedReducer{applyLost: tc.applyLost, restarted: tc.restarted, second: make(chan struct{}, 1)}
			addr := serveIngest(t, r)

			reg := prometheus.NewPedanticRegistry()
			tab, enc := newTable(t, reg, 0)
			src := newFakeSource()
			// Two new connections, 100 and 10 bytes sent; then socket 1
			// sends 150 more and socket 2 closes at 40, which the broken
			// stream's last batch carries.
			src.set(sampleOf(1, 40001, probe.Counters{BytesAcked: 100}))
			src.set(sampleOf(2, 40002, probe.Counters{BytesAcked: 10}))
			c, err := New(testConfig(addr), tab, enc, src, reg, logger())
			if err != nil {
				t.Fatal(err)
			}
			start(t, c)
			deadline := time.Now().Add(5 * time.Second)
			for {
				r.mu.Lock()
				announced := r.opened
				r.mu.Unlock()
				if announced == 2 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the first report never arrived")
				}
				time.Sleep(10 * time.Millisecond)
			}
			src.mu.Lock()
			delete(src.samples, 2)
			src.samples[1] = sampleOf(1, 40001, probe.Counters{BytesAcked: 250})
			src.mu.Unlock()
			gone := sampleOf(2, 40002, probe.Counters{BytesAcked: 40})
			tab.Apply(probe.Event{Kind: probe.EventClose, Endpoint: gone.Endpoint, Owner: gone.Owner, Counters: gone.Counters})
			recv(t, r.second, "the second session")
			// The second session's reports: give them a few intervals.
			time.Sleep(300 * time.Millisecond)
			r.mu.Lock()
			sent, opened, closed := r.sent, r.opened, r.closed
			r.mu.Unlock()
			if sent != tc.wantSent {
				t.Errorf("bytes sent over the applied batches = %d, want %d", sent, tc.wantSent)
			}
			if opened != 2 {
				t.Errorf("sockets applied as new connections = %d, want 2", opened)
			}
			if closed != tc.wantClosed {
				t.Errorf("sockets applied as closed = %d, want %d", closed, tc.wantClosed)
			}
			if got := metricValue(t, reg, "weir_collector_resumed_reports_total"); got != tc.wantResumed {
				t.Errorf("resumed reports = %v, want %v", got, tc.wantResumed)
			}
		})
	}
}

// TestAckEveryDefault: by default one report in DefaultAckEvery asks for
// an ack, fewer where that and one more report do not fit in the ack
// timeout.
func TestAckEveryDefault(t *testing.T) {
	for _, tc := range []struct {
		interval, timeout time.Duration
		want              int
	}{
		{time.Second, 0, DefaultAckEvery}, // the timeout: 30 s
		{time.Second, 3 * time.Second, 2},
		{time.Second, 2 * time.Second, 1},
		{10 * time.Second, 15 * time.Second, 1},
	} {
		cfg := testConfig("127.0.0.1:1")
		cfg.Interval, cfg.AckTimeout = tc.interval, tc.timeout
		tab, enc := newTable(t, prometheus.NewRegistry(), 0)
		c, err := New(cfg, tab, enc, newFakeSource(), prometheus.NewRegistry(), logger())
		if err != nil {
			t.Fatal(err)
		}
		if c.cfg.AckEvery != tc.want {
			t.Errorf("interval %s, ack timeout %s: an ack every %d reports, want %d", tc.interval, tc.timeout, c.cfg.AckEvery, tc.want)
		}
	}
}

// sparseReducer acks as a reducer with sparse acks does: only the batches
// that ask, and the last one when the collector ends the stream.
type sparseReducer struct {
	ingestv1.UnimplementedIngestServiceServer
	batches chan *ingestv1.Batch
}

func (r sparseReducer) Stream(st grpc.BidiStreamingServer[ingestv1.StreamRequest, ingestv1.StreamResponse]) error {
	var last, acked uint64
	ack := func() error {
		acked = last
		return st.Send(&ingestv1.StreamResponse{Kind: &ingestv1.StreamResponse_Ack{Ack: &ingestv1.Ack{Sequence: last}}})
	}
	for {
		req, err := st.Recv()
		if err == io.EOF {
			if acked < last {
				return ack()
			}
			return nil
		}
		if err != nil {
			return err
		}
		if b := req.GetBatch(); b != nil {
			last = b.Sequence
			r.batches <- b
			if b.AckWanted {
				if err := ack(); err != nil {
					return err
				}
			}
		}
	}
}

// TestStopAcked: a collector that stops ends its stream and waits for the
// reducer's ack of what it sent, which a reducer with sparse acks sends
// only then: nothing is left unacknowledged.
func TestStopAcked(t *testing.T) {
	r := sparseReducer{batches: make(chan *ingestv1.Batch, 1024)}
	addr := serveIngest(t, r)
	reg := prometheus.NewPedanticRegistry()
	tab, enc := newTable(t, reg, 0)
	c, err := New(testConfig(addr), tab, enc, newFakeSource(), reg, logger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	// Stop after a batch that did not ask for its ack.
	for {
		if b := recv(t, r.batches, "batch"); b.Sequence >= 2 && !b.AckWanted {
			break
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	sent := metricValue(t, reg, "weir_collector_batches_sent_total")
	if got := metricValue(t, reg, "weir_collector_acks_received_total"); got != sent {
		t.Errorf("%v batches acknowledged of %v sent", got, sent)
	}
	if got := metricValue(t, reg, "weir_collector_batches_unacknowledged_total"); got != 0 {
		t.Errorf("%v batches unacknowledged at the stop", got)
	}
}
